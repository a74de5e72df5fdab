"""Turning an API call into a queued job, and a job into what the APIs show.

Every front door (the page, /api/v1, /sdapi/v1, /v1/images) ends here, so validation, styles,
the model whitelist, the queue bound and the credit charge are the same for all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadRequest
from ..gallery.items import VIDEO_TYPES, is_video
from ..gallery.models import Job, User
from ..gallery.uploads import IMAGE_FIELDS
from ..studio import fields_again, fields_for_action, make_request, refusal, request_fields
from .inputs import MAX_PROMPT_CHARS, check_prompts
from .networks import check_lora_tags, shared_lora_names
from .state import StudioState, check_mask_size, check_model, image_size, refused_uploads_deleted

# What a studio request may name, where the CLI can name files: the server never takes a path
# from a client. {field: allowed values}; fields not listed here are checked by the request itself.
SERVER_CHOICES = {
    "generator": ("mini", "pixels"),
    "guides": ("mini",),
    "prior": ("auto", "mini", "none"),
    "scorer": ("mini",),
    "features": ("builtin", "random", "clip"),
    "decoder": ("vae", "tiny"),  # tiny: the models folder's taesd/ or taesdxl/, never a client's path
}
MAX_ITERATIONS = 5000  # a dream's iterations per studio request (a dream video's, all its frames')
MAX_VIDEO_STEPS = 6000  # a video's denoising steps per studio request (made frames x steps)
UNKNOWN_STEPS = 25  # steps a request that leaves them out is counted at (the general default; mini's is 20)
# A dream video's own dream settings (`dream`) that the studio never takes from a client: pictures
# by path and where the dream runs. The rest are held to SERVER_CHOICES like top-level fields.
DREAM_FIELDS_REFUSED = ("init_image", "image_prompts", "device", "dtype")
CANDIDATES_PER_PICTURE = 4  # best-of candidates per picture allowed, on top of max_images_per_request
# Training a LoRA in the studio (mode train_lora): at most this many pictures, steps, rank and
# grids of samples per job; the base is a diffusion model the studio lists.
MAX_TRAIN_PICTURES = 50
MAX_TRAIN_STEPS = 2000
MAX_TRAIN_RANK = 64
MAX_SAMPLE_GRIDS = 10


def _cost(state: StudioState, request) -> int:
    """A request's charge: one request's cost for each unit the request counts (`charge_units`:
    a grid's cells, what they would cost asked for one by one; a video's frames, eight a request)."""
    return state.config.cost_per_request * request.charge_units() if state.config.multi_user else 0


def _check_choices(fields: dict, prefix: str = "") -> None:
    for name, allowed in SERVER_CHOICES.items():
        if name not in fields:
            continue
        given = fields[name] if isinstance(fields[name], list) else [fields[name]]
        if any(value not in allowed for value in given):
            raise BadRequest(prefix + name, f"the studio takes {' or '.join(allowed)}; use the `reverie` command for files")


def _check_video_fields(fields: dict) -> None:
    """A video's prompts are held to the prompt limit, and its dream to what a dream job may
    name; checked before the request is built, which reads the dream's settings."""
    dream = fields.get("dream")
    if isinstance(dream, dict):
        _check_choices(dream, "dream.")
        for name in DREAM_FIELDS_REFUSED:
            if dream.get(name) is not None:
                raise BadRequest(f"dream.{name}", "the studio's dream videos do not take this; "
                                                  "use the `reverie video` command")
    for prompt in fields.get("prompts") or []:
        if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest("prompts", f"has a prompt {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")


def _check_video_length(state: StudioState, request) -> None:
    """At most `max_video_frames` frames in the written video, in-between frames included, and
    at most a dream's iterations (a dream video) or MAX_VIDEO_STEPS denoising steps in all: one
    job never holds the queue for hours."""
    limit = state.config.max_video_frames
    if request.output_frames() > limit:
        extra = f" ({request.frames} frames and {request.interpolate} in-between each)" if request.interpolate else ""
        raise BadRequest("frames", f"at most {limit} frames per video in the studio; this one has "
                                   f"{request.output_frames()}{extra}")
    if request.motion == "dream":
        iterations = request.first_iterations + (request.frames - 1) * request.iterations_per_frame
        if iterations > MAX_ITERATIONS:
            raise BadRequest("iterations_per_frame", f"at most {MAX_ITERATIONS} dream iterations per video in the "
                                                     f"studio; this one has {iterations} (first_iterations + frames x "
                                                     "iterations_per_frame)")
    elif request.made_frames() * (request.steps or UNKNOWN_STEPS) > MAX_VIDEO_STEPS:
        raise BadRequest("steps", f"at most {MAX_VIDEO_STEPS} denoising steps per video in the studio (frames x "
                                  f"steps); make fewer frames or fewer steps")


def check_style_network(name: str) -> None:
    """Only style networks the studio lists may be named: a name is never taken as a path."""
    from ..models.style_network import style_networks

    names = list(style_networks())
    if name not in names:
        raise BadRequest("network", f"unknown style network {name!r}; this studio has: {', '.join(names) or 'none'}")


