"""Issue 22's levers, without timing anything: `dtype auto` by the CPU's flags, and the OpenVINO
runtime (models/openvino_runtime.py) on the tiny random SD-layout model: pictures close to
torch's, recorded in the metadata, made again by `--from`, the export cached and reused, a
damaged cache entry exported again, pictures independent of their batch-mates."""

from __future__ import annotations

import json
import mmap
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import psnr
from reverie.device import pick_dtype
from reverie.host import drop_file_pages, file_pages_dropped
from reverie.host import cpu_flags, native_bf16
from reverie.errors import BadRequest
from reverie.models import openvino_runtime
from reverie.models.openvino_runtime import OpenVINOUNet, resolve_runtime
from test_lora_studio import models  # noqa: F401  (fixture: a models folder with a LoRA for the tiny model)
from test_model_folders import tiny_folder  # noqa: F401  (fixture)

AMD_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx fma f16c avx2 bmi2 sha_ni
"""
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
COOPER_LAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"


def test_dtype_auto_follows_the_cpus_flags():
    cpu = torch.device("cpu")
    assert not native_bf16(cpu_flags(AMD_ZEN3))
    assert native_bf16(cpu_flags(SAPPHIRE_RAPIDS)) and native_bf16(cpu_flags(COOPER_LAKE))
    assert not native_bf16(cpu_flags(GRAVITON))  # ARM's bf16 is not what the rule names
    assert cpu_flags("no flags here") == set()
    assert pick_dtype("auto", cpu, native_cpu_bf16=False) == torch.float32
    assert pick_dtype("auto", cpu, native_cpu_bf16=True) == torch.bfloat16
    assert pick_dtype("fp32", cpu, native_cpu_bf16=True) == torch.float32  # asked for: given
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16


def test_runtime_resolution_says_why_not(monkeypatch):
    cpu, fp32 = torch.device("cpu"), torch.float32
    assert resolve_runtime("torch", cpu, fp32) == "torch"
    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: False)
    assert resolve_runtime("auto", cpu, fp32, parameters=10**9) == "torch"
    with pytest.raises(BadRequest, match="not installed"):
        resolve_runtime("openvino", cpu, fp32)
    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: True)
    assert resolve_runtime("auto", cpu, fp32, parameters=10**9) == "openvino"
    assert resolve_runtime("auto", cpu, fp32, parameters=10**6) == "torch"  # a toy model: not worth an export
    assert resolve_runtime("auto", cpu, fp32, parameters=10**9, loras=True) == "torch"  # an export per LoRA set
    assert resolve_runtime("auto", cpu, fp32, parameters=10**9, loras=True, loras_exported=lambda: False) == "torch"
    assert resolve_runtime("auto", cpu, fp32, parameters=10**9, loras=True, loras_exported=lambda: True) == "openvino"
    assert resolve_runtime("openvino", cpu, fp32, loras=True) == "openvino"  # asked for: made
    with pytest.raises(BadRequest, match="tiles"):
        resolve_runtime("openvino", cpu, fp32, tile=True)
    assert resolve_runtime("auto", cpu, torch.bfloat16, parameters=10**9) == "openvino"
    with pytest.raises(BadRequest, match="fp32 or bf16"):
        resolve_runtime("openvino", cpu, torch.float16)
    # auto wants twice the UNet's own bytes free: half as many for bf16 weights
    assert resolve_runtime("auto", cpu, fp32, parameters=10**9, free_bytes=7 * 10**9) == "torch"
    assert resolve_runtime("auto", cpu, torch.bfloat16, parameters=10**9, free_bytes=7 * 10**9) == "openvino"
    with pytest.raises(BadRequest, match="cuda"):
        resolve_runtime("openvino", torch.device("cuda"), fp32)
    # bf16 on an Arm CPU that has it (Graviton: dtype auto picks bf16 there): OpenVINO's is x86's only
    monkeypatch.setattr(openvino_runtime.platform, "machine", lambda: "aarch64")
    assert resolve_runtime("auto", cpu, torch.bfloat16, parameters=10**9) == "torch"
    with pytest.raises(BadRequest, match="bf16 on x86-64 CPUs only, and this one is aarch64"):
        resolve_runtime("openvino", cpu, torch.bfloat16)
    assert resolve_runtime("auto", cpu, fp32, parameters=10**9) == "openvino"


# What MADV_PAGEOUT may leave resident: pages just read that the kernel has not yet put on its
# LRU lists (a CPU's batch of them, up to 15 pages) cannot be paged out until it has. A full-suite
# run left 4 pages of an export's file.
FEW_PAGES = 32 * 4096


def _resident_bytes(path: Path) -> int:
    """This process's resident bytes of its mappings of `path` (/proc/self/smaps' Rss lines)."""
    target, total, inside = str(path.resolve()), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split(maxsplit=5)
            if not fields[0].endswith(":"):  # a mapping's first line: address perms offset device inode [path]
                inside = len(fields) == 6 and fields[5].strip() == target
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")


@linux_only
def test_a_mapped_files_pages_are_let_go_and_read_again_the_same(tmp_path):
    """`drop_file_pages` takes a read-only mapping's pages out of the process's resident memory,
    and what is read afterwards is the file's bytes; `file_pages_dropped` keeps doing it while
    its block runs (a reader going through the file holds little of it)."""
    data = np.random.default_rng(0).integers(0, 256, 8 * 2**20, dtype=np.uint8).tobytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        assert mapped[:] == data  # every page read: resident
        assert _resident_bytes(path) >= len(data)
        assert drop_file_pages(path) >= len(data)
        assert _resident_bytes(path) <= FEW_PAGES
        assert mapped[:] == data  # read again from the file: the same bytes
        with file_pages_dropped(path, every_s=0.01, min_bytes=0):
            for start in range(0, len(data), 2**20):
                assert mapped[start:start + 2**20] == data[start:start + 2**20]
            deadline = time.monotonic() + 5
            while _resident_bytes(path) > FEW_PAGES and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _resident_bytes(path) <= FEW_PAGES  # let go while the block still runs
        with file_pages_dropped(path, every_s=0.01):  # under DROP_MIN_BYTES: left alone
            assert mapped[:] == data
            time.sleep(0.05)
            assert _resident_bytes(path) >= len(data)
    assert drop_file_pages(tmp_path / "not-mapped.bin") == 0


@linux_only
def test_the_advice_never_loses_memory_that_took_a_mappings_addresses():
    """drop_file_pages reads /proc/self/maps, then advises: a mapping unmapped in between may
    have its addresses taken by new anonymous memory. Its advice on such memory keeps the bytes
    (MADV_DONTNEED, used before, zeroed them)."""
    import ctypes

    from reverie.host import MADV_PAGEOUT

    data = np.random.default_rng(1).integers(0, 256, 4 * 2**20, dtype=np.uint8).tobytes()
    with mmap.mmap(-1, len(data), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as anonymous:
        anonymous[:] = data
        address = ctypes.addressof(ctypes.c_char.from_buffer(anonymous))
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        assert madvise(address, len(data), MADV_PAGEOUT) == 0, ctypes.get_errno()
        assert anonymous[:] == data


# ----------------------------------------------------------------------------- with openvino

def _openvino():
    return pytest.importorskip("openvino", reason="the openvino package is not installed "
                                                  "(pip install -r requirements-speed.txt): the OpenVINO runtime is optional")


def _request(runtime: str, n_samples: int = 1, seed: int = 5, **more):
    from reverie.studio import make_request

    return make_request(dict(prompt="a red circle", model="tiny-random", width=64, height=64, steps=4, seed=seed,
                             n_samples=n_samples, runtime=runtime, device="cpu", upscale=1,
                             dtype="fp32") | more)  # OpenVINO runs fp32 here; auto is bf16 on a bf16 CPU


def test_openvino_pictures_match_torch_and_are_made_again_from_the_png(tmp_path):
    _openvino()
    from reverie.studio import Studio, request_from_picture

    studio = Studio(device="cpu")
    torch_made = studio.run(_request("torch"), outdir=tmp_path / "torch").images[0]
    made = studio.run(_request("openvino"), outdir=tmp_path / "ov").images[0]
    assert psnr(torch_made.image, made.image) > 40
    assert made.metadata["settings"]["runtime"] == "openvino"
    assert made.metadata["settings"]["ran_dtype"] == "fp32"
    assert "Runtime: openvino" in made.parameters
    assert torch_made.metadata["settings"]["runtime"] == "torch"
    assert "Runtime" not in torch_made.parameters

    again = request_from_picture(made.path)
    assert again.runtime == "openvino"
    remade = studio.run(again, outdir=tmp_path / "again").images[0]
    assert np.array_equal(np.asarray(remade.image), np.asarray(made.image))


def test_step_caching_on_openvino_splits_the_export_and_makes_torchs_pictures(tmp_path, monkeypatch):
    """`step_cache` on the torch pipeline with `--runtime openvino`: the export split where its
    deep features are kept (models/openvino_step_cache.py), whole every N-th evaluation, the
    pictures torch's step-cached ones; at 1 the plain export's, bit for bit."""
    _openvino()
    from reverie.models.openvino_runtime import OpenVINOUNet
    from reverie.studio import Studio

    parts = []
    original = OpenVINOUNet.run_part
    monkeypatch.setattr(OpenVINOUNet, "run_part",
                        lambda self, part, *args, **kw: parts.append(part) or original(self, part, *args, **kw))
    studio = Studio(device="cpu")
    request = _request("openvino", n_samples=2, steps=6, sampler="euler", step_cache=3)
    made = studio.run(request, outdir=tmp_path / "ov")
    assert parts == ["unet-whole", "unet-shallow", "unet-shallow"] * 2
    on_torch = studio.run(request.model_copy(update={"runtime": "torch"}), outdir=tmp_path / "torch")
    plain = studio.run(request.model_copy(update={"step_cache": None}), outdir=tmp_path / "plain")
    for a, b, c in zip(made.images, on_torch.images, plain.images, strict=True):
        assert psnr(a.image, b.image) > 40, psnr(a.image, b.image)
        assert psnr(a.image, c.image) < float("inf")  # the skipped evaluations changed it
    settings = made.images[0].metadata["settings"]
    assert settings["runtime"] == "openvino" and settings["step_cache"] == 3
    parts.clear()
    every = studio.run(request.model_copy(update={"step_cache": 1}), outdir=tmp_path / "one")
    assert set(parts) == {"unet"}
    for a, c in zip(every.images, plain.images, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_a_large_export_runs_the_cfg_batch_as_two_streams_and_keeps_the_picture(tmp_path, monkeypatch):
    """An export of SPLIT_BYTES or more (SD's; tiny-random's stands for it here) runs an even
    batch as two halves at once, one OpenVINO stream each, as the bundle's UNet does: the
    pictures are the unsplit export's (fp32, over 50 dB), with step caching too."""
    _openvino()
    from reverie.models import openvino_bundle
    from reverie.models.openvino_runtime import OpenVINOUNet
    from reverie.studio import Studio

    request = _request("openvino", n_samples=2, steps=4, sampler="euler")
    plain = Studio(device="cpu").run(request, outdir=tmp_path / "plain")
    cached = Studio(device="cpu").run(request.model_copy(update={"step_cache": 2}), outdir=tmp_path / "plain-cached")
    monkeypatch.setattr(openvino_bundle, "SPLIT_BYTES", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a stream a core (a test worker runs on one: no split)
    try:
        studio = Studio(device="cpu")
        split = studio.run(request, outdir=tmp_path / "split")
        split_cached = studio.run(request.model_copy(update={"step_cache": 2}), outdir=tmp_path / "split-cached")
    finally:
        torch.set_num_threads(threads)
    unet = studio.models.find(lambda key: key[0] == "openvino-unet")
    assert isinstance(unet, OpenVINOUNet) and unet._compiled
    assert all(streams == 2 and shapes[0][0] == 2 for (_, shapes, _, streams) in unet._compiled)  # halves of 4
    for made, alone in ((split, plain), (split_cached, cached)):
        for a, b in zip(made.images, alone.images, strict=True):
            assert psnr(a.image, b.image) > 50, psnr(a.image, b.image)
    assert psnr(split.images[0].image, split.images[1].image) < 30  # the halves' pictures went back to their seeds


def test_a_bf16_request_runs_a_bf16_export_close_to_torchs_bf16_picture(tmp_path):
    """bf16 on OpenVINO: its own export (the bf16 weights, not the fp32 one's), computed in bf16,
    the picture close to torch's bf16 picture and recorded as bf16."""
    _openvino()
    from reverie.studio import Studio

    studio = Studio(device="cpu")
    fp32 = studio.run(_request("openvino"), outdir=tmp_path / "fp32").images[0]
    torch_bf16 = studio.run(_request("torch", dtype="bf16"), outdir=tmp_path / "torch").images[0]
    made = studio.run(_request("openvino", dtype="bf16"), outdir=tmp_path / "bf16").images[0]
    assert made.metadata["settings"]["ran_dtype"] == "bf16"
    assert made.metadata["settings"]["runtime"] == "openvino"
    unets = {dtype: studio.models.find(lambda key, d=dtype: key[0] == "openvino-unet" and key[-1] == d)
             for dtype in ("torch.float32", "torch.bfloat16")}
    assert unets["torch.bfloat16"].precision == "bf16" and unets["torch.float32"].precision == "f32"
    assert unets["torch.bfloat16"].folder != unets["torch.float32"].folder  # two exports, one per dtype
    assert psnr(torch_bf16.image, made.image) > 30
    assert not np.array_equal(np.asarray(made.image), np.asarray(fp32.image))  # bf16 did run


def test_auto_leaves_toy_models_on_torch(tmp_path):
    _openvino()
    from reverie.studio import Studio

    made = Studio(device="cpu").run(_request("auto"), outdir=tmp_path).images[0]
    assert made.metadata["settings"]["runtime"] == "torch"


def test_the_export_is_reused_and_a_damaged_one_made_again(tmp_path):
    _openvino()
    from reverie.models.tiny import build_tiny

    unet = build_tiny().unet
    sample, states = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    first = OpenVINOUNet.load(unet, cache=tmp_path)
    assert first.exports == 1
    expected = first(sample, torch.tensor(500), states).sample
    with torch.no_grad():
        reference = unet(sample, torch.tensor(500), states).sample
    assert torch.allclose(expected, reference, atol=1e-4)

    second = OpenVINOUNet.load(unet, cache=tmp_path)
    assert second.exports == 0 and second.folder == first.folder
    assert torch.equal(second(sample, torch.tensor(500), states).sample, expected)

    weights = first.folder / "unet.bin"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short: the size no longer matches
    third = OpenVINOUNet.load(unet, cache=tmp_path)
    assert third.exports == 1
    assert torch.equal(third(sample, torch.tensor(500), states).sample, expected)

    (first.folder / "unet.xml").write_text("<not a model")  # damaged, with its marker intact
    fourth = OpenVINOUNet.load(unet, cache=tmp_path)
    assert fourth.exports == 1
    assert torch.equal(fourth(sample, torch.tensor(500), states).sample, expected)


def test_a_new_export_of_a_changed_file_replaces_the_old_one(tmp_path):
    """A model file changed on disk is exported again, and its older export (the UNet's weights
    again, on disk) is removed, with partial exports a killed process left long ago; the other
    dtype's export, other models' and a partial export under way stay."""
    _openvino()
    import os

    from reverie.models.tiny import build_tiny

    unet = build_tiny().unet
    checkpoint = tmp_path / "model.safetensors"  # what the UNet came from, as far as the cache knows
    checkpoint.write_bytes(b"weights")
    cache = tmp_path / "cache"
    first = OpenVINOUNet.load(unet, str(checkpoint), cache=cache)
    other_dtype = OpenVINOUNet.load(build_tiny().unet.to(torch.bfloat16), str(checkpoint), cache=cache)
    no_file = OpenVINOUNet.load(unet, cache=cache)  # named by its weights' hash: never replaced
    assert len({first.folder, other_dtype.folder, no_file.folder}) == 3

    abandoned, recent = cache / f"{first.folder.name}.partial-killed", cache / f"{first.folder.name}.partial-running"
    for partial in (abandoned, recent):
        partial.mkdir()
        (partial / "unet.bin").write_bytes(b"half an export")
    os.utime(abandoned, (0, 0))  # left by a process killed long ago; `recent` may be another's export under way
    os.utime(checkpoint, ns=(10**18, 10**18))  # the file changed
    second = OpenVINOUNet.load(unet, str(checkpoint), cache=cache)
    assert second.exports == 1 and second.folder != first.folder
    assert not first.folder.exists()
    assert other_dtype.folder.exists() and no_file.folder.exists()
    assert not abandoned.exists() and recent.exists()
    sample, states = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        reference = unet(sample, torch.tensor(500), states).sample
    assert torch.allclose(second(sample, torch.tensor(500), states).sample, reference, atol=1e-4)
    assert OpenVINOUNet.load(unet, str(checkpoint), cache=cache).exports == 0  # and it is reused


def test_a_folder_written_at_once_is_whole_or_absent_and_a_finished_one_stays(tmp_path):
    """outputs.files.partial_folder, which every export, bundle and int8 UNet is written through:
    the new folder replaces the old one whole; a write that fails leaves the old one and no
    partial; with `made`, a whole folder another process wrote meanwhile stays."""
    from reverie.outputs.files import partial_folder

    folder = tmp_path / "export"
    with partial_folder(folder) as partial:
        (partial / "unet.bin").write_text("first")
        assert not folder.exists()  # nothing is there until the block ends
    with partial_folder(folder) as partial:
        (partial / "unet.bin").write_text("second")
    assert [p.read_text() for p in folder.iterdir()] == ["second"]  # the old one replaced whole

    with pytest.raises(OSError), partial_folder(folder) as partial:
        (partial / "unet.bin").write_text("half")
        raise OSError("disk full")
    assert [p.read_text() for p in folder.iterdir()] == ["second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no partial left behind

    def made(where: Path) -> bool:
        return (where / "unet.bin").is_file()

    with partial_folder(folder, made=made) as partial:
        (partial / "unet.bin").write_text("third")
    assert (folder / "unet.bin").read_text() == "second"  # the finished one stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    (folder / "unet.bin").unlink()  # not whole: replaced
    with partial_folder(folder, made=made) as partial:
        (partial / "unet.bin").write_text("fourth")
    assert (folder / "unet.bin").read_text() == "fourth"


@pytest.mark.skipif(sys.platform == "win32", reason="flock (POSIX)")
def test_one_process_at_a_time_makes_the_others_wait(tmp_path):
    """outputs.files.one_process_at_a_time, which every bundle, export and int8 UNet is made
    under: a second process that wants to make the same folder waits, says so, and starts only
    when the first has finished, or died (the lock goes with its process); the lock file is gone
    after, so the cache holds its entries alone."""
    import subprocess

    log, folder = tmp_path / "log.txt", tmp_path / "bundle"
    script = (  # NAME holds the folder until the file NAME.go exists
        "import sys, time\n"
        "from pathlib import Path\n"
        "from reverie.outputs.files import one_process_at_a_time\n"
        "name, log, folder = sys.argv[1], open(sys.argv[2], 'a', buffering=1), sys.argv[3]\n"
        "with one_process_at_a_time(folder, lambda: log.write(name + ' waits\\n')):\n"
        "    log.write(name + ' starts\\n')\n"
        "    while not Path(folder + '.' + name + '.go').exists(): time.sleep(0.01)\n"
        "    log.write(name + ' ends\\n')\n")

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script, name, str(log), str(folder)])

    def until(line: str) -> None:
        deadline = time.monotonic() + 60
        while not (log.exists() and line in log.read_text().splitlines()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert line in log.read_text().splitlines(), log.read_text()

    def go(name: str) -> None:
        Path(f"{folder}.{name}.go").touch()

    first = start("first")
    until("first starts")
    second = start("second")
    until("second waits")
    go("first")
    go("second")
    assert first.wait(60) == 0 and second.wait(60) == 0
    assert log.read_text().splitlines() == ["first starts", "second waits", "first ends", "second starts", "second ends"]
    killed = start("killed")
    until("killed starts")
    killed.kill()
    killed.wait(10)
    go("third")
    assert subprocess.run([sys.executable, "-c", script, "third", str(log), str(folder)], timeout=60).returncode == 0
    assert log.read_text().splitlines()[-2:] == ["third starts", "third ends"]  # no wait for the dead one
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


def test_the_torch_unet_leaves_memory_while_its_export_serves_and_comes_back_for_torch(tmp_path, tiny_folder, monkeypatch):
    """Memory (issue 22): OpenVINO holds its own copy of the UNet, so the torch one of a model
    read from disk is let go while the export serves, and read again, the same, for a request
    only torch can run; a model built in code (nothing to read again) keeps its UNet."""
    _openvino()
    from reverie.methods.diffusion import run
    from reverie.methods.diffusion.run import unet_parked
    from reverie.studio import Studio

    monkeypatch.setattr(run, "PARK_MIN_BYTES", 0)  # the tiny UNet is let go as SD's is
    studio = Studio(device="cpu")
    model = str(tiny_folder)
    first = studio.run(_request("openvino", model=model), outdir=tmp_path / "ov").images[0]
    components = studio.models.find(lambda key: key[:2] == ("diffusion", model))
    assert unet_parked(components.unet)
    assert first.metadata["settings"]["runtime"] == "openvino"

    on_torch = studio.run(_request("torch", model=model), outdir=tmp_path / "torch").images[0]
    assert not unet_parked(components.unet)
    fresh = Studio(device="cpu").run(_request("torch", model=model), outdir=tmp_path / "fresh").images[0]
    assert np.array_equal(np.asarray(on_torch.image), np.asarray(fresh.image))  # the same UNet, read again

    again = studio.run(_request("openvino", model=model), outdir=tmp_path / "again").images[0]
    assert unet_parked(components.unet)
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))

    studio.run(_request("openvino"), outdir=tmp_path / "built")  # tiny-random: built in code
    built = studio.models.find(lambda key: key[:2] == ("diffusion", "tiny-random"))
    assert not unet_parked(built.unet)


