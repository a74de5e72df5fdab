"""reverie-mini's txt2img on OpenVINO alone (methods/diffusion/compiled.py, models/mini_bundle.py):
the pictures of the torch pipeline, without importing torch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import generate_twice_without_torch, pixels, psnr
from reverie.methods.diffusion import compiled
from reverie.methods.diffusion.request import GenerationRequest, resolve
from reverie.models.cache import ModelCache
from reverie.outputs.files import Outputs
from reverie.progress import Progress

pytest.importorskip("openvino")



def request_for(**fields) -> GenerationRequest:
    return resolve(GenerationRequest(prompt=fields.pop("prompt", "red apple"), seed=fields.pop("seed", 11), **fields))


def make(tmp_path, name: str, request: GenerationRequest, path=compiled.run, progress: Progress | None = None):
    return path(request, MODELS, progress or Progress(), Outputs(tmp_path / name))


MODELS = ModelCache()


def full_run(request, models, progress, outputs):
    from reverie.methods.diffusion.run import run

    return run(request, models, progress, outputs)


def test_it_serves_plain_mini_requests_and_leaves_the_rest_to_the_torch_pipeline():
    assert compiled.serves(request_for())
    assert compiled.serves(request_for(prompt="a (red:1.3) apple [blue]", negative_prompt="dark", n_samples=2, n_iter=2,
                                       cfg_scale=1.0, steps=5, width=96, height=160, upscale=1))
    assert compiled.serves(request_for(dtype="fp32", runtime="openvino"))
    assert compiled.serves(request_for(keep_only=1, chaos=100, made=0)) and compiled.serves(request_for(made=2))
    assert compiled.serves(request_for(chaos=0)) and compiled.serves(request_for(chaos=99))
    assert compiled.serves(request_for(expand=True))
    assert compiled.serves(request_for(rerank=2)) and compiled.serves(request_for(score=True))  # a torch CLIP scores
    assert compiled.serves(request_for(step_cache=2))
    assert compiled.serves(request_for(tile=True)) and compiled.serves(request_for(tile=True, step_cache=2))
    # an upscale its bundle's x2 pass does not make: the built-in upscaler on torch (`_bundle_upscales`)
    assert compiled.serves(request_for(upscale=4)) and compiled.serves(request_for(width=256))
    assert all(compiled.serves(request_for(sampler=name))
               for name in ("euler", "euler_karras", "euler_a", "dpmpp_2m_karras", "dpmpp_2m_sde_karras", "ddim", "lcm",
                            "unipc", "heun", "plms", "lms", "lms_karras", "dpm2", "dpm2_a", "ddpm", "deis",
                            "dpmpp_2s_karras", "dpmpp_sde_karras"))
    for refused in (dict(runtime="torch"), dict(prompt="apple <lora:style:0.8>"),
                    dict(width=104), dict(dtype="fp16"),
                    dict(mode="img2img", init_image="x.png"), dict(mode="inpaint", init_image="x.png", mask_image="m.png"),
                    dict(mode="inpaint", init_image="x.png", mask_image="m.png", strength=0.0),
                    dict(model="tiny"), dict(device="cuda")):
        assert not compiled.serves(request_for(**refused)), refused
    assert compiled.serves(request_for(decoder="vae"))


def test_a_tiny_decoder_keeps_its_requests_here_where_its_files_are(tmp_path, monkeypatch):
    """`decoder tiny` runs here where the models folder has one (it draws the previews too, from
    its own bundle: tests/test_sd_compiled.py); without one, run.py names where to put it."""
    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path))
    assert not compiled.serves(request_for(decoder="tiny"))
    (tmp_path / "taesd").mkdir()
    (tmp_path / "taesd" / "taesd_decoder.safetensors").write_bytes(b"")
    assert compiled.serves(request_for(decoder="tiny")) and compiled.serves(request_for())


def test_live_previews_show_the_batch_as_it_comes(tmp_path):
    events = []
    result = make(tmp_path, "watched", request_for(n_samples=2, steps=4),
                  progress=Progress(report=events.append, previews=True))
    previews = [(event.step, event.preview) for event in events if event.preview is not None]
    assert [step for step, _ in previews] == [2, 4]
    final = np.asarray(previews[-1][1].convert("RGB"), dtype=float)
    assert final.shape == (256, 512, 3)  # the two pictures side by side, 256 px each
    assert not np.array_equal(np.asarray(previews[0][1]), np.asarray(previews[-1][1]))  # it moves on
    for column, image in zip((final[:, :256], final[:, 256:]), result.images):
        # the last preview is the finished latents through the linear map: a red apple's is red
        # above green above blue, as the picture is (the map is a crude fit: not its levels)
        shown, made = column.mean((0, 1)), pixels(image.image).mean((0, 1))
        assert list(np.argsort(shown)) == list(np.argsort(made)) == [2, 1, 0]


def test_its_tokenizer_gives_transformers_token_ids():
    from reverie.models.minilm import load_minilm

    tokenizer, encoder = load_minilm()
    ours = compiled.BundleTokenizer.minilm(*encoder.get_input_embeddings().weight.shape)
    for text in ("red apple", "A Cat, on  a mat!!", "émoji café naïve", ",", "", "日本語", "Hello\tworld\n2nd"):
        assert ours(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids
    assert (ours.cls_token_id, ours.sep_token_id, ours.pad_token_id) == (tokenizer.cls_token_id, tokenizer.sep_token_id,
                                                                        tokenizer.pad_token_id)


@pytest.mark.parametrize("dtype, floor", [("fp32", 45.0), ("bf16", 30.0)])
def test_its_pictures_are_the_torch_pipelines(tmp_path, dtype, floor):
    """The same request on the torch pipeline (run.py, its UNet on OpenVINO as before) and here:
    weighted prompt, negative prompt, two seeds, both pictures close (measured: see docs/speed.md)."""
    request = request_for(prompt="a (red:1.2) apple on a table", negative_prompt="blue", n_samples=2, steps=8,
                          dtype=dtype)
    ours = make(tmp_path, "ours", request)
    theirs = make(tmp_path, "theirs", request, full_run)
    assert [image.seed for image in ours.images] == [image.seed for image in theirs.images] == [11, 12]
    for a, b in zip(ours.images, theirs.images):
        assert a.image.size == b.image.size == (256, 256)
        assert psnr(pixels(a.image), pixels(b.image)) > floor, (dtype, psnr(pixels(a.image), pixels(b.image)))
    # ... and different seeds make different pictures (the comparison above can fail)
    assert psnr(pixels(ours.images[0].image), pixels(ours.images[1].image)) < 25
    recorded = ours.images[0].metadata["settings"]
    assert recorded["runtime"] == "openvino" and recorded["sampler"] == "dpmpp_2m" and recorded["ran_dtype"] == dtype
    assert recorded["model_name"] == theirs.images[0].metadata["settings"]["model_name"] == "mini"


def test_chaos_is_the_torch_pipelines(tmp_path):
    """`--chaos` below 100: each picture's noise slerped toward its batch's shared noise, as the
    torch pipeline draws it (the same NumPy draw: the same pictures to the kernels' last bits);
    at 0 the batch's pictures are variations of one; without chaos they are further apart."""
    apart = {}
    for chaos in (0, None):
        request = request_for(prompt="a red apple on a table", n_samples=2, steps=5, dtype="fp32", chaos=chaos)
        ours = make(tmp_path, f"ours{chaos}", request)
        theirs = make(tmp_path, f"theirs{chaos}", request, full_run)
        for a, b in zip(ours.images, theirs.images, strict=True):
            assert psnr(pixels(a.image), pixels(b.image)) > 45, (chaos, psnr(pixels(a.image), pixels(b.image)))
        apart[chaos] = psnr(pixels(ours.images[0].image), pixels(ours.images[1].image))
    assert apart[0] > apart[None] + 5


def test_prompt_expansion_is_the_torch_pipelines(tmp_path):
    """`expand`: each picture's prompt with its seed's words added (prompts/expansion.py, no
    model: the same words on both paths), the picture the torch pipeline's, the expanded prompt
    recorded."""
    request = request_for(prompt="a lighthouse", n_samples=2, steps=5, dtype="fp32", expand=True)
    ours, theirs = make(tmp_path, "ours", request), make(tmp_path, "theirs", request, full_run)
    plain = make(tmp_path, "plain", request.model_copy(update={"expand": False}))
    for a, b, c in zip(ours.images, theirs.images, plain.images, strict=True):
        assert psnr(pixels(a.image), pixels(b.image)) > 45, psnr(pixels(a.image), pixels(b.image))
        assert a.metadata["prompt"]["expanded"] == b.metadata["prompt"]["expanded"] != "a lighthouse"
        assert psnr(pixels(a.image), pixels(c.image)) < 40  # the added words reached the picture


def test_step_caching_is_the_torch_pipelines_and_keeps_the_prompt(tmp_path):
    """`step_cache` 2: the torch pipeline's step-cached pictures (fp32, measured 59 dB), a little
    off the plain ones (measured 23 and 33 dB: the same apples, one without its stalk), the red
    apple still red."""
    request = request_for(prompt="red apple, Noto emoji", n_samples=2, steps=12, dtype="fp32", seed=3)
    plain = make(tmp_path, "plain", request)
    cached = request.model_copy(update={"step_cache": 2})
    ours = make(tmp_path, "ours", cached)
    theirs = make(tmp_path, "theirs", cached.model_copy(update={"runtime": "torch"}), full_run)
    for a, b, c in zip(ours.images, theirs.images, plain.images, strict=True):
        made = pixels(a.image)
        assert psnr(made, pixels(b.image)) > 45, psnr(made, pixels(b.image))
        assert 20 < psnr(made, pixels(c.image)) < 40, psnr(made, pixels(c.image))
        assert (made[..., 0] > made[..., 1] + 60).mean() > 0.1  # an apple's worth of red
    assert ours.images[0].metadata["settings"]["step_cache"] == 2


def test_seamless_tiles_are_the_torch_pipelines(tmp_path):
    """`tile`: the UNet, decoder and encoder exported again padding circularly (once, inside the
    bundle), mini's x2 upscale given a wrapped margin: the torch pipeline's seamless pictures,
    txt2img and img2img, which are not the plain ones (the comparison can fail)."""
    request = request_for(prompt="a red apple", n_samples=2, steps=5, dtype="fp32", tile=True)
    ours, theirs = make(tmp_path, "ours", request), make(tmp_path, "theirs", request, full_run)
    plain = make(tmp_path, "plain", request.model_copy(update={"tile": False}))
    for a, b, c in zip(ours.images, theirs.images, plain.images, strict=True):
        assert a.image.size == (256, 256)
        assert psnr(pixels(a.image), pixels(b.image)) > 45, psnr(pixels(a.image), pixels(b.image))
        assert psnr(pixels(a.image), pixels(c.image)) < 30, psnr(pixels(a.image), pixels(c.image))
    assert ours.images[0].metadata["settings"]["tile"] is True
    again = request_for(mode="img2img", init_image=str(ours.images[0].path), strength=0.6, steps=5, dtype="fp32",
                        tile=True, prompt="a green apple")
    a, b = make(tmp_path, "ours2", again).images[0], make(tmp_path, "theirs2", again, full_run).images[0]
    assert psnr(pixels(a.image), pixels(b.image)) > 45, psnr(pixels(a.image), pixels(b.image))


def test_an_upscale_past_its_bundles_x2_is_the_torch_pipelines(tmp_path):
    """x4 (the bundle holds the x2 network only): the steps here, the built-in x4 upscaler on
    torch after them, as run.py runs it."""
    request = request_for(prompt="a red apple", n_samples=1, steps=5, dtype="fp32", upscale=4, width=64, height=64)
    ours, theirs = make(tmp_path, "ours", request), make(tmp_path, "theirs", request, full_run)
    assert ours.images[0].image.size == theirs.images[0].image.size == (256, 256)
    assert psnr(pixels(ours.images[0].image), pixels(theirs.images[0].image)) > 45
    assert ours.images[0].metadata["settings"]["runtime"] == "openvino"


@pytest.mark.parametrize("dtype, floor", [("fp32", 45.0), ("bf16", 30.0)])
def test_img2img_and_variations_are_the_torch_pipelines(tmp_path, dtype, floor):
    """A picture made again from a picture: at the model's size (128 px), and a 256 px picture
    worked on at 128 px and enlarged back by the x2 upscaler; the torch pipeline and this path
    draw the same latents and noise from each seed."""
    source = make(tmp_path, "source", request_for(prompt="a red apple", steps=4, n_samples=1, upscale=1, dtype=dtype))
    small = source.images[0].path
    large = tmp_path / "large.png"
    Image.open(small).resize((256, 256), Image.LANCZOS).save(large)
    asked = [dict(mode="img2img", init_image=str(small), prompt="a green pear", strength=0.6, n_samples=2),
             dict(mode="variations", init_image=str(small), prompt=""),
             dict(mode="img2img", init_image=str(large), prompt="a green pear", strength=0.5)]
    made = []
    for number, fields in enumerate(asked):
        request = request_for(steps=6, dtype=dtype, **fields)
        assert compiled.serves(request), fields
        ours = make(tmp_path, f"ours{number}", request)
        theirs = make(tmp_path, f"theirs{number}", request, full_run)
        made.append(ours.images)
        for a, b in zip(ours.images, theirs.images, strict=True):
            assert a.image.size == b.image.size == Image.open(fields["init_image"]).size
            assert psnr(pixels(a.image), pixels(b.image)) > floor, (fields, psnr(pixels(a.image), pixels(b.image)))
            # ... and the picture moved from its input (the comparison above can fail)
            assert psnr(pixels(a.image), pixels(Image.open(fields["init_image"]).convert("RGB"))) < 30
        recorded, theirs_recorded = (r.images[0].metadata["settings"] for r in (ours, theirs))
        assert recorded["runtime"] == "openvino" and recorded["mode"] == fields["mode"]
        assert (recorded["upscale"], recorded["strength"]) == (theirs_recorded["upscale"], theirs_recorded["strength"])
        assert recorded["prompt"] == theirs_recorded["prompt"] == (fields["prompt"] or "a red apple")
        parameters = Image.open(ours.images[0].path).info["parameters"]  # A1111's text: the strength that ran
        assert f"Denoising strength: {request.effective_strength:g}," in parameters
    # a seed's picture again, alone; and strength 0 gives the input itself
    again = make(tmp_path, "again", request_for(steps=6, dtype=dtype, **asked[0], keep_only=1))
    assert np.array_equal(pixels(again.images[0].image), pixels(made[0][1].image))
    untouched = make(tmp_path, "untouched", request_for(mode="img2img", init_image=str(small), strength=0.0, n_samples=1))
    assert np.array_equal(pixels(untouched.images[0].image), pixels(Image.open(small).convert("RGB")))


@pytest.mark.parametrize("dtype, floor", [("fp32", 50.0), ("bf16", 40.0)])
def test_inpaint_and_outpaint_are_the_torch_pipelines(tmp_path, dtype, floor):
    """The masked area repainted (from noise at strength 1, from the picture below 1) and the
    canvas extended, on both paths from each seed's same draws; the kept pixels exactly the input's."""
    source = make(tmp_path, "source", request_for(prompt="a red apple", steps=4, n_samples=1, upscale=1, dtype=dtype))
    picture = source.images[0].path
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 64:] = 255  # repaint the right middle
    Image.fromarray(mask).save(tmp_path / "mask.png")
    asked = [dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), chaos=20),  # chaos: from noise alone
             dict(mode="inpaint", mask_image=str(tmp_path / "mask.png"), strength=0.7, sampler="euler"),
             dict(mode="outpaint", outpaint_right=64)]
    for number, fields in enumerate(asked):
        request = request_for(prompt="a green pear", init_image=str(picture), steps=6, n_samples=2, dtype=dtype,
                              **fields)
        assert compiled.serves(request), fields
        ours = make(tmp_path, f"ours{number}", request)
        theirs = make(tmp_path, f"theirs{number}", request, full_run)
        for a, b in zip(ours.images, theirs.images, strict=True):
            assert psnr(pixels(a.image), pixels(b.image)) > floor, (fields, psnr(pixels(a.image), pixels(b.image)))
            made, kept = pixels(a.image), pixels(Image.open(picture))
            if fields["mode"] == "inpaint":
                assert np.array_equal(made[:24], kept[:24])  # rows the mask (and its feathered seam) leave alone
                assert psnr(made[40:88, 72:], kept[40:88, 72:]) < 30  # the masked area repainted
            else:
                assert made.shape == (128, 192, 3) and np.array_equal(made[:, :120], kept[:, :120])
        assert ours.images[0].metadata["settings"]["mode"] == fields["mode"]


