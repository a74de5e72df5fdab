"""`reverie serve --config FILE.toml` and `reverie worker --config FILE.toml` (issue 21).

A worker and a front end started from one settings file on real redis-server and PostgreSQL make
a job's pictures where the file says (its gallery folder, its database, its model and device),
with the command line winning over the file (the front end's port) and the environment winning
over it (the broker); a bad file is refused with exit 2, naming the file and the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from servers import free_port, wait_for
from test_jobs_celery import PATIENCE, SRC, TINY, Process, files_match_rows, make_shared

REPO = SRC.parent
DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens there: a worker or front end using it refuses to start


def reverie(*words: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("REVERIE_")}
    environment |= {"PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "COLUMNS": "300"} | (env or {})
    return subprocess.run([sys.executable, "-m", "reverie", *words], capture_output=True, text=True, env=environment,
                          timeout=120)  # each of these ends by itself in seconds: a server that started is a failure


def toml(path: Path, **settings) -> Path:
    def value(item) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, list):
            return "[" + ", ".join(value(entry) for entry in item) + "]"
        return str(item) if isinstance(item, int) else '"' + str(item) + '"'

    path.write_text("".join(f"{key} = {value(item)}\n" for key, item in settings.items()))
    return path


def test_a_deployment_runs_from_a_config_file_with_the_command_line_and_the_env_winning(tmp_path, postgres_url,
                                                                                        redis_url, monkeypatch):
    shared = make_shared(tmp_path, postgres_url, redis_url)  # the gallery's folder and database, made once
    taken = free_port()
    config = toml(tmp_path / "reverie.toml", data=str(shared.data), database=postgres_url, broker=DEAD_BROKER,
                  device="cpu")
    front_config = toml(tmp_path / "serve.toml", data=str(shared.data), database=postgres_url, broker=DEAD_BROKER,
                        device="cpu", model="tiny-random", port=taken, host="127.0.0.1")
    monkeypatch.delenv("REVERIE_DATABASE", raising=False)
    monkeypatch.setenv("REVERIE_BROKER", redis_url)  # the environment wins over the file's dead broker

    worker = Process(tmp_path / "worker.log", ["worker", "--config", str(config)])
    wait_for(lambda: worker.alive("the worker started from its config file") or " ready." in worker.output(), "worker ready")
    port = free_port()  # the command line wins over the file's port
    front = Process(tmp_path / "serve.log", ["serve", "--config", str(front_config), "--port", str(port)])

    def answers() -> bool:
        front.alive("the front end started from its config file")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answers, "the front end answers on the command line's port")
    job = httpx.post(f"http://127.0.0.1:{port}/api/v1/jobs", json={"prompt": "configured", "n_samples": 2, "seed": 9,
                                                                   "steps": 2, **TINY}, timeout=PATIENCE).json()["id"]

    def ended():
        view = httpx.get(f"http://127.0.0.1:{port}/api/v1/jobs/{job}", timeout=60).json()
        return view if view["status"] not in ("queued", "running") else None

    view = wait_for(ended, "the job ended")
    assert view["status"] == "done" and [image["seed"] for image in view["images"]] == [9, 10], view
    # The file's database, folder and model: its rows in PostgreSQL, its files in the file's folder.
    assert shared.rows(f"SELECT COUNT(*) FROM images WHERE job_id = '{job}'") == [(2,)]
    assert '"model": "tiny-random"' in shared.rows(f"SELECT request_json FROM jobs WHERE id = '{job}'")[0][0]
    files_match_rows(shared)
    assert not (REPO / "outputs" / "studio" / "images" / "local" / f"{job}-0.png").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{taken}/healthz", timeout=5)  # nothing on the file's port


def test_values_from_the_file_and_their_precedence(tmp_path):
    config = toml(tmp_path / "settings.toml", data=str(tmp_path / "from-file"))
    checked = reverie("serve", "--check", "--config", str(config))
    assert str(tmp_path / "from-file" / "gallery.sqlite") in checked.stdout, checked.stdout + checked.stderr
    checked = reverie("serve", "--check", "--config", str(config), "--data", str(tmp_path / "from-line"))
    assert str(tmp_path / "from-line" / "gallery.sqlite") in checked.stdout, checked.stdout + checked.stderr
    by_env = reverie("serve", "--check", env={"REVERIE_CONFIG": str(config)})  # REVERIE_CONFIG names the file
    assert str(tmp_path / "from-file" / "gallery.sqlite") in by_env.stdout, by_env.stdout + by_env.stderr

    dead = toml(tmp_path / "dead.toml", broker=DEAD_BROKER, device="cpu")
    refused = reverie("worker", "--config", str(dead), "--data", str(tmp_path / "w"))
    assert refused.returncode == 2 and DEAD_BROKER in refused.stderr + refused.stdout  # the file's broker was used
    other = "redis://127.0.0.1:2/0"
    refused = reverie("worker", "--config", str(dead), "--data", str(tmp_path / "w"), env={"REVERIE_BROKER": other})
    assert refused.returncode == 2 and other in refused.stderr + refused.stdout  # the environment wins over the file
    refused = reverie("worker", "--config", str(dead), "--data", str(tmp_path / "w"), "--broker", "redis://127.0.0.1:3/0",
                      env={"REVERIE_BROKER": other})
    assert refused.returncode == 2 and "127.0.0.1:3" in refused.stderr + refused.stdout  # the command line wins over both


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_bad_config_file_is_refused_naming_the_file_and_the_key(tmp_path, command):
    unknown = toml(tmp_path / "unknown.toml", data="x", colour="blue")
    done = reverie(command, "--config", str(unknown))
    assert done.returncode == 2 and "unknown key 'colour'" in done.stderr and str(unknown) in done.stderr, done.stderr
    done = reverie(command, env={"REVERIE_CONFIG": str(unknown)})
    assert done.returncode == 2 and "unknown key 'colour'" in done.stderr, done.stderr

    wrong = tmp_path / "wrong.toml"
    wrong.write_text("data = \n")
    done = reverie(command, "--config", str(wrong))
    assert done.returncode == 2 and "is not valid TOML" in done.stderr and str(wrong) in done.stderr, done.stderr
    done = reverie(command, "--config", str(tmp_path / "absent.toml"))
    assert done.returncode == 2 and "absent.toml does not exist" in done.stderr, done.stderr
    typed = toml(tmp_path / "typed.toml", device=["cpu"])  # a list where one value goes
    done = reverie(command, "--config", str(typed))
    assert done.returncode == 2 and "key 'device'" in done.stderr and str(typed) in done.stderr, done.stderr


def test_the_example_files_are_accepted():
    from typer.main import get_command

    from reverie.cli import app
    from reverie.cli_config import read_config

    commands = get_command(app).commands
    for command, path in (("worker", "deploy/reverie.toml"), ("serve", "deploy/reverie.toml"),
                          ("serve", "deploy/reverie-serve.toml")):
        import typer

        settings = read_config(typer.Context(commands[command], info_name=command), REPO / path)
        assert settings["data"] == "/srv/reverie" and settings["broker"].startswith("redis://"), (command, path)
    assert read_config(typer.Context(commands["serve"], info_name="serve"), REPO / "deploy/reverie-serve.toml")["multi_user"]
