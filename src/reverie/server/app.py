"""The studio server: the page, the native API, and the A1111 and OpenAI-compatible APIs.

`create_app(config)` builds the FastAPI application; `reverie serve` runs it with uvicorn.
Every error a caller can cause comes back as JSON, 4xx, naming the field:
`{"error": {"message", "type", "param", "code"}, "detail": message}` (the OpenAI shape, which
the native and A1111 routes share). State-changing requests from other sites are refused
(cross_site.py); picture links are signed and expire (signatures.py). A request that waits for
its job gets the same shape with 503 when the server stops first (the job resumes at the next
start) and 504 when it waited `sync_timeout_s` (the job goes on). A job the engine could not take
(`--broker` down) is answered 503 too, its credit refunded: nothing runs, the client sends it again.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import BadCheckpoint, BadRequest, ImageInputError, ModelNotFound, PromptSyntaxError, ReverieError
from ..gallery.credits import PurchaseConflict
from ..gallery.items import VIDEO_TYPES, is_video
from ..prompts.styles import PREVIEWS_DIR
from ..gallery.store import Gallery, NoCredit, NotFound, QueueFull
from .config import ServerConfig
from .cross_site import CrossSiteRequest, cross_site_guard
from ..jobs.live import JobTimeout, ServerStopping
from ..jobs.queue import EngineUnavailable
from .rate_limit import TooManyAttempts
from .signatures import SIGNATURE_HEADER, BadSignature, link_signature_matches
from .state import StudioState, Unauthorized, load_secret

STATIC = Path(__file__).resolve().parent / "static"
STYLE_PREVIEWS_URL = "/style-previews"  # the style presets' preview pictures (package data, prompts/previews/)


MAX_MESSAGE_CHARS = 1000  # a message quoting a huge input is cut: an error never echoes megabytes back


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           headers: dict | None = None) -> JSONResponse:
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    if param and len(param) > MAX_MESSAGE_CHARS // 5:  # a field name the client made up
        param = param[: MAX_MESSAGE_CHARS // 5] + "..."
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "form")]
        field = ".".join(location) or "body"
        message = first.get("msg", "invalid").removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            field, message = "body", "is not valid JSON"
        return _error(422, f"{field}: {message}", field)

    @app.exception_handler(BadRequest)
    async def _bad_request(_request, exc: BadRequest):
        return _error(422, str(exc), exc.field)

    @app.exception_handler(QueueFull)
    async def _queue_full(_request, exc: QueueFull):
        return _error(429, str(exc), None, "rate_limit_error", {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooManyAttempts)
    async def _too_many_attempts(_request, exc: TooManyAttempts):
        return _error(429, str(exc), None, "rate_limit_error", {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(CrossSiteRequest)
    async def _cross_site(_request, exc: CrossSiteRequest):
        return _error(403, str(exc), None, "permission_error")

    @app.exception_handler(PurchaseConflict)
    async def _purchase_conflict(_request, exc: PurchaseConflict):
        return _error(409, str(exc), "id", "conflict")

    @app.exception_handler(BadSignature)
    async def _bad_signature(_request, exc: BadSignature):
        return _error(403, str(exc), SIGNATURE_HEADER, "permission_error")

    @app.exception_handler(NoCredit)
    async def _no_credit(_request, exc: NoCredit):
        return _error(402, str(exc), None, "insufficient_credit")

    @app.exception_handler(NotFound)
    async def _not_found(_request, exc: NotFound):
        return _error(404, str(exc), None, "not_found")

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_request, exc: Unauthorized):
        return _error(401, str(exc), None, "authentication_error", {"WWW-Authenticate": 'Bearer realm="reverie"'})

    @app.exception_handler(ServerStopping)
    async def _stopping(_request, exc: ServerStopping):
        return _error(503, str(exc), None, "server_stopping", {"Retry-After": "30"})

    @app.exception_handler(EngineUnavailable)
    async def _engine_unavailable(_request, exc: EngineUnavailable):
        return _error(503, str(exc), None, "service_unavailable", {"Retry-After": "30"})

    @app.exception_handler(JobTimeout)
    async def _timeout(_request, exc: JobTimeout):
        return _error(504, str(exc), None, "timeout")

    # Starlette's own (an unknown route, a method a route does not take, a broken multipart
    # form) as well as FastAPI's and ours: all in the documented shape.
    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        detail = exc.detail
        if isinstance(detail, dict):
            return _error(exc.status_code, f"{detail.get('field')}: {detail.get('message')}", detail.get("field"),
                          headers=exc.headers)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such route: {request.method} {request.url.path} (the APIs are under /api/v1, /sdapi/v1 and /v1/images)"
        elif exc.status_code == 405:
            detail = f"{request.url.path} does not take {request.method}"
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(detail), None, kind, exc.headers)

    @app.exception_handler(ReverieError)
    async def _reverie(_request, exc: ReverieError):
        status = 404 if isinstance(exc, ModelNotFound) else 422
        field = "prompt" if isinstance(exc, PromptSyntaxError) else "image" if isinstance(exc, ImageInputError) else \
            "model" if isinstance(exc, (ModelNotFound, BadCheckpoint)) else None
        return _error(status, str(exc), field)


def _job_queue(config: ServerConfig, gallery: Gallery, studio):
    """The embedded worker thread, or Celery's workers when the config names a broker."""
    if config.broker:
        from ..jobs.celery_engine import CeleryQueue

        return CeleryQueue(gallery, config.broker)
    from ..jobs.embedded import EmbeddedQueue

    return EmbeddedQueue(gallery, studio, batch_limit=config.batch_limit)


