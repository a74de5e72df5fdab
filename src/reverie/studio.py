"""The Python API: `Studio` runs any method by its mode, on models kept in one shared cache.

    from reverie.studio import Studio
    studio = Studio()
    result = studio.generate("red apple, Noto emoji", num_inference_steps=20, seed=1)
    result.images[0].image.save("apple.png")
    grid = studio.grid("red apple, Noto emoji", x="cfg=2,4,7", y="sampler=euler,dpmpp_2m", outdir="outputs/grid")

Every front door (the CLI, the job runner, the HTTP APIs) comes through `Studio.run`, which
builds the method's request, then runs the method the registry finds for its mode.
"""

from __future__ import annotations

from pathlib import Path

from .models.cache import ModelCache
from .models.components import ModelComponents
from .outputs.files import Outputs
from .outputs.metadata import picture_settings
from .progress import Progress, ProgressCallback, StopCheck, no_progress, should_never_stop
from .request import BaseRequest
from .result import Result

# diffusers' and other tools' names for reverie's settings, accepted by `Studio.generate`.
ALIASES = {
    "num_inference_steps": "steps",
    "guidance_scale": "cfg_scale",
    "num_images_per_prompt": "n_samples",
    "negative": "negative_prompt",
    "image": "init_image",
    "mask": "mask_image",
}


def make_request(fields: dict | BaseRequest | None = None, **more) -> BaseRequest:
    """A validated request for the method `mode` names (txt2img when none); BadRequest names the field."""
    from .methods.registry import make_request as build

    return build(fields, **more)


def modes() -> list[str]:
    """Every mode some method serves."""
    from .methods.registry import modes as registered

    return registered()


def load_methods() -> None:
    """Import every method's running code (and torch and diffusers behind it) now, in this thread:
    a process about to run jobs calls this first (methods.registry.import_runs); a front end
    that only queues jobs for other machines never does."""
    from .methods.registry import import_runs

    import_runs()


def list_models() -> list:
    """The models a request may name (built-ins, GANs, the models folder), read from files only."""
    from .models.registry import list_models as listed

    return listed()


def request_fields(mode: str | None = None) -> set[str]:
    """The fields the request of `mode` takes (txt2img when None); an unknown mode is a BadRequest."""
    from .methods.registry import DEFAULT_MODE, method_for

    return set(method_for(mode or DEFAULT_MODE).request.model_fields)


def refusal(request: BaseRequest):
    """The BadRequest its method's `run` would stop `request` with before any work, where that
    can be found without loading a model (`Method.refusal`), else None. It asks this machine:
    where the request will run elsewhere, that machine may answer otherwise."""
    from .methods.registry import refusal as asked

    return asked(request)


def mode_for_model(reference: str | None, default: str = "txt2img") -> str:
    """The mode that makes pictures with the model a reference names: `gan` for a GAN
    (`gan:NAME`, a GAN folder or run folder; its config is read, no weights), else `default`."""
    from .models.gan_folders import is_gan_reference

    return "gan" if is_gan_reference(reference) else default


def request_from_picture(path: str | Path, **changes) -> BaseRequest:
    """The request that makes the picture at `path` again, exactly: its own settings and seed,
    one picture (reverie's PNGs, or A1111's `parameters` text)."""
    return make_request(fields_again(picture_settings(path), **changes))


def fields_again(settings: dict, **changes) -> dict:
    """The request fields that make a picture again exactly, from the settings of the request
    that made it plus its own seed as `picture_seed` (`picture_settings`; the gallery's rows)."""
    from .methods.registry import method_for

    mode = settings.get("mode", "txt2img")
    known = method_for(mode).request.model_fields
    fields = {key: value for key, value in settings.items() if key in known}
    fields |= {"mode": mode} | {key: value for key, value in changes.items() if value is not None}
    request = make_request(fields)
    if hasattr(request, "batch_of"):  # a picture of a batch is made again by its batch
        return fields | request.batch_of(settings.get("picture_seed") or 0)
    if settings.get("picture_seed") is not None:
        return fields | {"seed": settings["picture_seed"]}
    return fields