def test_a_folders_unet_is_not_read_when_its_export_is_made(tmp_path, tiny_folder, monkeypatch):
    """Loading (issue 22): in a fresh process, a diffusers folder whose UNet's export is in the
    cache is loaded without reading the UNet's weights file (SD 1.5's in bf16: 1.1 s to load
    instead of 2.5), and makes the picture the first process made; a request only torch can
    run reads them then."""
    _openvino()
    from reverie.methods.diffusion import run
    from reverie.methods.diffusion.run import unet_parked
    from reverie.models import safetensors_stream
    from reverie.studio import Studio

    monkeypatch.setattr(run, "PARK_MIN_BYTES", 0)  # the tiny UNet stands for SD's
    model = str(tiny_folder)
    request = _request("openvino", model=model, dtype="bf16")  # bf16: each part is read by read_narrowed
    first = Studio(device="cpu").run(request, outdir=tmp_path / "first").images[0]  # exports the UNet

    read, real = [], safetensors_stream.read_narrowed
    monkeypatch.setattr(safetensors_stream, "read_narrowed",
                        lambda path, dtype: read.append(Path(path).parent.name) or real(path, dtype))
    studio = Studio(device="cpu")  # a fresh model cache, as in a new process
    again = studio.run(request, outdir=tmp_path / "again").images[0]
    assert sorted(read) == ["text_encoder", "vae"]
    components = studio.models.find(lambda key: key[:2] == ("diffusion", model))
    assert unet_parked(components.unet)
    assert again.metadata["settings"]["runtime"] == "openvino"
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))

    on_torch = studio.run(request.model_copy(update={"runtime": "torch"}), outdir=tmp_path / "torch").images[0]
    assert "unet" in read and not unet_parked(components.unet)
    assert on_torch.metadata["settings"]["runtime"] == "torch"
    assert psnr(on_torch.image, first.image) > 30  # bf16 on torch and on OpenVINO: close, not equal


