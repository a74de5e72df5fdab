"""Fuzzing the three API families of a real multi-user studio with credits.

The corpus (tests/fuzz_corpus.py) holds requests every API must refuse: wrong types, NaN and
Infinity, huge numbers and strings, decompression bombs, garbage pictures and masks, PNG headers
claiming huge sizes, paths where a picture goes, unknown fields, empty and malformed bodies,
routes and methods that do not exist. Each must be a 4xx in the documented shape, queue nothing
and charge nothing, and the studio must serve a normal request afterwards.

`hypothesis` is not among the project's pinned dependencies, so the generated cases come from a
seeded generator of mutations of valid requests: those a studio accepts must be charged exactly
once, those it refuses not at all, and none may be a 5xx.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from fastapi.testclient import TestClient

import fuzz_corpus as corpus
from reverie.server.app import create_app
from reverie.server.config import ServerConfig

GRANT = 1000


@pytest.fixture
def studio(tmp_path):
    config = ServerConfig(data_dir=tmp_path / "studio", default_model="tiny-random", device="cpu", multi_user=True,
                          first_month_credits=GRANT, monthly_credits=GRANT)
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        gallery = client.app.state.studio.gallery
        user = gallery.add_user("fuzz", "pw")
        yield client, gallery, user, {"Authorization": f"Bearer {gallery.new_api_key(user.id)}"}


def send(client: TestClient, case: dict, headers: dict):
    url, method = case["path"], case["method"]
    if "json" in case:
        content = json.dumps(corpus.materialize(case["json"])).encode()  # NaN and Infinity written as Python does
        return client.request(method, url, content=content, headers=headers | {"content-type": "application/json"})
    if "files" in case:
        files = {field: (f"{name}.png", corpus.file(name), "image/png") for field, name in case["files"].items()}
        return client.request(method, url, data=case["form"], files=files, headers=headers)
    content_type = {"content-type": case["content_type"]} if case.get("content_type") else {}
    return client.request(method, url, content=case["raw"] or None, headers=headers | content_type)


def assert_documented_error(response, name: str) -> None:
    assert 400 <= response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
    body = response.json()
    assert set(body) == {"error", "detail"} and set(body["error"]) == {"message", "type", "param", "code"}, name
    assert body["error"]["code"] == response.status_code and body["detail"] == body["error"]["message"], name
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], name
    assert len(response.content) < 64 * 1024, f"{name}: the error echoes the input back"


def job_ids(gallery, user) -> set[str]:
    return {job.id for job in gallery.jobs(user.id, 100_000)}


def wait_for_jobs(gallery, user, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while any(job.status in ("queued", "running") for job in gallery.jobs(user.id, 100_000)):
        assert time.monotonic() < deadline, "jobs did not finish"
        time.sleep(0.2)


def assert_charged_exactly_for_jobs(gallery, user) -> None:
    """One charge per job, a refund per job that did not finish, nothing else besides the grant."""
    jobs = gallery.jobs(user.id, 100_000)
    reasons = [entry.reason for entry in gallery.ledger(user.id)]
    assert reasons.count("monthly") == 1 and set(reasons) <= {"monthly", "charge", "refund"}
    assert reasons.count("charge") == len(jobs)
    assert reasons.count("refund") == sum(job.status != "done" for job in jobs)
    assert gallery.balance(user.id) == GRANT - sum(job.status == "done" for job in jobs)


def assert_still_serving(client, headers) -> None:
    """A normal request in each API family succeeds."""
    job = client.post("/api/v1/jobs", json={"prompt": "a boat", "n_samples": 1, **corpus.FAST}, headers=headers).json()
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "batch_size": 1, **corpus.FAST}, headers=headers)
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    response = client.post("/v1/images/generations", json={"prompt": "a kite", "size": "64x64", "response_format": "b64_json"},
                           headers=headers)
    assert response.status_code == 200 and len(response.json()["data"]) == 1
    deadline = time.monotonic() + 120
    while client.get(f"/api/v1/jobs/{job['id']}", headers=headers).json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.get(f"/api/v1/jobs/{job['id']}", headers=headers).json()["status"] == "done"


def test_every_corpus_case_is_refused_with_a_4xx_and_costs_nothing(studio):
    client, gallery, user, headers = studio
    names = [case["name"] for case in corpus.CASES]
    assert len(names) == len(set(names)) and len(names) > 150
    for case in corpus.CASES:
        assert_documented_error(send(client, case, headers), case["name"])
    assert job_ids(gallery, user) == set()  # nothing queued ...
    assert [entry.reason for entry in gallery.ledger(user.id)] in ([], ["monthly"])  # ... nothing charged
    assert list(gallery.uploads_dir.iterdir()) == []  # refused requests leave no upload behind
    assert_still_serving(client, headers)
    wait_for_jobs(gallery, user)
    assert_charged_exactly_for_jobs(gallery, user)
    assert list(gallery.uploads_dir.iterdir()) == []


# -- generated cases ------------------------------------------------------------------------------
VALID = {  # cheap valid requests, one per route that queues work
    "/api/v1/jobs": {"prompt": "a cat", "n_samples": 1, **corpus.FAST},
    "/api/v1/dreams": {"prompt": "a cat", "generator": "pixels", "prior": "none", "iterations": 2, "cutouts": 2,
                       "width": 32, "height": 32},
    "/sdapi/v1/txt2img": {"prompt": "a cat", "batch_size": 1, **corpus.FAST},
    "/sdapi/v1/img2img": {"prompt": "a cat", "init_images": ["<b64:png>"], "denoising_strength": 0.5, **corpus.FAST},
    "/v1/images/generations": {"prompt": "a cat", "size": "64x64"},
}
NASTY = [None, True, False, 0, -1, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e308, 0.5, corpus.NAN, corpus.INF, -corpus.INF,
         "", "x" * 5000, "NaN", "Infinity", "\x00", "\U0001F600" * 50, [], [1, 2], {}, {"a": corpus.NAN}, [[[[]]]],
         "<b64:bomb_12000>", "<b64:claims_20000>", "<b64:garbage>", "<b64:gif>", *corpus.PATHS]


def mutations(seed: int, count: int):
    """`count` requests, each a valid one with one field set to a nasty value, a nasty unknown
    field added, or the whole body replaced."""
    rng = random.Random(seed)
    for _ in range(count):
        path = rng.choice(list(VALID))
        body = dict(VALID[path])
        roll = rng.random()
        if roll < 0.7:
            body[rng.choice(list(body))] = rng.choice(NASTY)
        elif roll < 0.9:
            body[rng.choice(["restore_faces", "override_settings", "tiling", "quality", "__proto__", "x" * 300])] = rng.choice(NASTY)
        else:
            body = rng.choice(NASTY)
        yield {"name": f"{path} {json.dumps(corpus.materialize(body), default=str)[:120]}", "method": "POST", "path": path,
               "json": body}


def test_generated_requests_are_never_a_5xx_and_are_charged_only_when_queued(studio):
    client, gallery, user, headers = studio
    accepted = 0
    for case in mutations(seed=16, count=60):
        before = job_ids(gallery, user)
        response = send(client, case, headers)
        assert response.status_code < 500, f"{case['name']}: {response.status_code} {response.text[:300]}"
        new = job_ids(gallery, user) - before
        if response.status_code < 300:
            accepted += 1
            assert len(new) == 1, case["name"]
        else:
            assert_documented_error(response, case["name"])
            # Refused before queuing; or (the waiting APIs) queued, failed and refunded.
            assert all(gallery.job(job_id).status == "failed" for job_id in new), case["name"]
    assert 0 < accepted < 60  # the generator makes both kinds
    wait_for_jobs(gallery, user)
    assert_charged_exactly_for_jobs(gallery, user)
    assert_still_serving(client, headers)
