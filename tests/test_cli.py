"""The `reverie` command as a user types it: files, metadata, --from, errors and exit codes."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, run_cli
from reverie.outputs.metadata import parse_a1111_parameters, read_png_info



TINY = ["--model", "tiny-random", "--steps", "3", "-W", "64", "-H", "64"]


def test_generate_writes_pictures_grid_and_metadata(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a (red:1.2) apple", *TINY, "-n", "2", "--seed", "42",
                             "--negative", "blurry", "--sampler", "euler_a", "--outdir", str(tmp_path))
    assert code == 0, err
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name.split("-")[1] for f in files] == ["42", "43"]
    assert len(list((tmp_path / "grids").glob("*.png"))) == 1
    info = read_png_info(files[1])
    params = info["parameters"]
    assert params.splitlines()[0] == "a (red:1.2) apple"
    assert "Negative prompt: blurry" in params
    assert "Steps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: 43, Size: 64x64, Model: tiny-random" in params
    assert info["reverie"]["seed"] == 43 and info["reverie"]["settings"]["negative_prompt"] == "blurry"


def test_metadata_round_trips_through_the_a1111_text(tmp_path):
    text = ("a castle, (golden hour:1.2)\nat dusk\nNegative prompt: fog, people\n"
            'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 123, Size: 512x768, Model hash: abc, Model: sd15')
    fields = parse_a1111_parameters(text)
    assert fields == {"prompt": "a castle, (golden hour:1.2)\nat dusk", "negative_prompt": "fog, people", "steps": 30,
                      "sampler": "DPM++ 2M Karras", "cfg_scale": 6.5, "seed": 123, "width": 512, "height": 768,
                      "model": "sd15"}
    from reverie.studio import make_request

    assert make_request(fields).sampler == "dpmpp_2m_karras"  # the request reads A1111's labels
    # an image mode's strength; blank in pictures made before the default was written out
    assert parse_a1111_parameters("a cat\nSteps: 3, Seed: 1, Denoising strength: 0.6")["strength"] == 0.6
    assert "strength" not in parse_a1111_parameters("a cat\nSteps: 3, Seed: 1, Denoising strength: ")


def test_from_remakes_the_same_picture(monkeypatch, capsys, tmp_path):
    first = tmp_path / "first"
    code, _, err = run_cli(monkeypatch, capsys, "generate", "a small boat", *TINY, "-n", "2", "--seed", "9", "--outdir", str(first))
    assert code == 0, err
    source = sorted(first.glob("*.png"))[1]  # the second picture, seed 10
    again = tmp_path / "again"
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--from", str(source), "--outdir", str(again))
    assert code == 0, err
    remade = list(again.glob("*.png"))
    assert len(remade) == 1 and "-10-" in remade[0].name
    # The source was made in a batch of two, the remake alone: same noise and settings, but on
    # some CPUs the kernels round a batch of one differently, so a pixel may move by one level.
    difference = np.abs(pixels(Image.open(source)) - pixels(Image.open(remade[0])))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001


def test_from_an_a1111_picture(monkeypatch, capsys, tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 8, Size: 64x64, Model: tiny-random")
    Image.new("RGB", (64, 64)).save(tmp_path / "a1111.png", pnginfo=info)
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--from", str(tmp_path / "a1111.png"), "--outdir", str(tmp_path / "o"))
    assert code == 0, err
    made = read_png_info(next((tmp_path / "o").glob("*.png")))["reverie"]
    assert made["seed"] == 8 and made["settings"]["sampler"] == "euler" and made["settings"]["prompt"] == "a fox"


def test_original_txt2img_flags_work(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--prompt", "a tree", "--plms", "--ddim_steps", "3",
                           "--n_samples", "1", "--scale", "5", "--H", "64", "--W", "72", "--seed", "1",
                           "--ckpt", "tiny-random", "--outdir", str(tmp_path))
    assert code == 0, err
    made = read_png_info(next(tmp_path.glob("*.png")))
    assert "Sampler: PLMS" in made["parameters"] and "Size: 72x64" in made["parameters"]


def test_info_prints_the_settings(monkeypatch, capsys, tmp_path):
    run_cli(monkeypatch, capsys, "generate", "a kite", *TINY, "-n", "1", "--seed", "5", "--outdir", str(tmp_path))
    picture = next(tmp_path.glob("*.png"))
    code, out, _ = run_cli(monkeypatch, capsys, "info", str(picture))
    assert code == 0 and "a kite" in out and "Seed: 5" in out
    code, out, _ = run_cli(monkeypatch, capsys, "info", str(picture), "--json")
    assert json.loads(out)["seed"] == 5


def test_image_modes_from_the_command_line(monkeypatch, capsys, tmp_path, photo):
    mask = tmp_path / "mask.png"
    Image.new("L", (88, 72), 0).save(mask)
    Image.open(mask).paste(255, (10, 10, 40, 40))
    m = Image.new("L", (88, 72), 0)
    m.paste(255, (10, 10, 40, 40))
    m.save(mask)
    common = ["--model", "tiny-random", "--steps", "3", "-n", "1", "--seed", "3"]
    for args in (["img2img", "paint it", "-i", photo, "--strength", "0.5"],
                 ["variations", photo, "--strength", "0.4"],
                 ["inpaint", "a door", "--image", photo, "--mask", str(mask)],
                 ["outpaint", "more", "--image", photo, "--right", "16"]):
        outdir = tmp_path / args[0]
        code, _, err = run_cli(monkeypatch, capsys, *args, *common, "--outdir", str(outdir))
        assert code == 0, (args, err)
        made = Image.open(next(outdir.glob("*.png")))
        assert made.size == ((104, 72) if args[0] == "outpaint" else (88, 72))


def test_samplers_and_models_are_listed(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "samplers")
    for name in ("plms", "ddim", "euler", "euler_a", "heun", "lms", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde_karras",
                 "unipc", "lcm"):
        assert f"\n{name} " in "\n" + out
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0 and "tiny-random" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x", "--model", "tiny-random", "-W", "100"], "width: must be a multiple of 8"),
        (["generate", "x", "--model", "tiny-random", "--sampler", "nope"], "unknown sampler"),
        (["generate", "a (b", "--model", "tiny-random", "--steps", "1", "-W", "64", "-H", "64", "-n", "1"], "position 2"),
        (["generate", "x", "--model", "/no/such/model.safetensors"], "no model named"),
        (["generate", "x", "--model", "org/model"], "offline"),
        (["img2img", "x", "-i", "/no/such.png", "--model", "tiny-random"], "no file at /no/such.png"),
        (["info", "/no/such.png"], "no image at"),
        (["generate", "--from", "/no/such.png"], "no image at"),
    ],
)
def test_mistakes_exit_2_with_one_clear_line(monkeypatch, capsys, args, message):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_usage_errors_exit_2(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "generate", "x", "--steps", "many")
    assert code == 2 and "steps" in err


def test_second_run_adds_files_instead_of_overwriting(monkeypatch, capsys, tmp_path):
    for _ in range(2):
        code, _, err = run_cli(monkeypatch, capsys, "generate", "a bee", *TINY, "-n", "2", "--seed", "1", "--outdir", str(tmp_path))
        assert code == 0, err
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert len(list((tmp_path / "grids").glob("*.png"))) == 2


def test_style_presets_from_the_command_line(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "styles")
    assert code == 0 and "Noto emoji" in out and "{prompt}, line icon" in out
    code, out, _ = run_cli(monkeypatch, capsys, "generate", "a cat", *TINY, "-n", "1", "--style", "Line icon", "--outdir", str(tmp_path))
    assert code == 0
    picture = next(tmp_path.glob("*.png"))
    data = read_png_info(picture)["reverie"]
    # The request keeps the user's prompt and the style; the picture records what was encoded.
    assert data["settings"]["prompt"] == "a cat" and data["settings"]["styles"] == ["Line icon"]
    assert data["prompt"]["prompt"] == "a cat, line icon" and data["prompt"]["negative_prompt"] == "colour"
    code, _, err = run_cli(monkeypatch, capsys, "generate", "a cat", *TINY, "--style", "No such look")
    assert code == 2 and "unknown style 'No such look'" in err


def test_studio_users_from_the_command_line(monkeypatch, capsys, tmp_path):
    data = str(tmp_path / "studio")
    assert run_cli(monkeypatch, capsys, "users", "add", "ann", "--password", "pw", "--admin", "--data", data)[0] == 0
    code, key, _ = run_cli(monkeypatch, capsys, "users", "key", "ann", "--data", data)
    assert code == 0 and key.strip().startswith("rv-")
    code, out, _ = run_cli(monkeypatch, capsys, "users", "grant", "ann", "5", "--data", data)
    assert code == 0 and "balance 5" in out
    code, out, _ = run_cli(monkeypatch, capsys, "users", "list", "--data", data)
    assert "ann" in out and "5 credits" in out
    code, _, err = run_cli(monkeypatch, capsys, "users", "add", "ann", "--password", "pw", "--data", data)
    assert code == 2 and "already a user named 'ann'" in err
    code, _, err = run_cli(monkeypatch, capsys, "users", "key", "nobody", "--data", data)
    assert code == 2 and "no user named 'nobody'" in err

    from reverie.gallery.store import Gallery

    gallery = Gallery(data)
    assert gallery.user_for_key(key.strip()).name == "ann"


def test_best_of_keeps_the_best_candidates_and_prints_their_scores(monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "a red apple", *TINY, "-n", "2", "--best-of", "2",
                             "--seed", "5", "--outdir", str(tmp_path))
    assert code == 0, err
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == 2
    scores = [float(line.rsplit("score ", 1)[1]) for line in out.splitlines() if "seed" in line]
    assert len(scores) == 2 and scores[0] >= scores[1]
    assert all(5 <= read_png_info(f)["reverie"]["seed"] <= 8 for f in files)
    assert all(read_png_info(f)["reverie"]["settings"]["rerank"] == 2 for f in files)


def test_txt2img_takes_the_compvis_flags_and_writes_its_layout(monkeypatch, capsys, tmp_path):
    out = tmp_path / "txt2img-samples"
    args = ["txt2img", "--prompt", "a red apple", "--plms", "--ckpt", "tiny-random", "--ddim_steps", "2", "--H", "64",
            "--W", "64", "--n_samples", "2", "--n_iter", "2", "--n_rows", "4", "--seed", "42", "--outdir", str(out)]
    code, printed, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    samples = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert (out / "grid-0000.png").is_file() and Image.open(out / "grid-0000.png").size == (4 * 64 + 3 * 2, 64)
    info = read_png_info(samples[3])["reverie"]
    assert info["settings"]["sampler"] == "plms" and info["settings"]["steps"] == 2 and info["seed"] == 45
    # again, with --fixed_code: every batch starts from the same code, so batch 2 repeats batch 1
    code, _, err = run_cli(monkeypatch, capsys, *args, "--fixed_code", "--skip_grid", "--ddim_eta", "0.0")
    assert code == 0, err
    again = sorted((out / "samples").glob("*.png"))[4:]
    assert [p.name for p in again] == ["00004.png", "00005.png", "00006.png", "00007.png"]
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(again[2])))
    assert not (out / "grid-0001.png").exists()


@pytest.mark.parametrize("flags, message", [
    (["--config", "configs/other.yaml"], "config: reverie reads the architecture"),
    (["--laion400m"], "laion400m"),
    (["--precision", "half"], "precision"),
    (["--C", "8"], "C: this model has 4 latent channels"),
])
def test_txt2img_refuses_what_it_cannot_do_by_name(monkeypatch, capsys, tmp_path, flags, message):
    code, _, err = run_cli(monkeypatch, capsys, "txt2img", "--ckpt", "tiny-random", "--ddim_steps", "1", "--H", "64",
                           "--W", "64", "--n_samples", "1", "--n_iter", "1", "--outdir", str(tmp_path), *flags)
    assert code == 2 and message in err


def test_python_m_reverie_runs_txt2img(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "reverie", "txt2img", "--prompt", "x", "--ckpt", "tiny-random",
                           "--ddim_steps", "1", "--H", "64", "--W", "64", "--n_samples", "1", "--n_iter", "1",
                           "--skip_grid", "--outdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "samples" / "00000.png").is_file() and "Enjoy." in done.stdout


def test_the_built_in_model_makes_pictures_without_library_chatter(tmp_path):
    """The first command a person runs (`make demo`'s) shows reverie's own progress and files,
    not diffusers' notes on loading mini (its shard bar, its dtype-cast warning)."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "reverie", "generate", "red apple", "-n", "1", "--steps", "2",
                           "--upscale", "1", "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "red-apple.png" in said
    assert "Loading checkpoint shards" not in said and "There are modules" not in said, said


# -- a cold start pays only for what the command needs (issue 22) ---------------------------------
HEAVY = ("torch", "diffusers", "transformers")


def _fresh_python(code: str, timeout: int = 120) -> str:
    """What `code` prints in a fresh interpreter that imports this same reverie."""
    import os
    import subprocess
    from pathlib import Path

    import reverie

    source = str(Path(reverie.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _imported_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has imported after running `code`."""
    printed = _fresh_python(code + "\nimport sys\nprint('\\nimported:', *sorted({m.split('.')[0] for m in sys.modules}))")
    return set(printed.rsplit("imported:", 1)[1].split())


def test_the_command_and_its_help_do_not_import_torch_or_diffusers():
    assert not _imported_after("import reverie.cli") & set(HEAVY)
    helped = _imported_after(
        "import sys\nfrom reverie import cli\nsys.argv = ['reverie', '--help']\n"
        "try:\n    cli.main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n")
    assert not helped & set(HEAVY)
    assert not _imported_after("import sys\nfrom reverie import cli\nsys.argv = ['reverie', 'generate', '--help']\n"
                               "try:\n    cli.main()\nexcept SystemExit:\n    pass\n") & set(HEAVY)


def test_a_txt2img_request_imports_only_the_diffusion_method():
    loaded = set(_fresh_python("import sys\nfrom reverie.studio import make_request\nmake_request(prompt='red apple')\n"
                               "print(' '.join(sorted(m for m in sys.modules if m.startswith('reverie.methods.'))))",
                               timeout=300).split())
    assert "reverie.methods.diffusion" in loaded
    for other in ("style", "video", "grid", "training_lora"):
        assert f"reverie.methods.{other}" not in loaded


def test_the_command_freezes_its_imports_and_a_program_importing_reverie_keeps_its_collector(monkeypatch, capsys,
                                                                                              tmp_path):
    """collector.py: in a process the `reverie` command owns, a method's imports (torch,
    diffusers...) run with the collector paused and are frozen after, the collector running
    again; in a program that imports reverie (here, before it claims the process) nothing is
    frozen, and an in-process `reverie generate` (this test process's, run_cli) freezes nothing."""
    printed = _fresh_python(
        "import gc\nfrom reverie import collector\nfrom reverie.methods.registry import import_run\n"
        "with collector.long_lived():\n    import json\n"
        "print(gc.get_freeze_count())\n"
        "collector.own_process()\nimport_run('txt2img')\n"
        "import sys\nprint(gc.get_freeze_count(), gc.isenabled(), 'diffusers' in sys.modules)", timeout=300)
    before, (frozen, enabled, imported) = printed.split()[0], printed.split()[1:]
    assert before == "0"
    assert int(frozen) > 100_000 and enabled == "True" and imported == "True"

    import gc

    code, _, err = run_cli(monkeypatch, capsys, "generate", "a red apple", *TINY, "--outdir", str(tmp_path))
    assert code == 0, err
    assert gc.get_freeze_count() == 0 and gc.isenabled()
