"""The gallery: who made what, with which settings, and what it cost.

Images live as PNG files under `<folder>/images/`, rows in SQLite. A picture's file is written
before its row, and its row removed before its file, so the gallery never lists a missing file.
A job's pictures are named by job and place (`images/<user>/<job>-<index>.png`), so a file a
crash left without its row is found when the job is recovered, and replaced or removed. A video
is an item too: its file keeps its suffix (`<job>-<index>.mp4`) and its poster lies beside it as
`<job>-<index>.png` (gallery/items.py).
Every write opens its own short transaction (BEGIN IMMEDIATE on SQLite), which makes the
check-then-write steps (capacity, credit) exact under concurrent requests; reads never take the
write lock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select, update

from ..errors import ReverieError
from ..faults import crash_point
from ..outputs.files import atomic_write
from .credits import GrantSchedule, balance_in, grant_due
from .db import DATABASE_FILE, open_database
from .items import files_of, is_video, poster_of
from .models import ApiKey, Image, Job, LedgerEntry, Session, User, utcnow
from .uploads import STALE_AFTER_S, delete_uploads, sweep_uploads

LOCAL_USER = "local"
MAX_ATTEMPTS = 2  # a job that was running when the process died is re-run once, then failed
FINAL = ("done", "failed", "cancelled")
ACTIVE = ("queued", "running")


class QueueFull(ReverieError):
    def __init__(self, capacity: int, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"the queue is full ({capacity} jobs waiting); try again in {retry_after} s")


class NoCredit(ReverieError):
    pass


class NotFound(ReverieError):
    pass


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${salt.hex()}${key.hex()}"


# Checked when a name has no password to check, so that an unknown name costs one scrypt like a
# known one and the answer's timing does not tell which names exist. It matches no password.
_NO_PASSWORD = f"scrypt$16384$8$1${'00' * 16}${'00' * 64}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, key = stored.split("$")
    except ValueError:
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    return hmac.compare_digest(candidate.hex(), key)


class Gallery:
    """The studio's shared state: users, keys, sessions, jobs, images, credits."""

    def __init__(self, folder: str | Path, database: str | None = None):
        self.folder = Path(folder)
        self.images_dir = self.folder / "images"
        self.uploads_dir = self.folder / "uploads"
        self.engine, self.session = open_database(database or self.folder / DATABASE_FILE)  # a broken one: nothing made
        for path in (self.images_dir, self.uploads_dir):
            path.mkdir(parents=True, exist_ok=True)

    # -- users, keys, sessions -------------------------------------------------------------
    def add_user(self, name: str, password: str = "", admin: bool = False) -> User:
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ReverieError("a user name is 1-64 letters, digits, '-', '_' or '.'")
        with self.session.begin() as db:
            if db.scalar(select(User).where(User.name == name)):
                raise ReverieError(f"there is already a user named {name!r}")
            user = User(name=name, password_hash=hash_password(password) if password else "", is_admin=admin)
            db.add(user)
            db.flush()
            return user

    def user(self, name: str) -> User:
        with self.session() as db:
            user = db.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFound(f"no user named {name!r}")
        return user

    def users(self) -> list[User]:
        with self.session() as db:
            return list(db.scalars(select(User).order_by(User.id)))

    def local_user(self) -> User:
        """The one user of single-user mode (made on first use)."""
        try:
            return self.user(LOCAL_USER)
        except NotFound:
            try:
                return self.add_user(LOCAL_USER)
            except ReverieError:  # made by a concurrent first request
                return self.user(LOCAL_USER)

    def user_for_password(self, name: str, password: str) -> User | None:
        """The user when `password` is theirs, else None; one scrypt either way."""
        with self.session() as db:
            user = db.scalar(select(User).where(User.name == name))
        stored = user.password_hash if user is not None and user.password_hash else _NO_PASSWORD
        if not check_password(password, stored) or stored is _NO_PASSWORD:
            return None
        return user

    def login(self, name: str, password: str) -> str | None:
        """A new session token when the password is right, else None."""
        user = self.user_for_password(name, password)
        return None if user is None else self.start_session(user.id)

    def start_session(self, user_id: int, max_age: timedelta | None = None, now: datetime | None = None) -> str:
        """A new session token for the user; sessions older than `max_age` are deleted on the way."""
        token = secrets.token_urlsafe(32)
        now = now or utcnow()
        with self.session.begin() as db:
            if max_age is not None:
                db.execute(delete(Session).where(Session.created <= now - max_age))
            db.add(Session(user_id=user_id, token_hash=_digest(token), created=now))
        return token

    def logout(self, token: str) -> None:
        with self.session.begin() as db:
            for row in db.scalars(select(Session).where(Session.token_hash == _digest(token))):
                db.delete(row)

    def user_for_session(self, token: str, max_age: timedelta | None = None, now: datetime | None = None) -> User | None:
        """The session's user while the session is younger than `max_age` (from its login); an
        expired session is deleted."""
        with self.session() as db:
            row = db.scalar(select(Session).where(Session.token_hash == _digest(token)))
            if row is None:
                return None
            if max_age is None or row.created > (now or utcnow()) - max_age:
                return db.get(User, row.user_id)
        with self.session.begin() as db:
            db.execute(delete(Session).where(Session.id == row.id))
        return None

    def new_api_key(self, user_id: int) -> str:
        """A new key for programs; only its hash is stored, so this is the one time it is seen."""
        key = "rv-" + secrets.token_urlsafe(32)
        with self.session.begin() as db:
            db.add(ApiKey(user_id=user_id, prefix=key[:10], key_hash=_digest(key)))
        return key

    def user_for_key(self, key: str) -> User | None:
        with self.session() as db:
            return db.scalar(select(User).join(ApiKey, ApiKey.user_id == User.id).where(ApiKey.key_hash == _digest(key)))

    # -- credits ---------------------------------------------------------------------------
    def balance(self, user_id: int) -> int:
        with self.session() as db:
            return balance_in(db, user_id)

    def ledger(self, user_id: int) -> list[LedgerEntry]:
        with self.session() as db:
            return list(db.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id)))

    def grant(self, user_id: int, amount: int, reason: str = "grant", note: str = "") -> None:
        if reason not in ("grant", "purchase"):
            raise ReverieError("credits are added as a grant or a purchase")
        with self.session.begin() as db:
            db.add(LedgerEntry(user_id=user_id, amount=amount, reason=reason, note=note))

    # -- jobs ------------------------------------------------------------------------------
    def add_job(self, user_id: int, kind: str, request: dict, capacity: int, cost: int = 0,
                monthly: int | GrantSchedule = 0, now: datetime | None = None) -> Job:
        """Queue a job, charging `cost` credits (after this month's free grant: `monthly` is the
        schedule, or one amount for every month) in the same transaction.

        Raises QueueFull past `capacity` waiting jobs and NoCredit when the balance is short;
        either way nothing is written.
        """
        with self.session.begin() as db:
            waiting = db.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE)))
            if waiting >= capacity:
                raise QueueFull(capacity, retry_after=max(1, 5 * (waiting - capacity + 1)))
            job = Job(id=uuid.uuid4().hex, user_id=user_id, kind=kind, status="queued",
                      request_json=json.dumps(request), charged=cost, attempts=0, error="")
            if cost:
                schedule = monthly if isinstance(monthly, GrantSchedule) else GrantSchedule(monthly, monthly)
                grant_due(db, user_id, schedule, now or utcnow())
                balance = balance_in(db, user_id)
                if balance < cost:
                    raise NoCredit(
                        f"not enough credit: this request costs {cost} and the balance is {balance}; "
                        "ask an admin for credits or wait for next month's free grant"
                    )
                db.add(LedgerEntry(user_id=user_id, amount=-cost, reason="charge", job_id=job.id, note=kind))
            db.add(job)
            db.flush()
            return job

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        with self.session.begin() as db:
            job = db.scalar(select(Job).where(Job.status == "queued").order_by(Job.created, Job.id).limit(1))
            if job is None:
                return None
            job.status, job.started, job.attempts = "running", utcnow(), job.attempts + 1
            db.flush()
            return job

    def claim(self, job_id: str) -> Job | None:
        """Mark the job `job_id` running and count the attempt: a queued one, or one left running
        by a worker that died (the caller makes sure nothing runs it now). None when it has ended."""
        with self.session.begin() as db:
            job = db.get(Job, job_id)
            if job is None or job.status not in ACTIVE:
                return None
            job.status, job.started, job.attempts = "running", utcnow(), job.attempts + 1
            db.flush()
            return job

    def claim_queued(self, job_id: str) -> Job | None:
        """Mark the job running if it is still queued (one UPDATE: of two workers asking, one
        gets it); None when it is not queued any more."""
        with self.session.begin() as db:
            taken = db.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                               .values(status="running", started=utcnow(), attempts=Job.attempts + 1))
            return db.get(Job, job_id) if taken.rowcount == 1 else None

    def queued_after(self, job, count: int) -> list[Job]:
        """Up to `count` queued jobs, oldest first, other than `job` (candidates to share its passes)."""
        with self.session() as db:
            return list(db.scalars(select(Job).where(Job.status == "queued", Job.id != job.id)
                                   .order_by(Job.created, Job.id).limit(count)))

    def finish_job(self, job_id: str, status: str, error: str = "") -> None:
        """done | failed | cancelled; failed and cancelled jobs get their credit back."""
        with self.session.begin() as db:
            job = db.get(Job, job_id)
            if job is None or job.status not in ACTIVE:
                return
            job.status, job.error, job.finished = status, error, utcnow()
            if status != "done" and job.charged:
                db.add(LedgerEntry(user_id=job.user_id, amount=job.charged, reason="refund", job_id=job.id, note=status))
            request = job.request_json
        delete_uploads(self.uploads_dir, request)  # the pictures it was given are no longer needed

    def requeue(self, job_id: str) -> None:
        """Put a running job back in the queue without counting the attempt (the server stopped
        it on purpose; MAX_ATTEMPTS counts crashes). Its finished pictures stay."""
        with self.session.begin() as db:
            job = db.get(Job, job_id)
            if job is not None and job.status == "running":
                job.status, job.started, job.attempts = "queued", None, max(0, job.attempts - 1)

    def recover(self) -> list[str]:
        """After a restart: jobs left running by a crash are queued again (or failed after
        MAX_ATTEMPTS), and picture files the crash left without a row are removed."""
        requeued = []
        with self.session() as db:
            running = list(db.scalars(select(Job).where(Job.status == "running")))
        for job in running:
            self.remove_orphans(job)
            if job.attempts >= MAX_ATTEMPTS:
                self.finish_job(job.id, "failed", "the server stopped while this job ran, twice")
            else:
                with self.session.begin() as db:
                    row = db.get(Job, job.id)
                    row.status = "queued"
                requeued.append(job.id)
        return requeued

    def remove_orphans(self, job: Job) -> list[Path]:
        """Remove the job's picture files that have no row (and unfinished writes); returns them."""
        with self.session() as db:
            kept = {name for file in db.scalars(select(Image.file).where(Image.job_id == job.id)) for name in files_of(file)}
        folder = self.images_dir / str(job.user_id)
        candidates = [*folder.glob(f"{job.id}-*"), *folder.glob(f".{job.id}-*.part")]
        orphans = [path for path in candidates if path.relative_to(self.images_dir).as_posix() not in kept]
        for path in orphans:
            path.unlink(missing_ok=True)
        return orphans

    def _owned(self, table, key: str, user_id: int | None, what: str):
        """The row `key` of `table`, if it exists and (when `user_id` is given) belongs to that user."""
        with self.session() as db:
            row = db.get(table, key)
        if row is None or (user_id is not None and row.user_id != user_id):
            raise NotFound(f"no {what} {key}")
        return row

    def job(self, job_id: str, user_id: int | None = None) -> Job:
        return self._owned(Job, job_id, user_id, "job")

    def jobs(self, user_id: int, limit: int = 50) -> list[Job]:
        with self.session() as db:
            return list(db.scalars(select(Job).where(Job.user_id == user_id).order_by(Job.created.desc()).limit(limit)))

    def queue_position(self, job: Job) -> int:
        """How many jobs run before this one (0 when it is running or finished)."""
        if job.status != "queued":
            return 0
        with self.session() as db:
            return int(db.scalar(select(func.count()).select_from(Job).where(
                Job.status.in_(ACTIVE), (Job.created < job.created) | ((Job.created == job.created) & (Job.id < job.id)))))

    def waiting(self) -> int:
        with self.session() as db:
            return int(db.scalar(select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE))))

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status (queued, running, done, failed, cancelled)."""
        with self.session() as db:
            counted = dict(db.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        return {status: int(counted.get(status, 0)) for status in ACTIVE + FINAL}

    def pictures_made(self, since: datetime | None = None) -> int:
        """Gallery items made in all, or since `since`."""
        statement = select(func.count()).select_from(Image)
        if since is not None:
            statement = statement.where(Image.created >= since)
        with self.session() as db:
            return int(db.scalar(statement))

    # -- images ----------------------------------------------------------------------------
    def add_image(self, job: Job, index: int, source: Path, prompt: str, seed: int, settings: dict,
                  poster=None) -> Image:
        """Copy a finished picture (or video, with its `poster` picture) into the gallery as the
        job's item number `index`, and record it.

        The files are written first (atomically, under names fixed by job and index: a video's
        poster, then the video), then its row; a crash in between leaves files that `recover`
        removes or the resumed job replaces."""
        from PIL import Image as PILImage

        if self._has_image(job.id, index):  # checked before the file is touched: it is that picture's
            raise ReverieError(f"job {job.id} already has its picture {index}")
        source = Path(source)
        relative = Path(str(job.user_id)) / f"{job.id}-{index}{source.suffix.lower()}"
        if not is_video(relative.as_posix()):
            relative = relative.with_suffix(".png")
        elif poster is None:
            raise ReverieError(f"{source.name}: a video goes into the gallery with its poster picture")
        else:
            settings = dict(settings) | {"video": True}
            atomic_write(self.images_dir / poster_of(relative.as_posix()),
                         lambda partial: poster.convert("RGB").save(partial, format="PNG"))
        target = self.images_dir / relative
        data = source.read_bytes()
        atomic_write(target, lambda partial: partial.write_bytes(data))
        crash_point("after-image-file")
        with PILImage.open(self.images_dir / poster_of(relative.as_posix())) as picture:  # the header only
            width, height = picture.size
        row = Image(id=uuid.uuid4().hex, job_id=job.id, user_id=job.user_id, index=index, file=relative.as_posix(),
                    prompt=prompt, seed=seed, width=width, height=height, settings_json=json.dumps(settings))
        try:
            with self.session.begin() as db:
                db.add(row)
        except BaseException:
            for name in files_of(row.file):  # no row, no file
                (self.images_dir / name).unlink(missing_ok=True)
            raise
        crash_point("after-image-row")
        return row

    def made(self, job_id: str) -> int:
        """How many of the job's pictures exist: the next picture's index (a deleted one counts)."""
        with self.session() as db:
            last = db.scalar(select(func.max(Image.index)).where(Image.job_id == job_id))
        return 0 if last is None else last + 1

    def _has_image(self, job_id: str, index: int) -> bool:
        with self.session() as db:
            return db.scalar(select(Image.id).where(Image.job_id == job_id, Image.index == index)) is not None

    def images(self, user_id: int, query: str = "", limit: int = 60, offset: int = 0, job_id: str | None = None) -> list[Image]:
        statement = select(Image).where(Image.user_id == user_id)
        if query:
            for word in query.split():
                escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                statement = statement.where(Image.prompt.ilike(f"%{escaped}%", escape="\\"))
        if job_id:
            statement = statement.where(Image.job_id == job_id)
        statement = statement.order_by(Image.created.desc(), Image.id).limit(limit).offset(offset)
        with self.session() as db:
            return list(db.scalars(statement))

    def image(self, image_id: str, user_id: int | None = None) -> Image:
        return self._owned(Image, image_id, user_id, "image")

    def job_images(self, job: Job) -> list[Image]:
        """A job's pictures in the order the request made them (seed, seed+1, ...)."""
        with self.session() as db:
            return list(db.scalars(select(Image).where(Image.job_id == job.id).order_by(Image.index)))

    def lora_folder(self, user_id) -> Path:
        """Where the user's own LoRAs (trained in the studio) are kept: `loras/<user_id>/`."""
        return self.folder / "loras" / str(user_id)

    def image_path(self, image: Image) -> Path:
        """The item's own file: a picture, or a video."""
        return self.images_dir / image.file

    def picture_path(self, image: Image) -> Path:
        """The item as a picture: itself, or a video's poster (what an `image:ID` input reads)."""
        return self.images_dir / poster_of(image.file)

    def delete_image(self, image_id: str, user_id: int) -> None:
        image = self.image(image_id, user_id)
        with self.session.begin() as db:
            db.delete(db.get(Image, image_id))
        for name in files_of(image.file):
            (self.images_dir / name).unlink(missing_ok=True)

    def save_upload(self, data: bytes, suffix: str = ".png") -> Path:
        """Store an uploaded picture under a name of the server's choosing."""
        path = self.uploads_dir / f"{uuid.uuid4().hex}{suffix}"
        path.write_bytes(data)
        return path

    def sweep_uploads(self, max_age_s: float = STALE_AFTER_S) -> list[Path]:
        """Delete stale uploads no queued or running job names (see gallery/uploads.py)."""
        with self.session() as db:
            active = list(db.scalars(select(Job.request_json).where(Job.status.in_(ACTIVE))))
        return sweep_uploads(self.uploads_dir, active, max_age_s)


__all__ = ["Gallery", "QueueFull", "NoCredit", "NotFound", "FINAL"]
