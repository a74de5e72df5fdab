"""Credits: free grants on a schedule (DALL-E 2's by default), packs for sale, purchases, history.

A user's balance is the sum of their ledger entries (models.LedgerEntry, append-only). Free
credits are added when due: the first time in a calendar month (UTC) that a user's balance is
looked at or spent, one "monthly" entry is written, the first-month amount if the user never had
one and the monthly amount after. A unique index allows one such entry per user and month, and
each write runs in one BEGIN IMMEDIATE transaction, so racing requests add it once.

A purchase is recorded once per payment provider's event id (a unique column of `purchases`),
however often the provider delivers the event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ..errors import ReverieError
from .models import LedgerEntry, Purchase


@dataclass(frozen=True)
class CreditPack:
    """Credits sold together; the price is in the currency's smallest unit (cents)."""

    id: str
    credits: int
    price_cents: int
    currency: str = "usd"

    def price(self) -> str:
        return f"{self.price_cents / 100:.2f} {self.currency.upper()}"


@dataclass(frozen=True)
class GrantSchedule:
    """Free credits: `first_month` in the first month a user uses the studio, `monthly` in each one after."""

    first_month: int = 50
    monthly: int = 15


# DALL-E 2 (2022): 50 free credits in the first month, 15 each month after, 115 credits for $15.
DALLE2_SCHEDULE = GrantSchedule(50, 15)
DALLE2_PACKS = (CreditPack("115", 115, 1500, "usd"),)


class PurchaseConflict(ReverieError):
    """An event id already recorded for another user or pack."""


def period_of(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def balance_in(db, user_id: int) -> int:
    """The sum of the user's ledger, read inside the caller's transaction."""
    return int(db.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.user_id == user_id)))


def grant_due(db, user_id: int, schedule: GrantSchedule, now: datetime) -> LedgerEntry | None:
    """Add this month's free credits unless the user has had them (inside the caller's transaction)."""
    if schedule.first_month <= 0 and schedule.monthly <= 0:
        return None
    period = period_of(now)
    granted = set(db.scalars(select(LedgerEntry.period).where(
        LedgerEntry.user_id == user_id, LedgerEntry.reason == "monthly")))
    if period in granted:
        return None
    first = not granted
    amount = schedule.first_month if first else schedule.monthly
    if amount <= 0 and not first:
        return None  # a zero first-month grant is still written: it marks the first month as had
    entry = LedgerEntry(user_id=user_id, amount=amount, reason="monthly", period=period,
                        note="free credits, first month" if first else "free monthly credits", created=now)
    db.add(entry)
    db.flush()
    return entry


def record_purchase(db, event_id: str, user_id: int, pack: CreditPack, now: datetime) -> tuple[Purchase, bool]:
    """(the purchase, whether it was already recorded); adds the pack's credits the first time only."""
    existing = db.scalar(select(Purchase).where(Purchase.event_id == event_id))
    if existing is not None:
        if (existing.user_id, existing.pack) != (user_id, pack.id):
            raise PurchaseConflict(f"event {event_id!r} was already recorded for another user or pack")
        return existing, True
    entry = LedgerEntry(user_id=user_id, amount=pack.credits, reason="purchase",
                        note=f"pack {pack.id} ({pack.price()}), event {event_id}", created=now)
    db.add(entry)
    db.flush()
    purchase = Purchase(event_id=event_id, user_id=user_id, pack=pack.id, credits=pack.credits,
                        price_cents=pack.price_cents, currency=pack.currency, ledger_id=entry.id, created=now)
    db.add(purchase)
    db.flush()
    return purchase, False


class Credits:
    """What the studio asks of the ledger: balances with the grants due, history, purchases."""

    def __init__(self, sessions, schedule: GrantSchedule = DALLE2_SCHEDULE, packs: tuple[CreditPack, ...] = DALLE2_PACKS):
        self.sessions, self.schedule, self.packs = sessions, schedule, tuple(packs)

    def pack(self, pack_id: str) -> CreditPack | None:
        return next((pack for pack in self.packs if pack.id == pack_id), None)

    def balance(self, user_id: int, now: datetime) -> int:
        """The balance, this month's free credits included (they are added on this first look)."""
        with self.sessions.begin() as db:
            grant_due(db, user_id, self.schedule, now)
            return balance_in(db, user_id)

    def history(self, user_id: int, limit: int = 50) -> list[LedgerEntry]:
        """The user's ledger, newest first."""
        with self.sessions() as db:
            return list(db.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user_id)
                                   .order_by(LedgerEntry.id.desc()).limit(limit)))

    def purchase(self, event_id: str, user_id: int, pack: CreditPack, now: datetime) -> tuple[Purchase, bool]:
        """Record a bought pack once per event id (see `record_purchase`)."""
        try:
            with self.sessions.begin() as db:
                return record_purchase(db, event_id, user_id, pack, now)
        except IntegrityError:
            # Another writer recorded the same event between our read and our insert (databases
            # without SQLite's BEGIN IMMEDIATE): read it back as the duplicate it is.
            with self.sessions.begin() as db:
                return record_purchase(db, event_id, user_id, pack, now)


__all__ = ["CreditPack", "Credits", "GrantSchedule", "PurchaseConflict", "DALLE2_PACKS", "DALLE2_SCHEDULE",
           "balance_in", "grant_due", "period_of", "record_purchase"]
