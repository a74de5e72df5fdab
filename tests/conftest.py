import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (processes they start too).
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np
import pytest
from PIL import Image

# Real PostgreSQL and redis-server instances for the tests that ask for them (skipped when absent).
from servers import (_no_process_outlives_its_test, gallery_database, postgres_session_server,  # noqa: F401
                     postgres_url, redis_session_server, redis_url)


@pytest.fixture(scope="session")
def studio():
    from reverie.studio import Studio

    return Studio(device="cpu")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # Tokenizer files are generated once per session into a throwaway cache, not ~/.cache.
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path_factory.getbasetemp() / "no-models"))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def psnr(a, b) -> float:
    """PSNR in dB between two pictures or arrays of 8-bit levels (inf when they are equal)."""
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`reverie ARGS...` in this process: (exit code, stdout, stderr)."""
    from reverie import cli

    monkeypatch.setattr(sys, "argv", ["reverie", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def photo(tmp_path) -> str:
    """A real photograph (scikit-image's astronaut is not installed; a drawn scene will do)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:72, 0:88]
    array = np.stack([x * 2.5, y * 3.0, (x + y) * 1.2], axis=-1) + rng.normal(0, 8, (72, 88, 3))
    path = tmp_path / "photo.png"
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return str(path)


def generate_cold_twice(tmp_path, *args: str) -> set[str]:
    """`reverie generate ARGS` twice, each in a fresh process writing into `tmp_path`'s first/
    and second/ (the first makes what the second finds made); the modules the second imported
    (python -X importtime lists every one)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-X", "importtime", "-m", "reverie", "generate", *args]
    for run in ("first", "second"):
        done = subprocess.run([*command, "-o", str(tmp_path / run)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def generate_twice_without_torch(tmp_path, pictures: int, *args: str) -> None:
    """`generate_cold_twice`, and what it must show where the torch-free path serves the request
    (methods/diffusion/compiled.py, its bundle made by the first command): the second command
    never imported torch, diffusers or transformers, and wrote the first one's `pictures`
    pictures to the bit, recorded as made on OpenVINO."""
    import json

    imported = generate_cold_twice(tmp_path, *args)
    assert "openvino" in imported and "reverie.methods.diffusion.compiled" in imported
    assert not {"torch", "diffusers", "transformers"} & imported
    written = sorted((tmp_path / "second").glob("*.png"))
    assert len(written) == pictures
    for path in written:
        assert np.array_equal(pixels(Image.open(path)), pixels(Image.open(tmp_path / "first" / path.name)))
        assert json.loads(Image.open(path).info["reverie"])["settings"]["runtime"] == "openvino"
