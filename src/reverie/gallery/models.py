"""The gallery's tables: users, their API keys and sessions, jobs, images, the credit ledger and
the purchases recorded in it.

Schema changes go through Alembic migrations (gallery/migrations); these classes must match the
newest migration (a test compares them).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)  # shown in lists; the key itself is not kept
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class Session(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class Job(Base):
    """One request: queued -> running -> done | failed | cancelled."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # generate | dream
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True, default="queued")
    request_json: Mapped[str] = mapped_column(Text, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    charged: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, index=True)
    started: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Image(Base):
    __tablename__ = "images"
    # A job's pictures are numbered 0, 1, ... in the order its request makes them (seed, seed+1,
    # ...); a resumed job makes only the missing ones, and the database refuses a second one.
    __table_args__ = (Index("images_one_per_place", "job_id", "index", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)
    index: Mapped[int] = mapped_column(Integer, nullable=False)  # its place in the job's request
    file: Mapped[str] = mapped_column(String(256), nullable=False)  # relative to the gallery folder
    prompt: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # seeds reach 2**32 - 1: 64-bit (SQLite's INTEGER is; PostgreSQL's is 32-bit, so BIGINT there)
    seed: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=False, default=0)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    settings_json: Mapped[str] = mapped_column(Text, nullable=False)
    created: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, index=True)


class LedgerEntry(Base):
    """Append-only: every grant, purchase, charge and refund is a row; the balance is their sum."""

    __tablename__ = "ledger"
    # At most one monthly grant per user and month (the migration also adds triggers that refuse
    # any UPDATE or DELETE on this table).
    __table_args__ = (Index("ledger_one_monthly_grant", "user_id", "period", unique=True,
                            sqlite_where=text("reason = 'monthly'"), postgresql_where=text("reason = 'monthly'")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)
    amount: Mapped[int] = mapped_column(Integer, nullable=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)  # monthly | grant | purchase | charge | refund
    period: Mapped[str] = mapped_column(String(7), nullable=False, default="")  # YYYY-MM for monthly grants
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)


class Purchase(Base):
    """A credit pack bought: one row per payment provider's event, however often it is delivered."""

    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)  # the provider's id
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False, index=True)
    pack: Mapped[str] = mapped_column(String(32), nullable=False)
    credits: Mapped[int] = mapped_column(Integer, nullable=False)
    price_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    currency: Mapped[str] = mapped_column(String(8), nullable=False)
    ledger_id: Mapped[int] = mapped_column(ForeignKey("ledger.id"), nullable=False)  # the credits it added
    created: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