def test_a_model_added_in_memory_keeps_its_torch_unet_and_auto_runs_it_there(tmp_path, tiny_folder, monkeypatch):
    """Components handed to `Studio.add_model` (a model being trained) may differ from the file
    they came from: an OpenVINO request on them never lets their UNet go, since reading the file
    again would lose what is only in memory; `auto` runs them on torch (a training run's sample
    grids would otherwise export each new state of the weights)."""
    _openvino()
    from reverie.methods.diffusion import run
    from reverie.methods.diffusion.run import unet_parked
    from reverie.models.registry import load_model
    from reverie.studio import Studio

    monkeypatch.setattr(run, "PARK_MIN_BYTES", 0)  # kept for what is only in memory, not for its size
    studio = Studio(device="cpu")
    from_file = studio.run(_request("openvino", model=str(tiny_folder)), outdir=tmp_path / "file").images[0]
    components = load_model(str(tiny_folder))
    with torch.no_grad():
        components.unet.conv_out.weight.neg_()  # trained: no longer the file's
    studio.add_model("being-trained", components)
    on_openvino = studio.run(_request("openvino", model="being-trained"), outdir=tmp_path / "ov").images[0]
    assert not unet_parked(components.unet)
    on_torch = studio.run(_request("torch", model="being-trained"), outdir=tmp_path / "torch").images[0]
    assert psnr(on_torch.image, on_openvino.image) > 40  # both from the weights in memory,
    assert psnr(from_file.image, on_openvino.image) < 30  # not from the file's export

    monkeypatch.setattr(openvino_runtime, "AUTO_MIN_PARAMETERS", 0)  # auto takes OpenVINO for the tiny model...
    from_file = studio.run(_request("auto", model=str(tiny_folder)), outdir=tmp_path / "file-auto").images[0]
    assert from_file.metadata["settings"]["runtime"] == "openvino"
    in_memory = studio.run(_request("auto", model="being-trained"), outdir=tmp_path / "auto").images[0]
    assert in_memory.metadata["settings"]["runtime"] == "torch"  # ...read from its file, not from memory


