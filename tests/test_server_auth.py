"""Accounts, sessions, cross-site requests, picture links and credits (issue 16).

Every test drives the real server (FastAPI's TestClient over create_app) or the real gallery.
Time is moved by giving the server, or the limiter, a clock: no test sleeps.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from reverie.server.rate_limit import FailureLimiter, TooManyAttempts
from reverie.server.signatures import SIGNATURE_HEADER, body_signature
from test_server_api import FAST, make_client, wait_done

EVIL = "https://evil.example"
SECRET = "whsec-test-secret"


def utc(year: int, month: int, day: int) -> float:
    return datetime(year, month, day, 12, tzinfo=timezone.utc).timestamp()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def studio(tmp_path, gallery_database):
    """A multi-user studio with no worker (jobs stay queued), users ann and bob, and bob's key; its
    gallery on SQLite, then on PostgreSQL."""
    with make_client(tmp_path, multi_user=True, start_worker=False, purchase_webhook_secret=SECRET,
                     database=gallery_database) as client:
        gallery = client.app.state.studio.gallery
        gallery.add_user("ann", "ann-pw")
        bob = gallery.add_user("bob", "bob-pw")
        client.bob_key = gallery.new_api_key(bob.id)
        yield client


def bearer(client) -> dict:
    return {"Authorization": f"Bearer {client.bob_key}"}


def basic(name: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def from_address(client, address: str) -> TestClient:
    """Another client of the same running server, connecting from `address`."""
    return TestClient(client.app, client=(address, 40000))


def login(client, name: str, password: str, **headers):
    return client.post("/api/v1/login", json={"username": name, "password": password}, headers=headers)


def credits_of(client, name: str) -> int:
    gallery = client.app.state.studio.gallery
    return gallery.balance(gallery.user(name).id)


# -- password guessing --------------------------------------------------------------------------
def test_the_eleventh_wrong_login_in_a_minute_gets_429_even_with_the_right_password(studio):
    clock = Clock()
    studio.app.state.studio.limiter.clock = clock
    for _ in range(10):
        assert login(studio, "ann", "guess").status_code == 401
    refused = login(studio, "ann", "guess")
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert login(studio, "ann", "ann-pw").status_code == 429  # the right password waits too
    # Per account: ann from elsewhere waits; per address: bob from here waits.
    assert login(from_address(studio, "10.0.0.2"), "ann", "ann-pw").status_code == 429
    assert login(studio, "bob", "bob-pw").status_code == 429
    # Another account from another address is not affected.
    assert login(from_address(studio, "10.0.0.3"), "bob", "bob-pw").status_code == 200
    clock.now += 61  # the window has passed
    assert login(studio, "ann", "ann-pw").status_code == 200


def test_basic_auth_is_limited_like_the_login(studio):
    studio.app.state.studio.limiter.clock = Clock()
    for _ in range(10):
        assert studio.get("/api/v1/me", headers=basic("ann", "guess")).status_code == 401
    refused = studio.get("/api/v1/me", headers=basic("ann", "ann-pw"))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1
    other = from_address(studio, "10.0.0.3").get("/api/v1/me", headers=basic("bob", "bob-pw"))
    assert other.status_code == 200 and other.json()["name"] == "bob"


def test_right_passwords_do_not_count_as_failures(studio):
    studio.app.state.studio.limiter.clock = Clock()
    for _ in range(25):
        assert studio.get("/api/v1/me", headers=basic("ann", "ann-pw")).status_code == 200


def test_the_limiter_stays_small_while_names_and_addresses_cycle():
    limiter = FailureLimiter(limit=5, window_s=60, max_keys=50, clock=Clock())
    for i in range(1000):  # a new name from a new address each time
        limiter.attempt(f"account:{i}", f"address:{i}")
    assert limiter.tracked() <= 50
    # Cycling names from one address: the address is touched on every attempt, so it stays
    # remembered, and is refused after its 5 failures.
    refused = 0
    for i in range(1000):
        try:
            limiter.attempt(f"account:x{i}", "address:attacker")
        except TooManyAttempts:
            refused += 1
    assert refused == 995 and limiter.tracked() <= 50


def test_an_unknown_name_costs_one_scrypt_like_a_known_one(tmp_path, monkeypatch):
    import hashlib

    from reverie.gallery.store import Gallery

    gallery = Gallery(tmp_path / "g")
    gallery.add_user("ann", "ann-pw")
    gallery.add_user("nopw")  # an account without a password (API keys only)
    real_scrypt, calls = hashlib.scrypt, []

    def counting_scrypt(password, **options):
        calls.append((options["n"], options["r"], options["p"]))
        return real_scrypt(password, **options)

    monkeypatch.setattr(hashlib, "scrypt", counting_scrypt)
    costs = {}
    for name in ("ann", "nobody", "nopw"):
        calls.clear()
        assert gallery.user_for_password(name, "wrong") is None
        costs[name] = list(calls)
    assert costs["ann"] == costs["nobody"] == costs["nopw"] == [(2**14, 8, 1)]
    assert gallery.user_for_password("nopw", "") is None  # no password never matches an empty one


# -- sessions -----------------------------------------------------------------------------------
def test_a_session_past_its_lifetime_is_refused_and_a_fresh_one_works(studio):
    response = login(studio, "ann", "ann-pw")
    cookie = response.headers["set-cookie"]
    assert f"Max-Age={14 * 24 * 3600}" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert studio.get("/api/v1/me").json()["name"] == "ann"
    engine = studio.app.state.studio.gallery.engine
    with engine.begin() as db:  # the session was made 14 days and a minute ago
        db.execute(text("UPDATE sessions SET created = :t"), {"t": str(datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=14, minutes=1))})
    expired = studio.get("/api/v1/me")
    assert expired.status_code == 401 and "session has ended" in expired.json()["error"]["message"]
    with engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM sessions")).scalar() == 0  # the expired row is gone
    assert login(studio, "ann", "ann-pw").status_code == 200
    assert studio.get("/api/v1/me").json()["name"] == "ann"


def test_a_session_from_2015_is_refused_and_expired_rows_are_deleted_at_login(studio):
    assert login(studio, "ann", "ann-pw").status_code == 200
    engine = studio.app.state.studio.gallery.engine
    with engine.begin() as db:
        db.execute(text("UPDATE sessions SET created = '2015-06-01 00:00:00'"))
    assert studio.get("/api/v1/me").status_code == 401
    with engine.begin() as db:  # another stale session, never presented again
        db.execute(text("INSERT INTO sessions (user_id, token_hash, created) VALUES (1, 'stale', '2015-06-01 00:00:00')"))
    assert login(studio, "bob", "bob-pw").status_code == 200
    with engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM sessions WHERE token_hash = 'stale'")).scalar() == 0


def test_the_session_lifetime_is_configurable(tmp_path):
    with make_client(tmp_path, multi_user=True, start_worker=False, session_lifetime_s=3600) as client:
        client.app.state.studio.gallery.add_user("ann", "ann-pw")
        assert "Max-Age=3600" in login(client, "ann", "ann-pw").headers["set-cookie"]
        clock = Clock(datetime.now(timezone.utc).timestamp())
        client.app.state.studio.clock = clock
        assert client.get("/api/v1/me").status_code == 200
        clock.now += 3601
        assert client.get("/api/v1/me").status_code == 401


# -- cross-site requests ------------------------------------------------------------------------
def test_a_cross_site_cookie_post_is_refused_and_charges_nothing(studio):
    assert login(studio, "ann", "ann-pw").status_code == 200
    before = studio.get("/api/v1/me").json()["credits"]
    assert before == 50
    for headers in ({"Origin": EVIL}, {"Referer": f"{EVIL}/cats.html"}, {"Origin": "null"},
                    {"Origin": "http://testserver.evil.example"}, {"Origin": "http://testserver:8080"}):
        refused = studio.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["error"]["type"] == "permission_error" and "another site" in refused.json()["error"]["message"]
    variations = studio.post("/v1/images/variations", headers={"Origin": EVIL},
                             files={"image": ("in.png", png_bytes(), "image/png")}, data={"n": "1", "size": "64x64"})
    assert variations.status_code == 403
    assert studio.get("/api/v1/me").json()["credits"] == before and studio.get("/api/v1/jobs").json() == []

    same = studio.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers={"Origin": "http://testserver"})
    assert same.status_code == 202 and studio.get("/api/v1/me").json()["credits"] == before - 1
    job_id = same.json()["id"]
    # Another site can neither cancel it nor log ann out.
    assert studio.delete(f"/api/v1/jobs/{job_id}", headers={"Origin": EVIL}).status_code == 403
    assert studio.get(f"/api/v1/jobs/{job_id}").json()["status"] == "queued"
    assert studio.post("/api/v1/logout", headers={"Origin": EVIL}).status_code == 403
    assert studio.get("/api/v1/me").status_code == 200
    # Reading is allowed from anywhere: a page elsewhere cannot read the answer without CORS.
    assert studio.get("/api/v1/me", headers={"Origin": EVIL}).status_code == 200


def test_api_key_requests_work_from_anywhere(studio):
    response = studio.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers={"Origin": EVIL, **bearer(studio)})
    assert response.status_code == 202
    assert studio.post("/api/v1/jobs", json={"prompt": "x", **FAST},
                       headers={"Origin": EVIL, **basic("ann", "ann-pw")}).status_code == 202


def test_a_cross_site_login_is_refused(studio):
    assert login(studio, "ann", "ann-pw", Origin=EVIL).status_code == 403
    assert "set-cookie" not in login(studio, "ann", "ann-pw", Origin=EVIL).headers
    assert login(studio, "ann", "ann-pw", Origin="http://testserver").status_code == 200


def test_single_user_mode_refuses_other_sites_too(tmp_path):
    with make_client(tmp_path, start_worker=False, trusted_origins=("https://studio.example",)) as client:
        refused = client.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers={"Origin": EVIL})
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        # An API key means nothing in single-user mode, so it lets nothing through either.
        assert client.post("/api/v1/jobs", json={"prompt": "x", **FAST},
                           headers={"Origin": EVIL, "Authorization": "Bearer rv-x"}).status_code == 403
        assert client.post("/sdapi/v1/txt2img", json={"prompt": "x"}, headers={"Origin": EVIL}).status_code == 403
        assert client.get("/api/v1/jobs").json() == []
        # The studio's own page, a trusted origin, and programs (no Origin) are served.
        assert client.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers={"Origin": "http://testserver"}).status_code == 202
        assert client.post("/api/v1/jobs", json={"prompt": "x", **FAST},
                           headers={"Origin": "https://studio.example"}).status_code == 202
        assert client.post("/api/v1/jobs", json={"prompt": "x", **FAST}).status_code == 202


def test_same_origin_reads_ports_and_proxies():
    from reverie.server.cross_site import same_origin

    assert same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert same_origin("http://127.0.0.1:7860/static/app.js", "127.0.0.1:7860")  # a Referer
    assert same_origin("https://studio.example", "studio.example")  # TLS ended at a proxy
    assert same_origin("http://[::1]:7860", "[::1]:7860")
    assert not same_origin("http://127.0.0.1:7861", "127.0.0.1:7860")
    assert not same_origin("http://localhost:7860", "127.0.0.1:7860")
    assert not same_origin("null", "127.0.0.1:7860")
    assert not same_origin("file:///home/me/page.html", "127.0.0.1:7860")
    assert same_origin("https://app.example", "127.0.0.1:7860", ("https://app.example",))
    assert not same_origin("http://app.example", "127.0.0.1:7860", ("https://app.example",))


# -- picture links ------------------------------------------------------------------------------
def test_picture_links_expire_and_refuse_tampering(tmp_path):
    with make_client(tmp_path) as client:
        done = wait_done(client, client.post("/api/v1/jobs", json={"prompt": "a kite", "n_samples": 1, **FAST}).json()["id"])
        url = done["images"][0]["url"]
        assert "exp=" in url and "sig=" in url
        fresh = client.get(url)
        assert fresh.status_code == 200 and Image.open(io.BytesIO(fresh.content)).size == (64, 64)
        assert int(fresh.headers["cache-control"].rsplit("=", 1)[1]) <= 3600 * 5 // 4
        exp = int(url.split("exp=")[1].split("&")[0])
        for bad in (url.replace(f"exp={exp}", f"exp={exp + 86400}"), url.replace("sig=", "sig=0"),
                    url.replace(f"exp={exp}&", ""), url.replace(done["images"][0]["id"], "0" * 32)):
            refused = client.get(bad)
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error", bad
        state = client.app.state.studio
        state.clock = Clock(exp + 1)  # the link's time has passed
        expired = client.get(url)
        assert expired.status_code == 403 and "expired" in expired.json()["error"]["message"]
        again = client.get(f"/api/v1/images/{done['images'][0]['id']}").json()["url"]  # the page fetches a new one
        assert again != url and client.get(again).status_code == 200


def test_picture_links_last_the_configured_time(tmp_path):
    with make_client(tmp_path, start_worker=False, file_link_lifetime_s=600) as client:
        state = client.app.state.studio
        state.clock = Clock(1_000_000.0)
        exp = int(state.file_url("abc").split("exp=")[1].split("&")[0])
        assert 1_000_600 <= exp <= 1_000_750


# -- credits ------------------------------------------------------------------------------------
def test_me_shows_the_first_month_grant_before_any_charge_and_the_monthly_grant_after(studio):
    state = studio.app.state.studio
    state.clock = Clock(utc(2026, 3, 28))
    assert login(studio, "ann", "ann-pw").status_code == 200
    assert studio.get("/api/v1/me").json()["credits"] == 50
    assert studio.get("/api/v1/me").json()["credits"] == 50  # granted once, however often she looks
    state.clock = Clock(utc(2026, 4, 2))
    assert studio.get("/api/v1/me").json()["credits"] == 65
    assert studio.post("/api/v1/jobs", json={"prompt": "x", **FAST}).status_code == 202
    page = studio.get("/api/v1/credits").json()
    assert page["balance"] == 64 and page["cost_per_request"] == 1
    assert page["schedule"] == {"first_month": 50, "monthly": 15}
    assert page["packs"] == [{"id": "115", "credits": 115, "price_cents": 1500, "currency": "usd"}]
    assert [(e["amount"], e["reason"]) for e in page["history"]] == [(-1, "charge"), (15, "monthly"), (50, "monthly")]
    assert page["history"][2]["created"].startswith("2026-03-28")


def test_the_first_charge_of_a_month_gets_the_grant_too(studio):
    state = studio.app.state.studio
    state.clock = Clock(utc(2026, 5, 31))
    assert studio.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers=bearer(studio)).status_code == 202
    assert credits_of(studio, "bob") == 49
    state.clock = Clock(utc(2026, 6, 1))
    assert studio.post("/api/v1/jobs", json={"prompt": "x", **FAST}, headers=bearer(studio)).status_code == 202
    assert credits_of(studio, "bob") == 49 + 15 - 1


def test_the_schedule_and_packs_are_configurable(tmp_path):
    from reverie.gallery.credits import CreditPack

    packs = (CreditPack("small", 20, 300, "eur"), CreditPack("large", 200, 2000, "eur"))
    with make_client(tmp_path, multi_user=True, start_worker=False, first_month_credits=5, monthly_credits=0,
                     credit_packs=packs) as client:
        bob = client.app.state.studio.gallery.add_user("bob", "pw")
        headers = {"Authorization": f"Bearer {client.app.state.studio.gallery.new_api_key(bob.id)}"}
        client.app.state.studio.clock = Clock(utc(2026, 1, 15))
        page = client.get("/api/v1/credits", headers=headers).json()
        assert page["balance"] == 5 and [p["id"] for p in page["packs"]] == ["small", "large"]
        client.app.state.studio.clock = Clock(utc(2026, 2, 15))
        assert client.get("/api/v1/me", headers=headers).json()["credits"] == 5


def signed(event: dict, secret: str = SECRET) -> dict:
    body = json.dumps(event).encode()
    return {"content": body, "headers": {SIGNATURE_HEADER: body_signature(secret, body), "Content-Type": "application/json"}}


def purchases_of(client, name: str) -> list:
    gallery = client.app.state.studio.gallery
    return [e for e in gallery.ledger(gallery.user(name).id) if e.reason == "purchase"]


def test_a_signed_purchase_credits_its_pack_once(studio):
    event = {"id": "evt_1", "user": "ann", "pack": "115", "provider_field": "ignored"}
    first = studio.post("/api/v1/credits/purchases", **signed(event))
    assert first.status_code == 200, first.text
    assert first.json() == {"id": "evt_1", "user": "ann", "pack": "115", "credits": 115, "duplicate": False, "balance": 115}
    again = studio.post("/api/v1/credits/purchases", **signed(event))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert [e.amount for e in purchases_of(studio, "ann")] == [115]
    assert login(studio, "ann", "ann-pw").status_code == 200
    page = studio.get("/api/v1/credits").json()
    assert page["balance"] == 50 + 115 and "purchase" in [e["reason"] for e in page["history"]]
    # The same event id for something else is a conflict, not a second purchase.
    conflict = studio.post("/api/v1/credits/purchases", **signed(event | {"user": "bob"}))
    assert conflict.status_code == 409 and purchases_of(studio, "bob") == []


def test_a_purchase_delivered_concurrently_credits_once(studio):
    answers = []

    def deliver():
        answers.append(studio.post("/api/v1/credits/purchases", **signed({"id": "evt_race", "user": "bob", "pack": "115"})))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200] * 8
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 7
    assert [e.amount for e in purchases_of(studio, "bob")] == [115]
    # And straight at the ledger, from threads of their own.
    state = studio.app.state.studio
    bob, pack, outcomes = state.gallery.user("bob"), state.credits.pack("115"), []
    threads = [threading.Thread(target=lambda: outcomes.append(state.credits.purchase("evt_race_2", bob.id, pack, state.now())[1]))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False] + [True] * 7
    assert [e.amount for e in purchases_of(studio, "bob")] == [115, 115]
    with state.gallery.engine.connect() as db:
        counts = db.execute(text("SELECT event_id, count(*) FROM purchases GROUP BY event_id ORDER BY event_id")).all()
    assert [tuple(row) for row in counts] == [("evt_race", 1), ("evt_race_2", 1)]


def test_a_badly_signed_purchase_is_refused_and_credits_nothing(studio):
    event = {"id": "evt_2", "user": "ann", "pack": "115"}
    wrong_secret = studio.post("/api/v1/credits/purchases", **signed(event, "not-the-secret"))
    assert wrong_secret.status_code == 403 and wrong_secret.json()["error"]["type"] == "permission_error"
    altered = signed(event)
    altered["content"] = json.dumps(event | {"pack": "115", "user": "bob"}).encode()  # signed for ann
    assert studio.post("/api/v1/credits/purchases", **altered).status_code == 403
    unsigned = studio.post("/api/v1/credits/purchases", json=event)
    assert unsigned.status_code == 403 and unsigned.json()["error"]["param"] == SIGNATURE_HEADER
    assert purchases_of(studio, "ann") == [] and purchases_of(studio, "bob") == []


def test_an_unknown_pack_or_user_is_422_and_credits_nothing(studio):
    unknown_pack = studio.post("/api/v1/credits/purchases", **signed({"id": "evt_3", "user": "ann", "pack": "9000"}))
    assert unknown_pack.status_code == 422 and unknown_pack.json()["error"]["param"] == "pack"
    assert "115" in unknown_pack.json()["error"]["message"]
    unknown_user = studio.post("/api/v1/credits/purchases", **signed({"id": "evt_4", "user": "zed", "pack": "115"}))
    assert unknown_user.status_code == 422 and unknown_user.json()["error"]["param"] == "user"
    missing = studio.post("/api/v1/credits/purchases", **signed({"user": "ann", "pack": "115"}))
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "id"
    assert purchases_of(studio, "ann") == []
    # Refused events were not recorded: the same id goes through once it names a real pack.
    assert studio.post("/api/v1/credits/purchases", **signed({"id": "evt_3", "user": "ann", "pack": "115"})).json()["duplicate"] is False


def test_a_studio_without_a_webhook_secret_takes_no_purchases(tmp_path):
    with make_client(tmp_path, multi_user=True, start_worker=False) as client:
        client.app.state.studio.gallery.add_user("ann", "pw")
        refused = client.post("/api/v1/credits/purchases", **signed({"id": "evt_5", "user": "ann", "pack": "115"}))
        assert refused.status_code == 403 and "takes no purchases" in refused.json()["error"]["message"]
        assert purchases_of(client, "ann") == []


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