def test_embeddings_are_the_torch_pipelines(tmp_path, monkeypatch):
    """A textual-inversion embedding named in a prompt (two vectors, weighted, and in the
    negative prompt): its tokens' rows reach the text encoder here as on torch."""
    from safetensors.numpy import save_file

    monkeypatch.setenv("REVERIE_MODELS", str(tmp_path / "models"))
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("inkcat", 2), ("blurry-mess", 1)):  # vectors as large as MiniLM's own rows
        save_file({"emb_params": (rng.standard_normal((count, 384)) * 0.05).astype(np.float32)},
                  tmp_path / "models" / "embeddings" / f"{name}.safetensors")
    request = request_for(prompt="a (inkcat:1.2) on a table", negative_prompt="blurry-mess", n_samples=2, steps=6,
                          dtype="fp32")
    assert compiled.serves(request)
    ours, theirs = make(tmp_path, "ours", request), make(tmp_path, "theirs", request, full_run)
    without = make(tmp_path, "without", request.model_copy(update={"prompt": "a (cat:1.2) on a table"}))
    for a, b, c in zip(ours.images, theirs.images, without.images, strict=True):
        assert psnr(pixels(a.image), pixels(b.image)) > 45, psnr(pixels(a.image), pixels(b.image))
        assert psnr(pixels(a.image), pixels(c.image)) < 25  # the embedding's rows, not some word's
    assert "TI hashes" in Image.open(ours.images[0].path).info["parameters"]
    # ... an embedding of another width leaves the request to the torch pipeline (which says so)
    save_file({"emb_params": np.zeros((1, 768), np.float32)}, tmp_path / "models" / "embeddings" / "sd1thing.safetensors")
    assert not compiled.serves(request_for(prompt="a sd1thing"))
    assert compiled.serves(request_for(prompt="a plain cat"))