def test_a_shared_pass_with_a_lora_request_has_its_torch_unet_back(tmp_path, tiny_folder, models, monkeypatch):
    """Dynamic batching mixes runtimes (a LoRA's prompt on torch, the others on OpenVINO under
    auto): the torch UNet let go by an OpenVINO request is read again for the shared run, and
    every picture is the one its request makes alone."""
    _openvino()
    from reverie.methods.diffusion import run
    from reverie.methods.diffusion.run import unet_parked
    from reverie.studio import Studio

    monkeypatch.setattr(run, "PARK_MIN_BYTES", 0)  # the tiny UNet is let go as SD's is
    monkeypatch.setattr(openvino_runtime, "AUTO_MIN_PARAMETERS", 0)  # auto takes OpenVINO for the tiny model
    studio = Studio(device="cpu")
    plain = dict(prompt="a red circle", model=str(tiny_folder), width=64, height=64, steps=3, seed=5, n_samples=1,
                 dtype="fp32", upscale=1, device="cpu")
    lora = plain | {"prompt": "a red circle <lora:paper-cut:0.8>", "seed": 9}
    assert studio.batch_key(plain) == studio.batch_key(lora)
    alone = {name: studio.run(request, outdir=tmp_path / name, grid=False).images[0]
             for name, request in (("plain", plain), ("lora", lora))}
    assert [alone[name].metadata["settings"]["runtime"] for name in ("plain", "lora")] == ["openvino", "torch"]

    studio.run(plain, outdir=tmp_path / "again", grid=False)
    components = studio.models.find(lambda key: key[:2] == ("diffusion", str(tiny_folder)))
    assert unet_parked(components.unet)
    shared = studio.run_shared([{"request": plain, "outdir": tmp_path / "s1", "grid": False},
                                {"request": lora, "outdir": tmp_path / "s2", "grid": False}], limit=4)
    assert not unet_parked(components.unet)  # the LoRA's pass needed it
    for result, name in zip(shared, ("plain", "lora")):
        made = result.images[0]
        assert made.metadata["settings"]["runtime"] == alone[name].metadata["settings"]["runtime"]
        assert np.array_equal(np.asarray(made.image), np.asarray(alone[name].image)), name


