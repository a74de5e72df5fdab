"""Credits, /api/v1/credits: the balance, the free-credit schedule, the packs and the history
(for the page), and the one door through which purchases come: a payment provider's webhook.

The webhook, POST /api/v1/credits/purchases, takes `{"id": EVENT_ID, "user": NAME, "pack": PACK}`
signed with `Reverie-Signature: sha256=HMAC-SHA256(webhook secret, raw body)` (signatures.py).
An event id is recorded once: delivering it again answers 200 with `"duplicate": true` and adds
nothing. No payment happens here; the provider's checkout is what sends the event.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import BadRequest
from ..gallery.models import LedgerEntry, User
from ..gallery.store import NotFound
from .signatures import SIGNATURE_HEADER, BadSignature, body_signature_matches
from .state import StudioState, current_user, get_state

router = APIRouter(prefix="/api/v1/credits", tags=["credits"])
PURCHASES_PATH = "/api/v1/credits/purchases"


class PurchaseEvent(BaseModel):
    """What a payment provider's webhook sends when a pack is paid for (other fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., min_length=1, max_length=128, description="The provider's event id; recorded once")
    user: str = Field(..., min_length=1, max_length=64, description="The studio user who bought the pack")
    pack: str = Field(..., min_length=1, max_length=32, description="A pack id from GET /api/v1/credits")


def entry_view(entry: LedgerEntry) -> dict:
    return {"id": entry.id, "amount": entry.amount, "reason": entry.reason, "note": entry.note,
            "job_id": entry.job_id, "created": entry.created.isoformat() + "Z"}


@router.get("", summary="Your balance (this month's free credits included), the schedule, the packs, your history")
def credits(limit: int = Query(50, ge=1, le=500), state: StudioState = Depends(get_state),
            user: User = Depends(current_user)):
    config, multi = state.config, state.config.multi_user
    return {
        "multi_user": multi,  # single-user mode charges nothing
        "balance": state.credits.balance(user.id, state.now()) if multi else None,
        "cost_per_request": config.cost_per_request if multi else 0,
        "schedule": {"first_month": config.first_month_credits, "monthly": config.monthly_credits},
        "packs": [{"id": p.id, "credits": p.credits, "price_cents": p.price_cents, "currency": p.currency}
                  for p in state.credits.packs],
        "history": [entry_view(entry) for entry in state.credits.history(user.id, limit)] if multi else [],
    }


@router.post("/purchases", summary="Record a paid credit pack (a payment provider's signed webhook; idempotent)")
async def record_purchase(request: Request, state: StudioState = Depends(get_state)):
    secret = state.config.purchase_webhook_secret
    if not secret:
        raise BadSignature("this studio takes no purchases: start it with a purchase webhook secret")
    body = await request.body()
    if not body_signature_matches(secret, body, request.headers.get(SIGNATURE_HEADER, "")):
        raise BadSignature(f"the {SIGNATURE_HEADER} header does not match the body; nothing was recorded")
    try:
        event = PurchaseEvent.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
    pack = state.credits.pack(event.pack)
    if pack is None:
        sold = ", ".join(f"{p.id} ({p.credits} credits for {p.price()})" for p in state.credits.packs) or "nothing"
        raise BadRequest("pack", f"unknown pack {event.pack!r}; this studio sells {sold}")
    try:
        user = await run_in_threadpool(state.gallery.user, event.user)
    except NotFound:
        raise BadRequest("user", f"no user named {event.user!r}") from None
    purchase, duplicate = await run_in_threadpool(state.credits.purchase, event.id, user.id, pack, state.now())
    return {"id": purchase.event_id, "user": user.name, "pack": purchase.pack, "credits": purchase.credits,
            "duplicate": duplicate, "balance": await run_in_threadpool(state.gallery.balance, user.id)}