def test_a_seed_gives_its_picture_alone_or_in_a_batch_and_again(tmp_path):
    batch = make(tmp_path, "batch", request_for(seed=40, n_samples=3, steps=4))
    alone = make(tmp_path, "alone", request_for(seed=41, n_samples=1, steps=4))
    again = make(tmp_path, "again", request_for(seed=41, n_samples=1, steps=4))
    assert np.array_equal(pixels(batch.images[1].image), pixels(alone.images[0].image))
    assert np.array_equal(pixels(alone.images[0].image), pixels(again.images[0].image))
    written = Image.open(alone.images[0].path)
    assert np.array_equal(pixels(written), pixels(alone.images[0].image))
    assert json.loads(written.info["reverie"])["seed"] == 41
    # `--from` of the batch's second picture (keep_only), and the batch resumed after its first (made)
    picked = make(tmp_path, "picked", request_for(seed=40, n_samples=3, steps=4, keep_only=1))
    resumed = make(tmp_path, "resumed", request_for(seed=40, n_samples=3, steps=4, made=1))
    assert [image.seed for image in picked.images] == [41] and [image.seed for image in resumed.images] == [41, 42]
    assert np.array_equal(pixels(picked.images[0].image), pixels(batch.images[1].image))
    assert np.array_equal(pixels(resumed.images[1].image), pixels(batch.images[2].image))
    recorded = batch.images[0].metadata["settings"]  # what ran, as the torch pipeline records it
    assert (recorded["width"], recorded["height"], recorded["upscale"], recorded["vae_tiling"]) == (128, 128, 2, False)