def test_a_lora_with_text_layers_keeps_its_unet_layers_when_the_torch_unet_is_read_again(tmp_path, tiny_folder,
                                                                                          monkeypatch):
    """A LoRA with text-encoder and UNet layers (as most shared ones are) loaded, then the torch
    UNet let go by an OpenVINO request and read again from the file: the LoRA's next picture
    has its UNet layers on again, not only its text-encoder ones."""
    _openvino()
    from reverie.methods.diffusion import run
    from reverie.studio import Studio
    from test_lora_studio import write_kohya_lora

    write_kohya_lora(tmp_path / "models" / "Lora" / "both.safetensors", text=True)
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(run, "PARK_MIN_BYTES", 0)  # the tiny UNet is let go as SD's is
    base = dict(prompt="a red circle", model=str(tiny_folder), width=64, height=64, steps=3, seed=5, n_samples=1,
                dtype="fp32", upscale=1, device="cpu")
    lora = base | {"prompt": "a red circle <lora:both:1>", "runtime": "torch"}
    studio = Studio(device="cpu")

    def made(request, name, on=studio):
        return np.asarray(on.run(request, outdir=tmp_path / name, grid=False).images[0].image)

    first = made(lora, "first")
    made(base | {"runtime": "openvino"}, "plain")  # lets the torch UNet go
    again = made(lora, "again")  # reads it again, LoRA-less, and puts the LoRA back on it
    assert np.array_equal(again, first)
    text_only = made(lora | {"prompt": "a red circle <lora:both:0:1>"}, "text-only", on=Studio(device="cpu"))
    assert psnr(first, text_only) < 40  # the UNet layers change the picture: their absence would show


def test_a_lora_set_whose_export_is_made_runs_without_the_torch_unet(tmp_path, tiny_folder, monkeypatch):
    """Memory (issue 22): once a LoRA set's export is made, a process running it on OpenVINO
    never reads the torch UNet (LCM-LoRA on SD 1.5 held both, 5.6 GiB): only the LoRA's
    text-encoder layers are loaded, and the picture is the one the exporting process made."""
    _openvino()
    from reverie.methods.diffusion import run
    from reverie.methods.diffusion.run import unet_parked
    from reverie.models import safetensors_stream
    from reverie.studio import Studio
    from test_lora_studio import write_kohya_lora

    write_kohya_lora(tmp_path / "models" / "Lora" / "both.safetensors", text=True)
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run, "PARK_MIN_BYTES", 0)  # the tiny UNet stands for SD's
    lora = dict(prompt="a red circle <lora:both:1>", model=str(tiny_folder), width=64, height=64, steps=3, seed=5,
                n_samples=1, dtype="bf16", upscale=1, device="cpu", runtime="openvino")
    first = Studio(device="cpu").run(lora, outdir=tmp_path / "first", grid=False).images[0]  # exports the set

    read, real = [], safetensors_stream.read_narrowed
    monkeypatch.setattr(safetensors_stream, "read_narrowed",
                        lambda path, dtype: read.append(Path(path).parent.name) or real(path, dtype))
    studio = Studio(device="cpu")  # a fresh process's model cache
    again = studio.run(lora, outdir=tmp_path / "again", grid=False).images[0]
    assert "unet" not in read
    components = studio.models.find(lambda key: key[:2] == ("diffusion", str(tiny_folder)))
    assert unet_parked(components.unet)
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))  # the text layers on, as before
    text_off = studio.run(lora | {"prompt": "a red circle <lora:both:1:0>"}, outdir=tmp_path / "text-off",
                          grid=False).images[0]  # the same UNet export, the text layers off
    assert "unet" not in read and psnr(text_off.image, first.image) < 40
    studio.run(lora | {"prompt": "a red circle <lora:both:0.5>"}, outdir=tmp_path / "weaker", grid=False)
    assert "unet" in read  # another UNet weight: its export is made from the torch UNet
    on_torch = studio.run(lora | {"runtime": "torch"}, outdir=tmp_path / "torch", grid=False).images[0]
    assert psnr(on_torch.image, first.image) > 30  # bf16 on torch and on OpenVINO: close, not equal


