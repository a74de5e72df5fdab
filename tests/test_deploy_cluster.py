"""deploy/local-cluster.sh, run for real: redis-server, PostgreSQL, one worker and one front end in
a temp folder on free ports; one job submitted, finished, and counted on /metrics under its
worker's label; then everything stopped. Skipped without redis-server or PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

import reverie
from servers import free_port, postgres_missing, redis_missing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"
SRC = Path(reverie.__file__).resolve().parents[1]
PATIENCE = 300


def script(*words: str, timeout: float = PATIENCE) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(SRC), "REVERIE": f"{sys.executable} -m reverie", "HF_HUB_OFFLINE": "1",
                        "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *words], capture_output=True, text=True, env=env, timeout=timeout)


def metric(text: str, prefix: str) -> list[float]:
    return [float(row.split()[-1]) for row in text.splitlines() if row.startswith(prefix)]


def test_dry_run_prints_every_process_and_starts_none(tmp_path):
    done = script("start", "--dir", str(tmp_path / "cluster"), "--workers", "2", "--front-ends", "3", "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(" worker --broker redis://127.0.0.1:6379/0 " in line for line in lines) == 2
    assert [line.split("--port ")[1].split()[0] for line in lines if " serve " in line] == ["7860", "7861", "7862"]
    assert any("initdb" in line for line in lines) and any("redis-server" in line for line in lines)
    assert not (tmp_path / "cluster" / "pids").exists()


def test_a_cluster_on_one_machine_runs_a_job_and_stops():
    reason = redis_missing() or postgres_missing()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="reverie-cluster-"))
    folder.chmod(0o755)  # PostgreSQL runs as its own user when the tests run as root
    port = free_port()
    ports = ["--port", str(port), "--redis-port", str(free_port()), "--postgres-port", str(free_port())]
    try:
        started = script("start", "--dir", str(folder), "--workers", "1", "--front-ends", "1", "--device", "cpu",
                         "--model", "tiny-random", *ports)
        assert started.returncode == 0, started.stdout + started.stderr + _logs(folder)
        url = f"http://127.0.0.1:{port}"
        job = httpx.post(f"{url}/api/v1/jobs", json={"prompt": "one job", "n_samples": 2, "seed": 4, "steps": 2,
                                                     "width": 64, "height": 64}, timeout=60).json()
        deadline = time.monotonic() + PATIENCE
        while (state := httpx.get(f"{url}/api/v1/jobs/{job['id']}", timeout=60).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, _logs(folder)
            time.sleep(0.2)
        assert state["status"] == "done" and [image["seed"] for image in state["images"]] == [4, 5]
        text = httpx.get(f"{url}/metrics", timeout=60).text
        assert metric(text, "reverie_workers_alive ") == [1]
        assert metric(text, "reverie_worker_pictures_total{worker=") == [2]
        assert metric(text, 'reverie_jobs{status="done"}') == [1]
        assert "postgres" in started.stdout  # the gallery on PostgreSQL, not the SQLite file
    finally:
        stopped = script("stop", "--dir", str(folder), timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not any((folder / "pids").glob("*.pid")) if folder.exists() else True


def _logs(folder: Path) -> str:
    return "\n".join(f"== {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in sorted((folder / "logs").glob("*.log")))
