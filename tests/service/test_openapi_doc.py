"""The HTTP contract without a worker: body limits and the OpenAPI document."""

from __future__ import annotations


def test_413_for_an_oversized_chunked_body(isolated):
    _, c = isolated(max_body_bytes=1024)

    def chunks():
        for _ in range(10):
            yield b" " * 500

    r = c.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert "1024" in r.json()["detail"]
    # A small chunked body still reaches the route (and its validation).
    r = c.post(
        "/generate", content=iter([b'{"count": 0}']), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "count"