def fields_for_action(settings: dict, action: str, picture: str | Path, size: tuple[int, int] | None = None) -> dict:
    """The request fields of Midjourney's `action` (upscale, vary_subtle, zoom_out_2, pan_left,
    reroll, ...: `reverie.actions.ACTIONS`) on the picture at `picture` whose stored settings are
    `settings`: its own prompt, model and sampling, the picture as the init image, a new seed."""
    from .actions import fields_for_action as build

    return build(settings, action, picture, size)


def request_for_action(path: str | Path, action: str, **changes) -> BaseRequest:
    """The request of `action` on the picture at `path`, from the settings its PNG carries;
    `changes` (n_samples, seed, steps, ...) are applied on top."""
    fields = fields_for_action(picture_settings(path), action, path)
    return make_request(fields | {key: value for key, value in changes.items() if value is not None})


class Studio:
    """Runs requests on models kept in one cache shared by every method.

    `device` is used for requests that leave theirs at "auto"; `cache_bytes` bounds the memory the
    loaded models may take (least recently used goes first; default half the free memory).
    """

    def __init__(self, device: str = "auto", cache_bytes: int | None = None):
        self.device_name = device
        self.models = ModelCache(cache_bytes)

    def add_model(self, name: str, components: ModelComponents, device: str = "cpu") -> None:
        """Make in-memory components available as `model=name` (training samples, benchmarks).
        Their weights may no longer be the file's they came from (a model being trained), so
        they are known by no file: OpenVINO would name an export of them by the weights
        themselves, and never lets their torch UNet go (methods/diffusion/run.py)."""
        import dataclasses

        import torch

        from .methods.diffusion.run import model_key

        dtype = components.unet.dtype  # computing in the dtype its weights rest in
        self.models.put(model_key(name, torch.device(device), dtype, dtype), dataclasses.replace(components, source=""))

    def run(
        self,
        request: BaseRequest | dict,
        *,
        outdir: str | Path | None = None,
        grid: bool = True,
        run_folder: str | Path | None = None,
        progress: ProgressCallback = no_progress,
        should_stop: StopCheck = should_never_stop,
        previews: bool = False,
    ) -> Result:
        """Run the method `request.mode` names and return its result.

        With `outdir`, each picture is written (PNG with its settings) as soon as it is finished,
        with a grid when there are several (unless `grid` is False); a method that keeps a folder
        per run (a dream) makes a numbered one there, or uses `run_folder`. Ctrl-C or
        `should_stop()` ends the run early with what was finished (`result.interrupted`).
        `previews` asks for live preview pictures in the progress events.
        """
        from .methods.registry import import_run, method_for

        request = self._on_device(make_request(request))
        if request.made >= request.picture_count():
            return Result(request=request)  # an earlier run made every picture (`made`)
        outputs = Outputs(outdir, grid, run_folder)
        import_run(request.mode, request)
        return method_for(request.mode).run(request, self.models, Progress(progress, should_stop, previews), outputs)

    def batch_key(self, request: BaseRequest | dict):
        """Requests with equal keys (not None) can run together in `run_shared`: the same model,
        size and sampling settings; None when this one runs alone (or its method never shares)."""
        from .methods.registry import method_for

        request = self._on_device(make_request(request))
        method = method_for(request.mode)
        key = method.batch_key(request) if method.batch_key else None
        return None if key is None else (request.mode, key)

    def run_shared(self, runs: list[dict], limit: int = 8) -> list[Result | Exception]:
        """Run requests with one `batch_key` together, sharing forward passes of at most `limit`
        pictures (dynamic batching: several people's requests, one UNet pass); each request's
        pictures are the ones it makes alone, bit for bit. `runs`: one dict per request, with
        `request` and `run`'s keyword arguments (outdir, grid, run_folder, progress, should_stop,
        previews). Returns each request's Result, or the error that ended it alone."""
        from .methods.registry import Share, import_run, method_for

        shares = []
        for each in runs:
            request = self._on_device(make_request(each["request"]))
            shares.append(Share(request, Progress(each.get("progress", no_progress), each.get("should_stop", should_never_stop),
                                                  each.get("previews", False)),
                                Outputs(each.get("outdir"), each.get("grid", True), each.get("run_folder"))))
        import_run(shares[0].request.mode)
        method = method_for(shares[0].request.mode)
        method.run_shared(shares, self.models, limit)
        return [share.error if share.error is not None else share.result for share in shares]

    def _on_device(self, request: BaseRequest) -> BaseRequest:
        if request.device == "auto" and self.device_name != "auto":
            return request.model_copy(update={"device": self.device_name})
        return request

    def generate(self, prompt: str | dict | BaseRequest | None = None, /, *, outdir: str | Path | None = None,
                 grid: bool = True, progress: ProgressCallback = no_progress,
                 should_stop: StopCheck = should_never_stop, **settings) -> Result:
        """Make pictures: `generate("red apple", steps=20)`, `generate({"prompt": ..., ...})` or a request.

        Settings are reverie's request fields (see `reverie generate --help`), or diffusers' names
        for them (`num_inference_steps`, `guidance_scale`, `num_images_per_prompt`, `negative_prompt`).
        """
        if isinstance(prompt, BaseRequest):
            fields = prompt.model_copy(update=settings) if settings else prompt
        else:
            fields = dict(prompt) if isinstance(prompt, dict) else ({"prompt": prompt} if prompt is not None else {})
            for name, value in settings.items():
                fields[ALIASES.get(name, name)] = value
        return self.run(fields, outdir=outdir, grid=grid, progress=progress, should_stop=should_stop)

    def grid(self, base: str | dict | BaseRequest, /, *, x: str | dict | None = None, y: str | dict | None = None,
             z: str | dict | None = None, seed: int | None = None, outdir: str | Path | None = None,
             progress: ProgressCallback = no_progress, should_stop: StopCheck = should_never_stop, **settings) -> Result:
        """Compare settings on labelled grids (A1111's X/Y/Z plot): `grid("a castle", x="cfg=3,5,7",
        y="sampler=euler,dpmpp_2m", steps=20)`. `base` is a prompt, a diffusion request's fields or
        a request; `settings` are more base fields. `result.images` are the cells (each as a single
        run makes it), `result.grids` one labelled grid per z value."""
        if isinstance(base, BaseRequest):
            base = base.model_dump(exclude_unset=True)
        fields = dict(base) if isinstance(base, dict) else {"prompt": base}
        for name, value in settings.items():
            fields[ALIASES.get(name, name)] = value
        request = {"mode": "grid", "base": fields, "x": x, "y": y, "z": z, "seed": seed}
        return self.run({key: value for key, value in request.items() if value is not None}, outdir=outdir,
                        progress=progress, should_stop=should_stop)

    def dream(self, request: BaseRequest | dict | None = None, *, run_dir: str | Path | None = None,
              continue_from: str | Path | None = None, folder: str | Path | None = None, video: str | Path | None = None,
              progress: ProgressCallback = no_progress, should_stop: StopCheck = should_never_stop):
        """Dream toward `request`'s prompts, or continue the dream saved in `continue_from` (then
        `request` holds only what changes). A new dream gets its own folder under `run_dir`
        (default outputs/dreams/NNNNN-prompt), or exactly `folder`."""
        fields = request.model_dump(exclude_unset=True) if isinstance(request, BaseRequest) else dict(request or {})
        fields["mode"] = "dream"
        if continue_from is not None:
            fields["continue_from"] = str(continue_from)
        if video is not None:
            fields["video"] = str(video)
        return self.run(fields, outdir=run_dir or "outputs/dreams", run_folder=folder, progress=progress,
                        should_stop=should_stop)

    def video(self, motion: str | None = None, prompts: str | list[str] | None = None, /, *,
              outdir: str | Path | None = None, folder: str | Path | None = None,
              continue_from: str | Path | None = None, progress: ProgressCallback = no_progress,
              should_stop: StopCheck = should_never_stop, **settings):
        """Make a video: `video("walk", ["a red apple", "a green frog"], frames=48)`,
        `video("animate", "0: a forest | 60: a city", zoom="0:(1.02)")`, `video("dream", ...)`;
        or go on with a stopped one (`continue_from`, a video's run folder; `settings` then hold
        only what changes). A new video gets its own folder under `outdir` (default
        outputs/videos/NNNNN-...), or exactly `folder`. `result.videos` are the files."""
        fields = {"mode": "video", **settings}
        if motion is not None:
            fields["motion"] = motion
        if prompts is not None:
            fields["prompts"] = [prompts] if isinstance(prompts, str) else list(prompts)
        if continue_from is not None:
            fields["continue_from"] = str(continue_from)
        return self.run(fields, outdir=outdir or "outputs/videos", run_folder=folder, progress=progress,
                        should_stop=should_stop)
