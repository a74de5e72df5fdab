"""What every route shares: the config, the gallery, the job runner, who is asking, image inputs.

Routes take `Caller` (the user, found from a session cookie, an API key or HTTP Basic) and hand
images in by id or as uploaded bytes; user-given paths never reach the file system. Password
checks are limited per account and per client address; sessions end `session_lifetime_s` after
their login; picture links are signed and expire (signatures.py).
"""

from __future__ import annotations

import base64
import binascii
import io
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from fastapi import Depends, HTTPException, Request
from PIL import Image, UnidentifiedImageError

from ..errors import BadRequest
from ..gallery.credits import Credits, GrantSchedule
from ..gallery.models import User
from ..gallery.store import Gallery, NotFound
from .config import ServerConfig
from ..jobs.queue import JobQueue
from .rate_limit import FailureLimiter
from .signatures import link_expiry, link_signature

SESSION_COOKIE = "reverie_session"


class Unauthorized(Exception):
    def __init__(self, message: str = "log in, or send an API key as 'Authorization: Bearer KEY'"):
        super().__init__(message)


@dataclass
class StudioState:
    config: ServerConfig
    gallery: Gallery
    runner: JobQueue  # the embedded worker, or Celery's (jobs/)
    secret: bytes
    studio: object
    options: dict  # per-user A1111 options (sd_model_checkpoint): {user_id: {...}}
    credits: Credits | None = None  # made from the config when not given
    limiter: FailureLimiter | None = None  # wrong passwords, per account and per client address
    clock: Callable[[], float] = time.time  # Unix seconds; tests move it

    def __post_init__(self):
        config = self.config
        if self.credits is None:
            self.credits = Credits(self.gallery.session, GrantSchedule(config.first_month_credits, config.monthly_credits),
                                   config.credit_packs)
        if self.limiter is None:
            self.limiter = FailureLimiter(config.login_attempts, config.login_window_s, config.login_tracked_keys)

    def now(self) -> datetime:
        """The clock as the gallery keeps time: naive UTC."""
        return datetime.fromtimestamp(self.clock(), timezone.utc).replace(tzinfo=None)

    def session_max_age(self) -> timedelta:
        return timedelta(seconds=self.config.session_lifetime_s)

    def sign(self, image_id: str, expires: int | str) -> str:
        return link_signature(self.secret, image_id, str(expires))

    def file_url(self, image_id: str, suffix: str = ".png") -> str:
        """A link to the picture (or a video's file, by its `suffix`; `.png` is its poster) that
        works without a login until it expires."""
        expires = link_expiry(self.clock(), self.config.file_link_lifetime_s)
        return f"/files/{image_id}{suffix}?exp={expires}&sig={self.sign(image_id, expires)}"


def load_secret(folder: Path) -> bytes:
    path = folder / "secret.key"
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


def get_state(request: Request) -> StudioState:
    return request.app.state.studio


def _basic_credentials(header: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header.split(" ", 1)[1]).decode()
    except (binascii.Error, UnicodeDecodeError, IndexError):
        return None
    name, sep, password = decoded.partition(":")
    return (name, password) if sep else None


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def password_user(state: StudioState, request: Request, name: str, password: str) -> User | None:
    """The user whose password this is, else None. Raises TooManyAttempts, checking nothing,
    when the account or the client's address has had too many wrong passwords lately."""
    attempt = state.limiter.attempt(f"account:{name[:64]}", f"address:{client_address(request)}")
    user = state.gallery.user_for_password(name, password)
    if user is not None:
        state.limiter.forgive(attempt)
    return user


def current_user(request: Request, state: StudioState = Depends(get_state)) -> User:
    """The user behind this request; single-user mode has one user and needs no login."""
    gallery = state.gallery
    if not state.config.multi_user:
        return gallery.local_user()
    header = request.headers.get("authorization", "")
    user = None
    if header.lower().startswith("bearer "):
        user = gallery.user_for_key(header[7:].strip())
    elif header.lower().startswith("basic "):
        credentials = _basic_credentials(header)
        if credentials:
            user = password_user(state, request, *credentials)
    elif request.cookies.get(SESSION_COOKIE):
        user = gallery.user_for_session(request.cookies[SESSION_COOKIE], state.session_max_age(), state.now())
        if user is None:
            raise Unauthorized("your session has ended; log in again")
    if user is None:
        raise Unauthorized()
    return user