def test_a_lora_on_openvino_runs_an_export_of_its_own_beside_the_models(tmp_path, tiny_folder, models, monkeypatch):
    """`--runtime openvino` with a LoRA: the UNet with the LoRA on, at its weight, exported once
    into an entry of its own, its picture torch's with the LoRA, not the base's; the model's own
    export is made only when a request runs without LoRAs, and stays beside it; another weight
    is another export; a fresh process reads them from the cache; the least recently run go
    past VARIANTS_KEPT; no export starts without the memory for it."""
    _openvino()
    from reverie.studio import Studio

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    entries = tmp_path / "cache" / "openvino"
    base = dict(prompt="a red circle", model=str(tiny_folder), width=64, height=64, steps=3, seed=5, n_samples=1,
                dtype="fp32", upscale=1, device="cpu")
    lora = base | {"prompt": "a red circle <lora:paper-cut:0.8>"}
    studio = Studio(device="cpu")

    def made(request, runtime, name, on=studio):
        return on.run(request | {"runtime": runtime}, outdir=tmp_path / name, grid=False).images[0]

    def labels():
        return sorted(str(json.loads((entry / "done.json").read_text())["label"]) for entry in entries.iterdir())

    on_torch, on_openvino = made(lora, "torch", "lora-torch"), made(lora, "openvino", "lora-ov")
    assert on_openvino.metadata["settings"]["runtime"] == "openvino"
    assert "<lora:paper-cut:0.8>" in on_openvino.parameters
    assert psnr(on_torch.image, on_openvino.image) > 40  # the LoRA ran, as torch runs it
    assert labels() == ["<lora:paper-cut:0.8>"]  # the model's own export: not made, nothing ran it
    plain = made(base, "openvino", "plain")
    assert psnr(plain.image, on_openvino.image) < psnr(on_torch.image, on_openvino.image) - 10
    assert labels() == ["<lora:paper-cut:0.8>", "None"]  # the model's export and the LoRA's, side by side

    assert np.array_equal(np.asarray(made(base, "openvino", "plain-again").image), np.asarray(plain.image))
    made(lora | {"prompt": "a red circle <lora:paper-cut:0.4>"}, "openvino", "weaker")
    assert len(list(entries.iterdir())) == 3

    fresh = Studio(device="cpu")
    again = made(lora, "openvino", "fresh", on=fresh)
    assert np.array_equal(np.asarray(again.image), np.asarray(on_openvino.image))
    unet = fresh.models.find(lambda key: key[0] == "openvino-unet")
    assert unet._sibling.exports == 0  # read from the cache
    assert not unet.is_ready  # the model's own export: not even read, no batch ran without the LoRA
    assert len(list(entries.iterdir())) == 3

    # Each weight is an export the UNet's size: a model keeps its VARIANTS_KEPT most recently run.
    made(lora | {"prompt": "a red circle <lora:paper-cut:0.6>"}, "openvino", "third", on=fresh)
    assert labels() == ["<lora:paper-cut:0.6>", "<lora:paper-cut:0.8>", "None"]  # 0.4 ran least recently

    monkeypatch.setattr(openvino_runtime, "available_memory", lambda device: 2**20)
    with pytest.raises(BadRequest, match="openvino cannot run the UNet with these LoRAs: its export needs about "
                                         r"[0-9.]+ GiB of free memory, and 0.0 GiB is"):
        made(lora | {"prompt": "a red circle <lora:paper-cut:0.2>"}, "openvino", "no-memory", on=fresh)
    assert len(list(entries.iterdir())) == 3


def test_auto_runs_a_lora_set_on_openvino_once_its_export_is_made(tmp_path, tiny_folder, models, monkeypatch):
    """`auto` makes no export for a LoRA set unasked, but runs one already made: after a request
    with `--runtime openvino` exported the UNet with <lora:paper-cut:0.8> on, the same request
    under auto runs that export (the same picture, nothing exported again); the same LoRA at
    another weight, or a template whose other variant names one, has no export and stays on torch."""
    _openvino()
    from reverie.studio import Studio

    monkeypatch.setattr(openvino_runtime, "AUTO_MIN_PARAMETERS", 0)  # auto takes OpenVINO for the tiny model
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    entries = tmp_path / "cache" / "openvino"
    lora = dict(prompt="a red circle <lora:paper-cut:0.8>", model=str(tiny_folder), width=64, height=64, steps=3,
                seed=5, n_samples=1, dtype="fp32", upscale=1, device="cpu")
    studio = Studio(device="cpu")

    def made(request, runtime, name, on=studio):
        return on.run(request | {"runtime": runtime}, outdir=tmp_path / name, grid=False).images

    before, = made(lora, "auto", "before")
    assert before.metadata["settings"]["runtime"] == "torch"  # no export of the set yet: none made unasked
    assert not entries.exists() or not any(entries.iterdir())
    asked, = made(lora, "openvino", "asked")
    exported = sorted(entries.iterdir())

    fresh = Studio(device="cpu")
    after, = made(lora, "auto", "after", on=fresh)
    assert after.metadata["settings"]["runtime"] == "openvino"
    assert np.array_equal(np.asarray(after.image), np.asarray(asked.image))  # the export made for the request that asked
    assert fresh.models.find(lambda key: key[0] == "openvino-unet")._sibling.exports == 0
    assert sorted(entries.iterdir()) == exported

    weaker, = made(lora | {"prompt": "a red circle <lora:paper-cut:0.4>"}, "auto", "weaker", on=fresh)
    assert weaker.metadata["settings"]["runtime"] == "torch"
    # A picture per variant: the second's set (0.3) has no export, so the whole request stays on torch.
    template = "{a red circle <lora:paper-cut:0.8>|a red circle <lora:paper-cut:0.3>}"
    mixed = made(lora | {"prompt": template, "combinatorial": True}, "auto", "mixed", on=fresh)
    assert len(mixed) == 2 and {image.metadata["settings"]["runtime"] for image in mixed} == {"torch"}
    assert sorted(entries.iterdir()) == exported


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_openvino_pictures_do_not_depend_on_their_batch_mates(tmp_path, dtype):
    """The dynamic-batching promise (models/batch_invariance.py) under the OpenVINO runtime, in
    both of its precisions."""
    _openvino()
    from reverie.studio import Studio

    studio = Studio(device="cpu")
    together = studio.run(_request("openvino", n_samples=3, dtype=dtype), outdir=tmp_path / "batch").images
    for offset, picture in enumerate(together):
        alone = studio.run(_request("openvino", seed=5 + offset, dtype=dtype),
                           outdir=tmp_path / f"alone{offset}").images[0]
        assert np.array_equal(np.asarray(alone.image), np.asarray(picture.image)), offset