def submit_job(state: StudioState, user: User, fields: dict) -> Job:
    """Validate `fields` as the request of the method their `mode` names (style presets are the
    request's `styles`, applied per picture by the method), check the studio's own limits, and
    queue it, charged. A refused request's uploads are deleted."""
    with refused_uploads_deleted(state, fields):
        return _submit(state, user, fields)


def submit_again(state: StudioState, user: User, image) -> Job:
    """Queue the job that makes a gallery picture again, bit for bit: its own settings and seed
    (a picture of a batch by its whole batch, keeping only it), charged like any job."""
    data = json.loads(image.settings_json)
    settings = dict(data.get("settings", {})) | {"picture_seed": image.seed}
    gone = _gone_input(state, user, settings)
    if gone:
        raise BadRequest("image_id", f"this was made from an input ({gone}) that is gone: an upload goes with its "
                                     "job, a deleted picture with its item; only what was made from a prompt or from "
                                     "your gallery can be made again")
    return submit_job(state, user, fields_again(settings))


def _gone_input(state: StudioState, user: User, fields: dict) -> str | None:
    """The first input field of `fields` whose file is no longer an item of the user's gallery
    (an upload goes with its job), or None."""
    own = (state.gallery.images_dir / str(user.id)).resolve()
    for name in IMAGE_FIELDS:
        values = fields.get(name) if isinstance(fields.get(name), list) else [fields.get(name)]
        for value in filter(None, values):
            path = Path(value).resolve()
            if path.parent != own or not path.is_file():
                return name
    return None


def submit_action(state: StudioState, user: User, image, action: str) -> Job:
    """Queue Midjourney's `action` (`reverie.actions.ACTIONS`) on a gallery picture: its own
    settings, the picture's file as the init image, a new seed; charged like any job. A reroll
    whose input picture is no longer in the user's gallery (an upload, gone with its job) is refused."""
    if is_video(image.file):
        raise BadRequest("image_id", f"{action} works on pictures and this is a video; Re-run makes the video "
                                     "again, and its poster can start a new picture (image:ID as init_image)")
    data = json.loads(image.settings_json)
    if data.get("settings", {}).get("mode") == "train_lora":
        raise BadRequest("image_id", f"{action} works on pictures made from a prompt; this is a LoRA's samples: use "
                                     "the LoRA in a prompt instead")
    settings = dict(data.get("settings", {})) | {"picture_prompt": data.get("prompt")}
    fields = fields_for_action(settings, action, state.gallery.image_path(image), (image.width, image.height))
    gone = _gone_input(state, user, fields)
    if gone:
        raise BadRequest("image_id", f"{action} needs this picture's input picture ({gone}), which is gone; "
                         "vary, zoom or pan the picture itself")
    return submit_job(state, user, fields)


def _submit(state: StudioState, user: User, fields: dict) -> Job:
    fields = {k: v for k, v in fields.items() if v is not None}
    check_prompts(fields)
    _check_choices(fields)
    if fields.get("mode") == "video":
        _check_video_fields(fields)
    if fields.get("network") is not None:
        check_style_network(fields["network"])
    if fields.get("continue_from") is not None:
        raise BadRequest("continue_from", "the studio does not continue run folders; use the `reverie` command")
    if "model" in request_fields(fields.get("mode")) and not (fields.get("mode") == "video" and fields.get("network")):
        fields["model"] = check_model(state, fields.get("model"))  # (a style network's restyle takes none)
    if isinstance(fields.get("base"), dict):  # a grid: the request its cells start from
        fields["base"] = dict(fields["base"]) | {"model": check_model(state, fields["base"].get("model"))}
    fields.setdefault("device", state.config.device)
    request = make_request(fields).with_seed()  # fixed now: a job that runs again makes the same pictures
    if getattr(request, "progress_video", False):
        raise BadRequest("prompt", "--video: the studio shows a job's progress live and keeps no progress video; "
                                   "leave it out (`reverie generate \"... --video\"` writes one)")
    if request.mode == "video":
        request = request.fitted_to_input()  # a restyle: the frames its input gives, charged as such
    parts = request.parts()
    for part in parts:
        if part is not request:  # a grid's cell
            _check_part(state, part)
    limit = state.config.max_images_per_request
    if sum(part.picture_count() for part in parts) > limit:
        if getattr(request, "combinatorial", False):
            raise BadRequest("max_combinations", f"at most {limit} pictures per request: the prompt's "
                                                 f"combinations x n_iter make {request.picture_count()}")
        raise BadRequest("n_samples", f"at most {limit} pictures per request" + (" (a grid: cells x pictures per cell)" if len(parts) > 1 else ""))
    if sum(part.candidate_count() for part in parts) > limit * CANDIDATES_PER_PICTURE:
        raise BadRequest("rerank", f"at most {limit * CANDIDATES_PER_PICTURE} candidates per request (n_samples x n_iter x rerank)")
    if request.mode == "video":
        _check_video_length(state, request)
    if request.mode == "style" and request.steps > MAX_ITERATIONS:
        raise BadRequest("steps", f"at most {MAX_ITERATIONS} steps per style transfer in the studio")
    if getattr(request, "iterations", 0) > MAX_ITERATIONS:
        raise BadRequest("iterations", f"at most {MAX_ITERATIONS} iterations per dream in the studio")
    if request.mode == "train_lora":
        _check_training(state, request)
    check_lora_tags(state, user, request)
    if request.mode == "inpaint":
        check_mask_size(image_size(request.init_image), image_size(request.mask_image), "init_image", "mask_image")
    if state.config.broker is None:  # its jobs run on this machine: what they would be refused, they are now
        for part in parts:
            error = refusal(part)
            if error is not None:
                raise error
    job = state.gallery.add_job(user.id, request.mode, request.settings(), state.config.queue_capacity, _cost(state, request),
                                state.credits.schedule, state.now())
    state.runner.submitted(job)
    return job


