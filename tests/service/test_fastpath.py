"""app/api/fastpath.py: the successful polls and downloads answered in front of FastAPI
give the routes' own answers, and every other request still goes to the routes."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from svc_helpers import make_client, make_settings, submit


def _same(a, b) -> None:
    assert a.status_code == b.status_code
    assert sorted(a.headers.items()) == sorted(b.headers.items())
    assert a.content == b.content


def _succeed(settings, job_id: str, png: bytes) -> None:
    """Run job ``job_id`` as a worker would (claim, store its image, finish)."""
    from app.core.storage.results import DiskResults
    from app.core.store import store_from_settings

    store = store_from_settings(settings)
    claim = store.claim(job_id, "generate", "test-worker")
    assert claim is not None
    DiskResults(settings.data_dir).put(job_id, "0.png", png, claim.attempt)
    result = {
        "images": [{"index": 0, "seed": 1, "url": f"/jobs/{job_id}/images/0.png"}],
        "grid_url": f"/jobs/{job_id}/grid.png",
        "format": "png",
    }
    assert store.finish(
        job_id, "generate", "succeeded", claim.attempt, result=result,
        result_attempt=claim.attempt, progress={"step": 1, "total": 1, "fraction": 1.0},
    )  # fmt: skip


def test_poll_and_download_answer_as_the_routes(isolated):
    settings, c = isolated()
    job = submit(c, {"count": 1, "seed": 3, "steps": 1})
    url = f"/jobs/{job['id']}"
    # ?wait=0 (no wait) takes the route: the same answer for a queued job.
    _same(c.get(url), c.get(url, params={"wait": 0}))
    assert c.get(url).json()["queue_position"] == 0
    # Queued: no results yet (409 from the route).
    assert c.get(f"{url}/images/0.png").status_code == 409
    _succeed(settings, job["id"], b"\x89PNG fake")
    fast, slow = c.get(url), c.get(url, params={"wait": 0})
    assert fast.json()["status"] == "succeeded"
    assert fast.json() == slow.json()
    image = c.get(f"{url}/images/0.png")
    assert image.status_code == 200 and image.content == b"\x89PNG fake"
    _same(image, c.get(f"{url}/images/0.png", params={"x": 1}))  # a query: the route
    _same(c.get(f"{url}/images/00.png"), image)  # the route's int index reads 00 as 0
    # The failures are the routes' own answers.
    assert c.get(f"{url}/images/1.png").status_code == 404
    assert c.get(f"{url}/images/0.jpg").status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert c.get(f"/jobs/{missing}").status_code == 404
    assert c.get(f"/jobs/{missing}").json() == c.get(f"/jobs/{missing}?wait=0").json()
    assert c.get(f"/jobs/{missing}/images/0.png").status_code == 404
    assert c.get("/jobs/NOT-A-UUID").status_code == 422


def test_fast_path_serves_without_the_routes(isolated, monkeypatch):
    settings, c = isolated()
    job = submit(c, {"count": 1, "seed": 4, "steps": 1})
    _succeed(settings, job["id"], b"png")
    reached: list[str] = []
    original = FastAPI.__call__

    async def counting(self, scope, receive, send):
        if scope["type"] == "http":
            reached.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", counting)
    c2 = make_client(settings)
    assert c2.get(f"/jobs/{job['id']}").status_code == 200
    assert c2.get(f"/jobs/{job['id']}/images/0.png").status_code == 200
    assert reached == []  # both answered by the fast path
    assert c2.get(f"/jobs/{job['id']}?wait=0").status_code == 200
    assert c2.get(f"/jobs/{job['id']}/images/1.png").status_code == 404
    assert reached == [f"/jobs/{job['id']}", f"/jobs/{job['id']}/images/1.png"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "bad"}, 401),
        ({"Authorization": "Bearer bad"}, 401),
        ({"Authorization": "Basic k1"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"X-API-Key": ""}, 401),
        ({"X-API-Key": "k2"}, 200),
        ({"Authorization": "Bearer k1"}, 200),
        ({"Authorization": "bearer k1"}, 200),
        ({"X-API-Key": "admin-secret"}, 200),
        ({"X-API-Key": "", "Authorization": "Bearer k2"}, 200),
        ({"X-API-Key": "bad", "Authorization": "Bearer k2"}, 401),
    ],
)
def test_api_keys_as_the_routes(redis_url, data_dir, headers, status):
    settings = make_settings(redis_url, data_dir, api_keys="k1,k2")
    c = make_client(settings)
    job = submit(c, {"count": 1, "seed": 5, "steps": 1}, {"X-API-Key": "k1"})
    _succeed(settings, job["id"], b"png")
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/images/0.png"):
        fast = c.get(path, headers=headers)
        assert fast.status_code == status, (path, headers, fast.text)
        _same(fast, c.get(path, headers=headers, params={"x": 1}))