def test_openvinos_working_memory_is_let_go_before_each_decode(tmp_path, monkeypatch):
    """Memory (issue 22): after a batch's last step OpenVINO lets go of the UNet's activations
    before the VAE decode stands on top of them (SD 1.5 at 512 px, four pictures: a 0.4 GiB lower
    peak), and allocates them again for the next batch: the same pictures."""
    _openvino()
    from diffusers import AutoencoderKL

    from reverie.studio import Studio

    events, release, decode = [], OpenVINOUNet.release_memory, AutoencoderKL.decode
    monkeypatch.setattr(OpenVINOUNet, "release_memory", lambda self: events.append("release") or release(self))
    monkeypatch.setattr(AutoencoderKL, "decode", lambda self, *a, **k: events.append("decode") or decode(self, *a, **k))
    studio = Studio(device="cpu")
    first = studio.run(_request("openvino", n_iter=2), outdir=tmp_path / "first").images
    assert events == ["release", "decode"] * 2
    again = studio.run(_request("openvino", n_iter=2), outdir=tmp_path / "again").images
    assert [np.asarray(a.image).tolist() for a in again] == [np.asarray(f.image).tolist() for f in first]


def test_a1111_runtime_field_is_read_back():
    from reverie.outputs.metadata import parse_a1111_parameters

    assert parse_a1111_parameters("a cat\nSteps: 4, Seed: 1, Runtime: openvino")["runtime"] == "openvino"
    assert "runtime" not in parse_a1111_parameters("a cat\nSteps: 4, Seed: 1, Runtime: tensorrt")


def test_a_walk_runs_where_its_stops_run_alone(tmp_path, tiny_folder, monkeypatch):
    """A video's frames take the UNet a picture of theirs would (issue 22): with `auto` on
    OpenVINO, a walk's first and last frames are the pictures its stops make alone there, and
    the video's record says which runtime made them."""
    _openvino()
    import json

    from PIL import Image

    from reverie.studio import Studio

    monkeypatch.setattr(openvino_runtime, "AUTO_MIN_PARAMETERS", 0)  # auto takes OpenVINO for the tiny model
    studio = Studio(device="cpu")
    settings = dict(model=str(tiny_folder), steps=3, width=64, height=64, upscale=1, dtype="fp32")
    result = studio.video("walk", ["a red circle", "a blue square"], seeds=[1, 7], frames=3, keep_frames=True,
                          outdir=tmp_path / "walk", **settings)
    frames = [np.asarray(Image.open(path).convert("RGB")) for path in sorted((result.run_dir / "frames").glob("*.png"))]
    alone = [studio.generate({"prompt": prompt, "seed": seed, "n_samples": 1, **settings}).images[0]
             for prompt, seed in (("a red circle", 1), ("a blue square", 7))]
    assert [picture.metadata["settings"]["runtime"] for picture in alone] == ["openvino", "openvino"]
    assert np.array_equal(frames[0], np.asarray(alone[0].image)) and np.array_equal(frames[-1], np.asarray(alone[1].image))
    assert json.loads((result.run_dir / "video.json").read_text())["made_with"]["runtime"] == "openvino"


def test_an_export_that_would_not_fit_on_disk_keeps_auto_on_torch(tmp_path, tiny_folder, monkeypatch):
    """The export is the UNet's size on disk (1.7 GB for SD 1.5 in bf16): where the cache's disk
    lacks it, `auto` runs torch and an explicit `openvino` is refused with the figures; an
    export already made needs no more room."""
    _openvino()
    from reverie.studio import Studio

    monkeypatch.setattr(openvino_runtime, "AUTO_MIN_PARAMETERS", 0)  # auto takes OpenVINO for the tiny model
    monkeypatch.setattr(openvino_runtime, "EXPORT_DISK_MARGIN", 1e12)  # the export wants more than any disk has
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))  # no export of the tiny model made yet
    studio = Studio(device="cpu")
    model = str(tiny_folder)
    made = studio.run(_request("auto", model=model), outdir=tmp_path / "auto").images[0]
    assert made.metadata["settings"]["runtime"] == "torch"
    with pytest.raises(BadRequest, match=r"runtime: openvino cannot run this request: its export needs about .* GB free"):
        studio.run(_request("openvino", model=model), outdir=tmp_path / "refused")

    monkeypatch.setattr(openvino_runtime, "EXPORT_DISK_MARGIN", 1.1)
    studio.run(_request("openvino", model=model), outdir=tmp_path / "exported")
    monkeypatch.setattr(openvino_runtime, "EXPORT_DISK_MARGIN", 1e12)
    again = studio.run(_request("auto", model=model), outdir=tmp_path / "again").images[0]
    assert again.metadata["settings"]["runtime"] == "openvino"  # made already: no room needed


