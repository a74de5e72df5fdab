"""Throughput of the studio's deployments: pictures per minute with 1, 4 and 16 concurrent clients,
and latency to the first preview, against

  embedded            `reverie serve` alone (SQLite, its one worker thread), dynamic batching on
  embedded unbatched  the same with --batch-limit 1 (one job at a time)
  1 worker            deploy/local-cluster.sh: redis-server, PostgreSQL, one `reverie worker` with
                      dynamic batching (--batch-limit 8), one front end
  1 worker unbatched  the same with --batch-limit 1
  2 workers           two workers, batching

Each client submits a one-picture job (native API), follows its server-sent events until it ends,
and submits the next, for `--seconds`; pictures per minute = pictures made / time to the last end.
First preview: from submitting to the first event carrying a preview (it includes the wait in the
queue, which is the point with 16 clients). Every reverie process runs with OMP_NUM_THREADS=1.
The last lines give batched / one-at-a-time, per client count, for each engine measured both ways.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput.py --steps 8 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "local-cluster.sh"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment() -> dict:
    import reverie

    return os.environ | {"PYTHONPATH": str(Path(reverie.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
                         "HF_HUB_OFFLINE": "1", "REVERIE": f"{sys.executable} -m reverie"}


class Embedded:
    """`reverie serve` with its own worker thread, in a temp folder."""

    def __init__(self, model: str, batch_limit: int):
        self.folder = Path(tempfile.mkdtemp(prefix="reverie-bench-"))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (self.folder / "serve.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "reverie", "serve", "--data", str(self.folder / "data"),
                                         "--port", self.url.rsplit(":", 1)[1], "--model", model, "--device", "cpu",
                                         "--batch-limit", str(batch_limit)],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=environment())
        wait_healthy(self.url)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        shutil.rmtree(self.folder, ignore_errors=True)


class Cluster:
    """deploy/local-cluster.sh with `workers` workers and one front end, in a temp folder."""

    def __init__(self, model: str, workers: int, batch_limit: int):
        self.folder = Path(tempfile.mkdtemp(prefix="reverie-bench-"))
        self.folder.chmod(0o755)  # PostgreSQL runs as its own user under root
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        started = subprocess.run(["bash", str(SCRIPT), "start", "--dir", str(self.folder), "--workers", str(workers),
                                  "--front-ends", "1", "--device", "cpu", "--model", model, "--port", str(port),
                                  "--redis-port", str(free_port()), "--postgres-port", str(free_port()),
                                  "--batch-limit", str(batch_limit)],
                                 capture_output=True, text=True, env=environment(), timeout=300)
        if started.returncode != 0:
            self.close()
            raise SystemExit(f"local-cluster.sh did not start:\n{started.stdout}{started.stderr}")

    def close(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", "--dir", str(self.folder)], capture_output=True, env=environment(),
                       timeout=120)
        shutil.rmtree(self.folder, ignore_errors=True)


def wait_healthy(url: str, patience: float = 120) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer /healthz")


def one_job(url: str, body: dict) -> tuple[float, float | None, int]:
    """Submit a job and follow its events: (seconds to its end, seconds to its first preview, pictures)."""
    import json

    started = time.monotonic()
    job = httpx.post(url + "/api/v1/jobs", json=body, timeout=600).json()
    first_preview = None
    with httpx.stream("GET", f"{url}/api/v1/jobs/{job['id']}/events", timeout=600) as events:
        for line in events.iter_lines():
            if not line.startswith("data: "):
                continue
            view = json.loads(line[len("data: "):])
            if first_preview is None and (view["progress"]["preview_version"] is not None or view["images"]):
                first_preview = time.monotonic() - started
            if view["status"] not in ("queued", "running"):
                if view["status"] != "done":
                    raise SystemExit(f"job {job['id']} ended {view['status']}: {view.get('error')}")
                return time.monotonic() - started, first_preview, len(view["images"])
    raise SystemExit(f"the events of job {job['id']} ended before the job")


def measure(url: str, clients: int, seconds: float, body: dict) -> dict:
    """`clients` threads submitting jobs one after another for `seconds`."""
    results: list[tuple[float, float | None, int]] = []
    lock = threading.Lock()
    start = time.monotonic()
    ends: list[float] = []

    def client(number: int) -> None:
        seed = number * 100000
        while time.monotonic() - start < seconds:
            seed += 1
            result = one_job(url, body | {"seed": seed})
            with lock:
                results.append(result)
                ends.append(time.monotonic())

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = max(ends) - start
    previews = [preview for _, preview, _ in results if preview is not None]
    return {"pictures": sum(count for _, _, count in results), "elapsed": elapsed,
            "per_minute": sum(count for _, _, count in results) / elapsed * 60,
            "first_preview": statistics.median(previews) if previews else float("nan"),
            "job": statistics.median(total for total, _, _ in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--seconds", type=float, default=20, help="how long the clients submit jobs, per row")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--setups", default="embedded,embedded unbatched,1 worker,1 worker unbatched,2 workers")
    args = parser.parse_args()
    body = {"prompt": "red apple, Noto emoji", "model": args.model, "steps": args.steps, "sampler": args.sampler,
            "n_samples": 1, "upscale": 1}  # upscale 1: reverie-mini's native 128 px
    setups = {"embedded": lambda: Embedded(args.model, 8), "embedded unbatched": lambda: Embedded(args.model, 1),
              "1 worker": lambda: Cluster(args.model, 1, 8), "1 worker unbatched": lambda: Cluster(args.model, 1, 1),
              "2 workers": lambda: Cluster(args.model, 2, 8)}
    print(f"{args.model}, 128x128, {args.steps} steps {args.sampler}, one picture a job, OMP_NUM_THREADS=1 per process, "
          f"{os.cpu_count()} CPUs, {args.seconds:g} s of submitting per row")
    print(f"{'deployment':<19} {'clients':>7} {'pictures':>8} {'pictures/min':>12} {'first preview s':>15} {'job s':>7}")
    rates: dict = {}
    for name in [setup.strip() for setup in args.setups.split(",")]:
        deployment = setups[name]()
        try:
            measure(deployment.url, 2, 1, body)  # models loaded (each worker's) before anything is timed
            for clients in [int(count) for count in args.clients.split(",")]:
                row = measure(deployment.url, clients, args.seconds, body)
                rates[name, clients] = row["per_minute"]
                print(f"{name:<19} {clients:>7} {row['pictures']:>8} {row['per_minute']:>12.1f} "
                      f"{row['first_preview']:>15.2f} {row['job']:>7.2f}", flush=True)
        finally:
            deployment.close()
    for engine in ("embedded", "1 worker"):
        ratios = [f"{clients} clients {rates[engine, clients] / rates[engine + ' unbatched', clients]:.2f}x"
                  for clients in [int(count) for count in args.clients.split(",")]
                  if (engine, clients) in rates and (engine + " unbatched", clients) in rates]
        if ratios:
            print(f"batched / one at a time, {engine}: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
