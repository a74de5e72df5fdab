"""How a studio server is set up (`reverie serve` flags map onto this)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerConfig:
    data_dir: Path = Path("outputs/studio")  # gallery.sqlite, images/, uploads/, dreams/
    multi_user: bool = False
    queue_capacity: int = 32  # queued + running jobs; past this, 429 with Retry-After
    monthly_credits: int = 50  # free credits each user gets each month (multi-user mode)
    cost_per_request: int = 1
    max_upload_bytes: int = 16 * 1024 * 1024
    max_upload_pixels: int = 4096 * 4096
    max_images_per_request: int = 8
    default_model: str | None = None  # None: reverie's default (mini)
    device: str = "auto"
    start_worker: bool = True
    sync_timeout_s: float = 600.0  # how long the A1111/OpenAI endpoints wait for their job

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