def test_an_export_that_fails_leaves_auto_on_torch_and_is_not_tried_again(tmp_path, tiny_folder, monkeypatch, caplog):
    """The default path survives an exporter that cannot trace a model: `auto` runs torch,
    warns once, and does not pay for the failing export again; an explicit `openvino` is refused
    with the exporter's reason."""
    _openvino()
    from reverie.studio import Studio

    tries = []

    def failing_export(unet, folder, source="", label=None):
        tries.append(folder)
        raise RuntimeError("the tracer met a layer it cannot convert")

    monkeypatch.setattr(openvino_runtime, "AUTO_MIN_PARAMETERS", 0)  # auto takes OpenVINO for the tiny model
    monkeypatch.setattr(openvino_runtime, "export_unet", failing_export)
    monkeypatch.setattr(openvino_runtime, "_failed_exports", {})
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))  # no export of the tiny model made yet
    studio = Studio(device="cpu")
    model = str(tiny_folder)
    first = studio.run(_request("auto", model=model), outdir=tmp_path / "first").images[0]
    again = studio.run(_request("auto", model=model), outdir=tmp_path / "again").images[0]
    on_torch = studio.run(_request("torch", model=model), outdir=tmp_path / "torch").images[0]
    assert len(tries) == 1
    assert [r.message for r in caplog.records if "could not be exported" in r.message] == [
        "the UNet could not be exported to OpenVINO: RuntimeError: the tracer met a layer it cannot convert"]
    assert first.metadata["settings"]["runtime"] == again.metadata["settings"]["runtime"] == "torch"
    assert np.array_equal(np.asarray(first.image), np.asarray(on_torch.image))
    with pytest.raises(BadRequest, match=r"runtime: openvino cannot run this request: its export failed earlier "
                                         r"in this process \(RuntimeError: the tracer met a layer"):
        studio.run(_request("openvino", model=model), outdir=tmp_path / "refused")
    assert len(tries) == 1


@linux_only
def test_a_compiled_shape_leaves_the_exports_weights_file_unresident(tmp_path, monkeypatch):
    """OpenVINO keeps the IR's weights file mapped after compiling and computes with its own
    copy: the mapped pages it went through (1.7 GiB for SD 1.5 in bf16) are let go, and the
    UNet still answers what torch's does. (The tiny UNet's file is let go as an SD-sized one:
    files under host.DROP_MIN_BYTES are left alone.)"""
    _openvino()
    import reverie.host

    monkeypatch.setattr(reverie.host, "DROP_MIN_BYTES", 0)
    from reverie.models.tiny import build_tiny

    unet = build_tiny().unet
    runner = OpenVINOUNet.load(unet, cache=tmp_path)
    sample, states = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    runner._compiled_for(((2, 4, 8, 8), (), (2, 77, 32)))
    assert _resident_bytes(runner.folder / "unet.bin") <= FEW_PAGES
    with torch.no_grad():
        reference = unet(sample, torch.tensor(500), states).sample
    assert torch.allclose(runner(sample, torch.tensor(500), states).sample, reference, atol=1e-4)
    assert runner.compiles == 1


def test_small_exports_keep_more_shapes_compiled(tmp_path, monkeypatch):
    """Each input shape is compiled on its own, and each compiled shape holds the weights: an
    export as small as reverie-mini's keeps many (the studio's shared passes change their batch
    size as jobs come and go), an SD-sized one two."""
    _openvino()
    from reverie.models.tiny import build_tiny

    unet = build_tiny().unet
    states = torch.randn(1, 77, 32)

    def compiles_for(batches) -> int:
        runner = OpenVINOUNet.load(unet, cache=tmp_path)
        for batch in batches:
            runner(torch.randn(batch, 4, 8, 8), torch.tensor(500), states.expand(batch, -1, -1))
        return runner.compiles

    assert compiles_for([1, 2, 3, 1, 2, 3]) == 3
    monkeypatch.setattr(openvino_runtime, "COMPILED_BYTES", 0)  # as if the weights were SD's
    assert compiles_for([1, 2, 3, 1]) == 4  # two kept: the first was let go for the third


def test_a_small_exports_compiled_shapes_wait_on_disk_for_the_next_process(tmp_path, monkeypatch):
    """reverie-mini's compiled shapes are kept beside its export (a cold `reverie generate` loads
    its shape instead of compiling it), the newest few only; a damaged one is compiled again.
    The pictures are the same either way."""
    _openvino()
    from reverie.models.tiny import build_tiny

    unet = build_tiny().unet
    states = torch.randn(1, 77, 32)

    def run(batches) -> tuple[OpenVINOUNet, list[torch.Tensor]]:
        runner = OpenVINOUNet.load(unet, cache=tmp_path)  # a fresh OpenVINO core, as in a new process
        torch.manual_seed(0)
        outputs = [runner(torch.randn(b, 4, 8, 8), torch.tensor(500), states.expand(b, -1, -1)).sample for b in batches]
        return runner, outputs

    first, expected = run([1])
    stored = first.folder / openvino_runtime.COMPILED_DIR
    assert first.stores_compiled and len(list(stored.iterdir())) == 1
    _, again = run([1])
    assert torch.equal(again[0], expected[0]) and len(list(stored.iterdir())) == 1  # loaded, not stored again

    next(stored.iterdir()).write_bytes(b"not a compiled model")
    _, damaged = run([1])
    assert torch.equal(damaged[0], expected[0])

    monkeypatch.setattr(openvino_runtime, "STORED_SHAPES", 2)
    run([1, 2, 3])
    assert len(list(stored.iterdir())) == 2
    monkeypatch.setattr(openvino_runtime, "COMPILED_BYTES", 0)  # as if the weights were SD's: none stored
    assert not OpenVINOUNet.load(unet, cache=tmp_path).stores_compiled


def test_openvino_runs_on_as_many_threads_as_torch(tmp_path):
    """A deployment's workers share the cores (OMP_NUM_THREADS each): OpenVINO, which does not
    read that variable, takes torch's thread count, and a change of it compiles anew."""
    _openvino()
    from reverie.models.tiny import build_tiny

    unet = build_tiny().unet
    runner = OpenVINOUNet.load(unet, cache=tmp_path)
    kept = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            runner(torch.randn(1, 4, 8, 8), torch.tensor(500), torch.randn(1, 77, 32))
            compiled, _ = next(reversed(runner._compiled.values()))
            assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads
    finally:
        torch.set_num_threads(kept)
    assert runner.compiles == 2