# -- image inputs ---------------------------------------------------------------------------------
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")  # what an upload may be: none of Pillow's other readers see client data


def decode_base64_image(value: str, field: str, max_bytes: int | None = None) -> bytes:
    """Bytes of a base64 image, with or without a `data:image/...;base64,` prefix; data that
    would decode to more than `max_bytes` is refused before it is decoded."""
    if not isinstance(value, str):
        raise BadRequest(field, "must be base64 image data (a string)")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if max_bytes is not None and len(value) * 3 // 4 > max_bytes + 3:
        raise HTTPException(413, detail={"field": field, "message": f"is larger than {max_bytes // 2**20} MiB"})
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise BadRequest(field, "is not valid base64 image data") from None


def check_upload_size(state: StudioState, data: bytes, field: str) -> None:
    """An upload of more than max_upload_bytes is refused (413)."""
    limit = state.config.max_upload_bytes
    if len(data) > limit:
        raise HTTPException(413, detail={"field": field, "message": f"is larger than {limit // 2**20} MiB"})


def checked_picture(state: StudioState, data: bytes, field: str) -> Image.Image:
    """The picture in `data`, decoded only once its header says it is within the limits: a small
    file claiming a huge size (a decompression bomb) is refused before any pixel is decoded."""
    config = state.config
    check_upload_size(state, data, field)
    unreadable = BadRequest(field, "is not a readable image (PNG, JPEG or WebP)")
    try:
        picture = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)  # reads the header only
    except Image.DecompressionBombError:  # Pillow's own guard, far above ours: kept as a second net
        raise BadRequest(field, "claims a size past Pillow's decompression-bomb limit; the largest accepted is "
                                f"{config.max_upload_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise unreadable from None
    width, height = picture.size
    if width * height > config.max_upload_pixels:
        raise BadRequest(field, f"is {width}x{height}; the largest accepted is {config.max_upload_pixels} pixels")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as probe:
            probe.verify()
        picture.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise unreadable from None
    return picture


def save_picture(state: StudioState, picture: Image.Image, mode: str | None = None,
                 size: tuple[int, int] | None = None) -> Path:
    """Store a checked picture as a PNG upload (in `mode`, at `size`, when given; transparency
    is kept otherwise); returns its path."""
    if mode:
        picture = picture.convert(mode)
    elif picture.mode not in ("RGB", "RGBA", "L"):
        picture = picture.convert("RGBA" if "transparency" in picture.info or "A" in picture.getbands() else "RGB")
    if size and picture.size != size:
        picture = picture.resize(size, Image.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return state.gallery.save_upload(buffer.getvalue())


def store_image_bytes(state: StudioState, data: bytes, field: str, mode: str | None = None,
                      size: tuple[int, int] | None = None) -> Path:
    """Check that `data` is a picture within limits (`checked_picture`) and store it
    (`save_picture`); returns its path."""
    return save_picture(state, checked_picture(state, data, field), mode, size)


def check_mask_size(image: tuple[int, int], mask: tuple[int, int], image_field: str, mask_field: str) -> None:
    """The one rule for masks, in every API: a mask has its image's size (as DALL-E 2 asks);
    one of another size is refused rather than stretched over the picture."""
    if tuple(mask) != tuple(image):
        raise BadRequest(mask_field, f"is {mask[0]}x{mask[1]} but {image_field} is {image[0]}x{image[1]}; "
                                     "give a mask of the same size as the image")


def image_size(path: str | Path) -> tuple[int, int]:
    """The size of a picture the server stored or made (read from its header)."""
    with Image.open(path) as picture:
        return picture.size


@contextmanager
def refused_uploads_deleted(state: StudioState, fields: dict) -> Iterator[None]:
    """When the block fails, the uploads named in `fields` are deleted (never a gallery
    picture): a refused request leaves nothing behind."""
    from ..gallery.uploads import delete_uploads

    try:
        yield
    except BaseException:
        delete_uploads(state.gallery.uploads_dir, fields)
        raise


def gallery_item(state: StudioState, user: User, value: str, field: str, what: str):
    """The item of the caller's gallery that `image:ID` names; BadRequest(field) naming `what` was asked for."""
    try:
        return state.gallery.image(value[len("image:"):], user.id)
    except NotFound:
        raise BadRequest(field, f"no {what} {value[len('image:'):]} in your gallery") from None


def resolve_image(state: StudioState, user: User, value: str | None, field: str) -> str | None:
    """`image:ID` (a picture in the caller's gallery) or base64 data -> a server-side path."""
    if not value:
        return None
    if value.startswith("image:"):
        return str(state.gallery.picture_path(gallery_item(state, user, value, field, "picture")))  # a video: its poster
    return str(store_image_bytes(state, decode_base64_image(value, field, state.config.max_upload_bytes), field))


# An uploaded video's first bytes say its container; it is stored with that suffix, which names
# the one reader of it: the demuxer ffmpeg reads it with (outputs.video.DEMUXERS; Matroska and
# WebM share theirs), or Pillow for GIF and WebP.
VIDEO_SIGNATURES = ((".mp4", lambda head: head[4:8] == b"ftyp"),  # MP4 and QuickTime
                    (".webm", lambda head: head[:4] == b"\x1a\x45\xdf\xa3"),
                    (".gif", lambda head: head[:6] in (b"GIF87a", b"GIF89a")),
                    (".webp", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"))
# ffmpeg counts an MP4's frames without decoding them; a GIF's or WebP's are decoded one by one to
# read it (and a small file can hold thousands), so such an upload is taken when its frames times
# its pixels, read from its header, stay within this (about a second of decoding here).
PICTURE_VIDEO_PIXELS = 200_000_000


def resolve_video(state: StudioState, user: User, value: str | None, field: str) -> str | None:
    """`image:ID` naming a video in the caller's gallery -> its file's path; or base64 data of an
    MP4, MOV, WebM, GIF or WebP upload (at most max_upload_bytes) -> the upload's path, once read
    as a video of two frames or more, no larger a frame than max_upload_pixels (a GIF's or WebP's
    frames x pixels within PICTURE_VIDEO_PIXELS first, from its header)."""
    from ..gallery.items import is_video
    from ..outputs.video import video_info

    if not value:
        return None
    if value.startswith("image:"):
        image = gallery_item(state, user, value, field, "video")
        if not is_video(image.file):
            raise BadRequest(field, f"{value} is a picture; give a video of your gallery")
        return str(state.gallery.image_path(image))
    try:
        data = decode_base64_image(value, field, state.config.max_upload_bytes)
    except BadRequest:
        raise BadRequest(field, "is neither image:ID of a video in your gallery nor base64 video data (MP4, MOV, "
                                "WebM, GIF, WebP)") from None
    check_upload_size(state, data, field)
    suffix = next((suffix for suffix, matches in VIDEO_SIGNATURES if matches(data[:12])), None)
    if suffix is None:
        raise BadRequest(field, "is not an MP4, MOV, WebM, GIF or WebP video, nor image:ID of a video in your gallery")
    if suffix in (".gif", ".webp"):
        _check_picture_video(data, field)
    path = state.gallery.save_upload(data, suffix)
    try:
        info = video_info(path, field)
        limit = state.config.max_upload_pixels
        if info.width * info.height > limit:
            raise BadRequest(field, f"is {info.width}x{info.height}; the largest frame accepted is {limit} pixels")
        if info.frames < 2:
            raise BadRequest(field, "has fewer than two frames; a video to restyle needs two or more")
    except BadRequest:
        path.unlink(missing_ok=True)
        raise
    return str(path)


def _check_picture_video(data: bytes, field: str) -> None:
    """A GIF or WebP upload's frames x pixels, from its header (nothing decoded), within PICTURE_VIDEO_PIXELS."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            frames, (width, height) = getattr(header, "n_frames", 1), header.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise BadRequest(field, "is not a readable GIF or WebP") from None
    if frames * width * height > PICTURE_VIDEO_PIXELS:
        raise BadRequest(field, f"is {frames} frames of {width}x{height}; a GIF or WebP upload holds at most "
                                f"{PICTURE_VIDEO_PIXELS // 10**6} million pixels in all: send fewer or smaller frames, "
                                "or an MP4")


def check_model(state: StudioState, model: str | None) -> str | None:
    """Only models the server lists may be named: a model name is never taken as a path."""
    from ..models.registry import list_models

    if model in (None, ""):
        return state.config.default_model
    # LoRAs and embeddings are listed beside the models but go in the prompt, never in `model`
    names = [entry.name for entry in list_models() if entry.kind not in ("lora", "embedding")]
    if model not in names:
        raise BadRequest("model", f"unknown model {model!r}; this studio has: {', '.join(names)}")
    return model
