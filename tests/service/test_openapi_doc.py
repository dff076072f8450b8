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


def _ops(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


def _ref(resp: dict, media: str = "application/json") -> str:
    return resp["content"][media]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_every_error_is_declared_with_the_body_the_api_sends(isolated):
    _, c = isolated()
    doc = c.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ValidationErrorBody"]["properties"]["detail"]["type"] == "array"
    assert set(schemas["FieldError"]["required"]) == {"field", "reason"}
    for path, method, op in _ops(doc):
        for status, resp in op["responses"].items():
            if status == "422":
                assert _ref(resp) == "ValidationErrorBody", (path, method)
            elif status[0] == "4" or (status == "503" and path != "/readyz"):
                assert _ref(resp) == "ErrorMessage", (path, method, status)
            if status == "429":
                assert resp["headers"]["Retry-After"]["required"] is True
    generate = doc["paths"]["/generate"]["post"]["responses"]
    assert {"202", "404", "413", "422", "429", "503"} <= set(generate)
    assert generate["202"]["headers"]["Location"]["required"] is True
    assert generate["202"]["links"]["GetJob"]["operationId"] == "get_job"
    events = doc["paths"]["/jobs/{job_id}/events"]["get"]["responses"]
    assert {"200", "400", "404", "422", "429"} <= set(events)
    assert "text/event-stream" in events["200"]["content"]
    assert events["200"]["content"]["text/event-stream"]["schema"]["properties"]["event"][
        "enum"
    ] == ["status", "progress", "done"]
    jobs = doc["paths"]["/jobs/{job_id}"]
    assert "404" in jobs["get"]["responses"]
    assert "409" in doc["paths"]["/jobs/{job_id}/cancel"]["post"]["responses"]
    images = ["image/png", "image/webp", "image/jpeg"]
    media = {
        "/jobs/{job_id}/images/{index}.{ext}": images,
        "/jobs/{job_id}/grid.{ext}": images,
        "/jobs/{job_id}/trajectory.gif": ["image/gif"],
        "/metrics": ["text/plain"],
    }
    for path, kinds in media.items():
        assert list(doc["paths"][path]["get"]["responses"]["200"]["content"]) == kinds
    ckpt = doc["paths"]["/checkpoints/{ref}"]
    assert set(ckpt) == {"get", "delete"}
    assert {"401", "403", "404", "409", "422"} <= set(ckpt["delete"]["responses"])
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


def _is_admin(path: str, method: str) -> bool:
    """The admin routes: POST /train, GET /admin/token, every DELETE."""
    return path == "/train" or path.startswith("/admin/") or method == "delete"


def test_auth_in_the_document_follows_the_settings(isolated):
    _, open_ = isolated()
    doc = open_.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"AdminToken"}
    for path, method, op in _ops(doc):
        admin = _is_admin(path, method)
        if admin:
            assert op["security"] == [{"AdminToken": []}], (path, method)
            assert {"401", "403"} <= set(op["responses"])
        else:  # no API keys configured: nobody is refused
            assert "security" not in op and "401" not in op["responses"], (path, method)

    _, keyed = isolated(api_keys="k1")
    doc = keyed.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert doc["components"]["securitySchemes"]["BearerApiKey"]["scheme"] == "bearer"
    for path, method, op in _ops(doc):
        if path in ("/healthz", "/readyz", "/metrics"):
            assert "security" not in op
        elif not _is_admin(path, method):
            assert op["security"] == [{"ApiKey": []}, {"BearerApiKey": []}], (path, method)
            assert "401" in op["responses"]

    _, no_admin = isolated(admin_token=None)
    train = no_admin.get("/openapi.json").json()["paths"]["/train"]["post"]
    assert "security" not in train and "401" not in train["responses"]


def test_limits_come_from_the_settings(isolated):
    _, c = isolated(max_count=7, max_steps=123, max_trajectory_frames=9, max_body_bytes=5000)
    doc = c.get("/openapi.json").json()
    props = doc["components"]["schemas"]["GenerateRequest"]["properties"]

    def maximum(prop: dict) -> int:
        return next(b for b in prop.get("anyOf", [prop]) if b.get("type") == "integer")["maximum"]

    assert maximum(props["count"]) == 7 and "DDPM_MAX_COUNT" in props["count"]["description"]
    assert maximum(props["steps"]) == 123 and "T" in props["steps"]["description"]
    assert maximum(props["trajectory_frames"]) == 9
    assert "5000 bytes" in doc["paths"]["/generate"]["post"]["responses"]["413"]["description"]
    # Optional headers are strings (absent when unset), never null.
    for _, _, op in _ops(doc):
        for p in op.get("parameters", []):
            if p["in"] == "header":
                assert p["schema"]["type"] == "string" and "anyOf" not in p["schema"]


def test_405_allow_lists_every_method_of_the_path(isolated):
    _, c = isolated()
    r = c.request("OPTIONS", "/checkpoints/tiny")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET"
    assert c.put("/generate").headers["allow"] == "POST"


def test_undecodable_json_is_422_not_400(isolated):
    _, c = isolated()
    r = c.post(
        "/generate", content=b'{"count": 1\xff}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body"
    r = c.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"field": "body", "reason": "invalid JSON at byte 1"}]