def _check_training(state: StudioState, request) -> None:
    """A LoRA training job is held to the studio's limits, on a diffusion model it lists; its
    name is not a shared LoRA's (the user's own of that name is trained again)."""
    from ..models.registry import list_models

    if len(request.pictures) > MAX_TRAIN_PICTURES:
        raise BadRequest("pictures", f"at most {MAX_TRAIN_PICTURES} pictures per LoRA in the studio; this has "
                                     f"{len(request.pictures)}")
    if request.steps > MAX_TRAIN_STEPS:
        raise BadRequest("steps", f"at most {MAX_TRAIN_STEPS} training steps per LoRA in the studio")
    if request.rank > MAX_TRAIN_RANK:
        raise BadRequest("rank", f"at most rank {MAX_TRAIN_RANK} in the studio (4 to 32 are usual)")
    least = -(-request.steps // MAX_SAMPLE_GRIDS)
    if request.sample_every < least:
        raise BadRequest("sample_every", f"at most {MAX_SAMPLE_GRIDS} grids of samples per run: sample every "
                                         f"{least} steps or more for {request.steps} steps")
    kinds = {entry.name: entry.kind for entry in list_models()}
    model = request.model or state.config.default_model
    if model is not None and kinds.get(model) not in ("builtin", "diffusers", "single-file"):
        raise BadRequest("model", f"{model} is a {kinds.get(model)}; a LoRA is trained on a diffusion model")
    if request.name in shared_lora_names():
        raise BadRequest("name", f"the studio already has a LoRA named {request.name!r}; give yours another name")


def _check_part(state: StudioState, part) -> None:
    """A grid's cell is held to what it would be asked for alone: a model the studio lists, its
    choices, the prompt limit; and it takes no picture (a client never names a path)."""
    if "model" in type(part).model_fields:
        check_model(state, part.model)
    settings = part.settings()
    check_prompts(settings)
    _check_choices(settings)
    if any(getattr(part, name) is not None for name in part.IMAGE_FIELDS):
        raise BadRequest("base.init_image", "the studio's grids start from a prompt (txt2img); use the `reverie grid` command for pictures")


def job_view(state: StudioState, job: Job) -> dict:
    """A job as the native API and the page see it."""
    live = state.runner.live.get(job.id)
    images = state.gallery.job_images(job)
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created": job.created.isoformat() + "Z",
        "position": state.gallery.queue_position(job),
        "error": job.error,
        "request": json.loads(job.request_json),
        "progress": {
            "stage": live.stage if live else job.status,
            "step": live.step if live else 0,
            "total": live.total if live else 0,
            "fraction": 1.0 if job.status == "done" else (live.fraction if live else 0.0),
            "images_done": live.images_done if live else len(images),
            "images_total": live.images_total if live else 0,
            "message": live.message if live else "",
            "preview_version": live.version if live and live.preview else None,
        },
        "images": [image_view(state, image) for image in images],
    }


def image_view(state: StudioState, image) -> dict:
    """A gallery item as the native API and the page see it. A video's `url` is the video
    (`content_type` says which kind) and `poster_url` its first frame; a picture's are both the picture."""
    settings = json.loads(image.settings_json)
    suffix = Path(image.file).suffix.lower()
    video = is_video(image.file)
    return {
        "id": image.id,
        "job_id": image.job_id,
        "url": state.file_url(image.id, suffix),
        "poster_url": state.file_url(image.id),
        "video": video,
        "content_type": VIDEO_TYPES[suffix] if video else "image/png",
        "prompt": image.prompt,
        "seed": image.seed,
        "width": image.width,
        "height": image.height,
        "created": image.created.isoformat() + "Z",
        "settings": settings.get("settings", settings),
        # the picture's own prompt: its template, the variant drawn, what was encoded
        "picture_prompt": settings.get("prompt") if isinstance(settings.get("prompt"), dict) else None,
        "score": settings.get("clip_score"),  # the built-in CLIP's cosine to the prompt, when scored
        "grid": settings.get("grid"),  # a grid's cell: its axis values; a grid's sheet: its labels
    }