def test_a_stop_keeps_the_batches_finished(tmp_path):
    events = []

    def report(event):
        events.append(event)

    def stop() -> bool:  # during the second batch's denoising
        return sum(1 for e in events if e.stage == "denoise" and e.batch == 1) >= 2

    result = make(tmp_path, "stopped", request_for(n_samples=2, n_iter=3, steps=4),
                  progress=Progress(report=report, should_stop=stop))
    assert result.interrupted and [image.seed for image in result.images] == [11, 12]
    assert sorted(p.name for p in (tmp_path / "stopped").glob("*.png")) == [image.path.name for image in result.images]


def test_a_damaged_bundle_is_made_again(tmp_path, monkeypatch):
    from reverie.models.mini_bundle import bundle_folder
    from reverie.models.openvino_bundle import bundle_made

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))  # a bundle of its own: the others stay whole
    request = request_for(steps=1, n_samples=1)
    first = compiled.run(request, ModelCache(), Progress(), Outputs(tmp_path / "first"))
    folder = bundle_folder(compiled.precision_of(compiled.ran_dtype(request)))
    assert bundle_made(folder)
    with open(folder / "unet.bin", "r+b") as weights:
        weights.truncate(1000)
    assert not bundle_made(folder)
    again = compiled.run(request, ModelCache(), Progress(), Outputs(tmp_path / "again"))
    assert bundle_made(folder)
    assert np.array_equal(pixels(first.images[0].image), pixels(again.images[0].image))