def create_app(config: ServerConfig | None = None, studio=None) -> FastAPI:
    """The studio as an ASGI app; the job runner starts and stops with it."""
    from ..studio import Studio, list_models, load_methods, modes
    from . import api_a1111, api_credits, api_native, api_openai, metrics, readiness

    config = config or ServerConfig()
    modes(), list_models()  # every method's request, and the models folder, checked once at the start
    if not config.broker:  # this process runs the jobs: torch, diffusers and every method now, in one thread
        load_methods()
        studio = studio or Studio(device=config.device)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    gallery = Gallery(config.data_dir, database=config.database)
    state = StudioState(config, gallery, _job_queue(config, gallery, studio), load_secret(config.data_dir), studio, {})

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        gallery.sweep_uploads()  # what a crash left behind: a day old and no waiting job's
        if config.start_worker or config.broker:  # a front end on a broker runs no worker, only listens
            state.runner.start()
        yield
        state.runner.stop()

    # Every route refuses state-changing requests from other sites, except the purchase webhook,
    # which is authenticated by its own signature and never by a cookie.
    guard = cross_site_guard(frozenset({api_credits.PURCHASES_PATH}))
    app = FastAPI(title="reverie studio", version=__version__, lifespan=lifespan, dependencies=[Depends(guard)],
                  description="The reverie studio's APIs: native (/api/v1), A1111-compatible (/sdapi/v1), "
                              "OpenAI-compatible (/v1/images).")
    app.state.studio = state
    _install_error_handlers(app)
    app.include_router(api_native.router)
    app.include_router(api_credits.router)
    app.include_router(api_a1111.router)
    app.include_router(api_openai.router)
    app.include_router(metrics.router)
    app.include_router(readiness.router)

    @app.get("/files/{image_id}.{suffix}", include_in_schema=False)
    def image_file(image_id: str, suffix: str, exp: str = "", sig: str = ""):
        """A gallery item's file by its signed link: `.png` the picture (a video's poster), a
        video's own suffix its video."""
        if not link_signature_matches(state.secret, image_id, exp, sig):
            return _error(403, "this picture link is not valid", "sig", "permission_error")
        left = int(exp) - int(state.clock())  # a signed exp is the server's own integer
        if left <= 0:
            return _error(403, "this picture link has expired; reload the page for a fresh one", "exp", "permission_error")
        image = gallery.image(image_id)
        own = Path(image.file).suffix.lower()
        if suffix == "png":
            path, media_type = gallery.picture_path(image), "image/png"
        elif is_video(image.file) and f".{suffix}" == own:
            path, media_type = gallery.image_path(image), VIDEO_TYPES[own]
        else:
            return _error(404, f"item {image_id} has no .{suffix[:8]} file", None, "not_found")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": f"private, max-age={min(left, 86400)}"})

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="#ff7a59"/></svg>'
        return Response(svg, media_type="image/svg+xml")

    @app.get("/healthz", include_in_schema=False)
    def health():
        return Response("ok")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount(STYLE_PREVIEWS_URL, StaticFiles(directory=PREVIEWS_DIR, check_dir=False), name="style-previews")
    return app
