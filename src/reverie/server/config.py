"""How a studio server is set up (`reverie serve` flags map onto this)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..gallery.credits import DALLE2_PACKS, CreditPack


@dataclass
class ServerConfig:
    data_dir: Path = Path("outputs/studio")  # gallery.sqlite, images/, uploads/, dreams/
    database: str | None = None  # a database server's URL (postgresql://...); None: data_dir/gallery.sqlite
    multi_user: bool = False
    queue_capacity: int = 32  # queued + running jobs; past this, 429 with Retry-After
    # Credits (multi-user mode), DALL-E 2's schedule: free credits in a user's first month of use
    # and in each month after, and the packs a payment provider may sell (SECURITY.md, "Credits").
    first_month_credits: int = 50
    monthly_credits: int = 15
    cost_per_request: int = 1
    credit_packs: tuple[CreditPack, ...] = DALLE2_PACKS
    purchase_webhook_secret: str | None = None  # signs POST /api/v1/credits/purchases; None: no purchases
    max_upload_bytes: int = 16 * 1024 * 1024
    max_upload_pixels: int = 4096 * 4096
    max_images_per_request: int = 8
    max_video_frames: int = 120  # frames in a video the studio makes, in-between frames included
    default_model: str | None = None  # None: reverie's default (mini)
    device: str = "auto"
    start_worker: bool = True
    # redis://...: jobs go to Celery workers (`reverie worker`), progress comes over Redis; None: the
    # embedded worker thread (jobs/).
    broker: str | None = None
    # Dynamic batching in the embedded worker: queued jobs with the same model, size and sampling
    # settings share passes of at most this many pictures (jobs/batching.py); 1: one job at a time.
    batch_limit: int = 8
    sync_timeout_s: float = 600.0  # how long the A1111/OpenAI endpoints wait for their job
    # Accounts (multi-user mode): sessions end this long after their login; wrong passwords are
    # limited per account and per client address (the next attempt in the window gets 429).
    session_lifetime_s: int = 14 * 24 * 3600
    login_attempts: int = 10
    login_window_s: float = 60.0
    login_tracked_keys: int = 10_000  # accounts and addresses the limiter remembers at most
    # Pages on these origins (e.g. "https://studio.example") may send state-changing requests
    # besides the studio's own (its Host); a proxy that rewrites Host needs its public origin here.
    trusted_origins: tuple[str, ...] = ()
    file_link_lifetime_s: int = 3600  # signed /files links work for at least this long

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        self.credit_packs = tuple(self.credit_packs)
        self.trusted_origins = tuple(self.trusted_origins)