def test_a_new_bundle_replaces_the_older_ones_of_its_precision(tmp_path, monkeypatch):
    """Bundles made from other files or versions of mini, in the same precision, are removed
    when a new one is made (each is about 236 MB that nothing reads again), markers from before
    they named their model too; another precision's stays."""
    from reverie.models.mini_bundle import bundle_folder, make_bundle

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    precision = compiled.precision_of(compiled.ran_dtype(request_for()))
    other = "f32" if precision == "bf16" else "bf16"
    folder = bundle_folder(precision)
    olds = {"mini-older": {"precision": precision, "model": f"mini {precision}"}, "mini-legacy": {"precision": precision},
            "mini-other": {"precision": other, "model": f"mini {other}"}}
    for name, marker in olds.items():
        (folder.parent / name).mkdir(parents=True)
        (folder.parent / name / "done.json").write_text(json.dumps(marker))
    make_bundle(folder, precision)
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted(["mini-other", folder.name])


def test_the_command_makes_mini_pictures_without_importing_torch(tmp_path):
    """`reverie generate` cold, with the bundle made (by the first command): torch and diffusers
    are never imported (python -X importtime lists every module imported)."""
    generate_twice_without_torch(tmp_path, 2, "red apple", "-n", "2", "--steps", "3", "--seed", "5")
    for name in ("00000-5-red-apple.png", "00001-6-red-apple.png"):
        assert (tmp_path / "second" / name).is_file()


