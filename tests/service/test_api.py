"""API behaviour without a worker: validation, errors, auth, queue limits, cancel queued."""

from __future__ import annotations

import subprocess
import sys

import pytest
from svc_helpers import submit


def _fields(r) -> list[str]:
    return [d["field"] for d in r.json()["detail"]]


def test_api_process_never_imports_torch():
    code = (
        "import sys\n"
        "from app.api.main import create_app\n"
        "from app.core.settings import Settings\n"
        "import app.core.queue, app.cli.service\n"
        "c = create_app(Settings(redis_url='redis://127.0.0.1:1/0'))\n"
        "from fastapi.testclient import TestClient\n"
        "TestClient(c).get('/openapi.json')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 17}, "count"),
        ({"steps": 0}, "steps"),
        ({"steps": 1001}, "steps"),
        ({"seed": -1}, "seed"),
        ({"sampler": "euler"}, "sampler"),
        ({"sampler": "ddpm", "eta": 0.5}, "eta"),
        ({"sampler": "dpm++2m", "eta": 0.5}, "eta"),
        ({"sampler": "dpm++4m"}, "sampler"),
        ({"eta": 1.5}, "eta"),
        ({"label": 3}, "label"),
        ({"checkpoint": "tinycond", "label": 10}, "label"),
        ({"guidance_scale": 2.0}, "guidance_scale"),
        ({"trajectory_frames": 50, "steps": 10}, "trajectory_frames"),
        ({"checkpoint": "../etc"}, "checkpoint"),
        ({"checkpoint": "tiny@abc"}, "checkpoint"),
        ({"unknown": 1}, "unknown"),
        ({"count": "many"}, "count"),
    ],
)
def test_422_names_the_field(isolated, body, field):
    _, c = isolated()
    r = c.post("/generate", json=body)
    assert r.status_code == 422, r.text
    assert field in _fields(r)
    assert all(d["reason"] for d in r.json()["detail"])


def test_bad_json_and_404s(isolated):
    _, c = isolated()
    r = c.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert c.post("/generate", json={"checkpoint": "nope"}).status_code == 404
    assert c.post("/generate", json={"checkpoint": "tiny@9"}).status_code == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert c.get(f"/jobs/{missing}").status_code == 404
    assert c.post(f"/jobs/{missing}/cancel").status_code == 404
    assert c.get(f"/jobs/{missing}/events").status_code == 404
    assert c.get(f"/jobs/{missing}/images/0.png").status_code == 404
    assert c.get("/jobs/not-a-uuid").status_code == 422
    assert c.get("/checkpoints/nope").status_code == 404


def test_413_body_too_large(isolated):
    _, c = isolated(max_body_bytes=1024)
    r = c.post(
        "/generate", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_queued_job_document_cancel_and_409(isolated):
    _, c = isolated()
    job = submit(c, {"count": 2, "seed": 11, "steps": 5})
    doc = c.get(f"/jobs/{job['id']}").json()
    assert doc["status"] == "queued" and doc["queue_position"] == 0
    assert doc["request"]["seed"] == 11 and doc["request"]["checkpoint"] == "tiny@1"
    second = submit(c, {"count": 1})
    assert c.get(f"/jobs/{second['id']}").json()["queue_position"] == 1
    assert isinstance(second["request"]["seed"], int)  # a random seed is chosen and echoed
    r = c.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "canceled"
    assert c.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert c.get(f"/jobs/{second['id']}").json()["queue_position"] == 0
    assert c.get(f"/jobs/{job['id']}/images/0.png").status_code == 404
    with c.stream("GET", f"/jobs/{job['id']}/events") as s:
        text = "".join(s.iter_text())
    assert "event: done" in text and '"canceled"' in text


def test_429_when_queue_full(isolated):
    _, c = isolated(queue_limit=2)
    submit(c, {})
    submit(c, {})
    r = c.post("/generate", json={})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_api_keys(isolated):
    _, c = isolated(api_keys="k1,k2")
    assert c.post("/generate", json={}).status_code == 401
    assert c.post("/generate", json={}, headers={"X-API-Key": "bad"}).status_code == 401
    assert c.post("/generate", json={}, headers={"X-API-Key": "k2"}).status_code == 202
    assert c.get("/checkpoints", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert c.get("/checkpoints").status_code == 401
    assert c.get("/healthz").status_code == 200


def test_admin_auth_and_delete(isolated, tmp_path):
    from svc_helpers import make_tiny_checkpoint

    from app.core.checkpoints.registry import Registry

    s, c = isolated()
    reg = Registry(s.data_dir)
    v = reg.publish(make_tiny_checkpoint(tmp_path / "x"), "deleteme")
    assert c.delete(f"/checkpoints/deleteme@{v.version}").status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert c.delete(f"/checkpoints/deleteme@{v.version}", headers=bad).status_code == 403
    assert c.post("/train", json={"name": "x"}, headers=bad).status_code == 403
    ok = {"Authorization": "Bearer admin-secret"}
    assert c.get("/checkpoints/deleteme").json()["latest"] == v.version
    assert c.delete("/checkpoints/deleteme", headers=ok).status_code == 422
    assert c.delete(f"/checkpoints/deleteme@{v.version}", headers=ok).status_code == 204
    assert c.delete(f"/checkpoints/deleteme@{v.version}", headers=ok).status_code == 404
    assert c.get("/checkpoints/deleteme").status_code == 404
    _, off = isolated(admin_token=None)
    assert off.post("/train", json={"name": "x"}, headers=ok).status_code == 403
    # GET /admin/token only says whether the token is right (the web page asks it).
    assert c.get("/admin/token").status_code == 401
    wrong = c.get("/admin/token", headers=bad)
    assert wrong.status_code == 403 and wrong.json() == {"detail": "invalid admin token"}
    right = c.get("/admin/token", headers=ok)
    assert right.status_code == 204 and right.content == b""
    assert off.get("/admin/token", headers=ok).status_code == 403


def test_checkpoints_listing(isolated):
    _, c = isolated()
    names = {x["name"]: x for x in c.get("/checkpoints").json()}
    assert {"tiny", "tinycond"} <= set(names)
    v = names["tinycond"]["versions"][0]
    assert v["config"]["num_classes"] == 10 and v["meta"]["dataset"] == "random"


def test_readyz_without_worker_and_503_without_redis(isolated):
    _, c = isolated()
    r = c.get("/readyz")
    assert r.status_code == 503 and "worker" in r.json()["reason"]
    _, down = isolated(redis_url="redis://127.0.0.1:1/0")
    r = down.get("/readyz")
    assert r.status_code == 503 and "redis" in r.json()["reason"]
    assert down.post("/generate", json={}).status_code == 503
    assert down.get("/jobs/00000000-0000-4000-8000-000000000000").status_code == 503
    assert down.get("/healthz").status_code == 200


def test_openapi_has_examples(isolated):
    _, c = isolated()
    spec = c.get("/openapi.json").json()
    assert "/generate" in spec["paths"]
    assert spec["components"]["schemas"]["GenerateRequest"].get("examples")