def test_a_bundle_that_cannot_be_made_leaves_mini_to_the_torch_pipeline(tmp_path, monkeypatch):
    from reverie.methods.diffusion import METHOD

    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(compiled, "_failed", {})

    def cannot(folder, precision):
        raise RuntimeError("the exporter cannot trace this layer")

    monkeypatch.setattr(compiled, "make_bundle", cannot)
    request = request_for(steps=2, n_samples=1)
    assert compiled.serves(request)
    models = ModelCache()
    result = METHOD.run(request, models, Progress(), Outputs(tmp_path / "out"))
    assert len(result.images) == 1 and models.find(lambda key: key[0] == "diffusion") is not None
    assert not compiled.serves(request)  # this process does not try again


def test_int8_from_the_command_keeps_minis_pictures(tmp_path, monkeypatch, capsys):
    """`reverie generate --quantize int8` on the built-in (trained) model: its UNet (convolutions, most linears)
    quantized once from its own denoising; the same pictures to the eye (measured: 34 dB over
    docs/mini-grid.png's 64), the red apple still red, recorded, and `--from` makes it again;
    with step caching too."""
    pytest.importorskip("nncf")
    from conftest import run_cli
    from reverie.models import int8_unet
    from reverie.models.mini_bundle import bundle_folder
    from reverie.models.openvino_bundle import COMPILED_DIR

    args = ["generate", "red apple, Noto emoji", "-n", "2", "--seed", "3", "--steps", "12"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--outdir", str(tmp_path / "plain"))
    assert code == 0, err
    ran = json.loads(Image.open(next((tmp_path / "plain").glob("*.png"))).info["reverie"])["settings"]["ran_dtype"]
    bundle = bundle_folder("bf16" if ran == "bf16" else "f32")
    shutil.rmtree(int8_unet.int8_folder(bundle), ignore_errors=True)  # quantized here, whatever ran before
    stale = bundle / COMPILED_DIR / "compiled-from-an-earlier-int8-unet.blob"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"blob")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--quantize", "int8", "--outdir", str(tmp_path / "int8"))
    assert code == 0, err
    assert int8_unet.int8_made(bundle) and not stale.exists()  # its compiled shapes went with the old UNet
    plain, quantized = sorted((tmp_path / "plain").glob("*.png")), sorted((tmp_path / "int8").glob("*.png"))
    assert len(plain) == len(quantized) == 2
    for a, b in zip(plain, quantized):
        ours = pixels(Image.open(b))
        assert 24 < psnr(ours, pixels(Image.open(a))) < float("inf"), psnr(ours, pixels(Image.open(a)))
        red = ours[..., 0] > ours[..., 1] + 60
        assert red.mean() > 0.1  # an apple's worth of red: the prompt still wins
        settings = json.loads(Image.open(b).info["reverie"])["settings"]
        assert settings["quantize"] == "int8" and "Quantize: int8" in Image.open(b).info["parameters"]
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--from", str(quantized[0]), "--outdir", str(tmp_path / "again"))
    assert code == 0, err
    again = sorted((tmp_path / "again").glob("*.png"))
    assert len(again) == 1 and np.array_equal(pixels(Image.open(again[0])), pixels(Image.open(quantized[0])))
    # The int8 UNet's IR splits for step caching as the bundle's own does (its join's inputs quantized).
    code, _, err = run_cli(monkeypatch, capsys, *args, "--quantize", "int8", "--step-cache", "2",
                           "--outdir", str(tmp_path / "cached"))
    assert code == 0, err
    for a, b in zip(quantized, sorted((tmp_path / "cached").glob("*.png")), strict=True):
        ours = pixels(Image.open(b))  # as far from int8's as step caching from plain (seed 4: 22.5 dB)
        assert 20 < psnr(ours, pixels(Image.open(a))) < float("inf"), psnr(ours, pixels(Image.open(a)))
        assert (ours[..., 0] > ours[..., 1] + 60).mean() > 0.1
        assert json.loads(Image.open(b).info["reverie"])["settings"]["runtime"] == "openvino"
