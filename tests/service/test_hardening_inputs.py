"""Bad input never reaches the worker: finite floats only, bounded training networks, invalid
checkpoint configs refused at POST /generate with a 4xx, no server path served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from svc_helpers import make_client, make_settings, make_tiny_checkpoint

from app.core.checkpoints.registry import (
    NAME_RE,
    VERSION_RE,
    InvalidName,
    Registry,
    parse_ref,
    scrub_paths,
)
from app.core.errors import InvalidInput
from app.core.jobs.validate import validate_train_options

AUTH = {"Authorization": "Bearer admin-secret"}


def _detail(r) -> dict[str, str]:
    return {d["field"]: d["reason"] for d in r.json()["detail"]}


def _train(client, options: dict | str, **headers):
    if isinstance(options, str):  # raw JSON text: NaN, Infinity and 1e999 are not JSON values
        body = '{"name": "m", "options": ' + options + "}"
        return client.post(
            "/train", content=body, headers=AUTH | {"Content-Type": "application/json"}
        )
    return client.post("/train", json={"name": "m", "options": options}, headers=AUTH)


@pytest.mark.parametrize(
    "options,field",
    [
        ('{"weight_decay": 1e999}', "options.weight_decay"),
        ('{"grad_clip": Infinity}', "options.grad_clip"),
        ('{"adam_betas": [NaN, 0.9]}', "options.adam_betas.0"),
        ('{"lr": -Infinity}', "options.lr"),
        ('{"unet_overrides": {"dropout": NaN}}', "options.unet_overrides.dropout"),
        ({"weight_decay": 5.0}, "options.weight_decay"),
        ({"adam_betas": [0.9, 1.0]}, "options.adam_betas.1"),
        ({"grad_clip": 1e300}, "options.grad_clip"),
        ({"warmup": 10**12}, "options.warmup"),
        ({"p_uncond": 1.0}, "options.p_uncond"),
        ({"timesteps": 100, "default_steps": 200}, "options.default_steps"),
        ({"unet_overrides": {"base_channels": 1000000000}}, "options.unet_overrides.base_channels"),
        ({"unet_overrides": {"base_channels": "64"}}, "options.unet_overrides.base_channels"),
        ({"unet_overrides": {"base_channels": True}}, "options.unet_overrides.base_channels"),
        ({"unet_overrides": {"channel_mult": []}}, "options.unet_overrides.channel_mult"),
        ({"unet_overrides": {"num_res_blocks": 2.5}}, "options.unet_overrides.num_res_blocks"),
        ({"unet_overrides": {"norm_groups": 7}}, "options.unet_overrides.norm_groups"),
        ({"unet_overrides": {"image_size": 64}}, "options.unet_overrides.image_size"),
        ({"unet_overrides": {"num_classes": 3}}, "options.unet_overrides.num_classes"),
        ({"unet_overrides": {"widht": 3}}, "options.unet_overrides.widht"),
        ({"preset": "ddpm-cifar10", "image_size": 20}, "options.image_size"),
    ],
)
def test_bad_training_options_are_422_naming_the_field(isolated, options, field: str) -> None:
    _, client = isolated()
    with client:
        r = _train(client, options)
    assert r.status_code == 422, r.text
    assert field in _detail(r), r.text
    assert _detail(r)[field]


def test_training_networks_are_bounded_by_the_size_settings(isolated) -> None:
    _, client = isolated()
    with client:
        r = _train(client, {"preset": "ddpm-cifar10", "unet_overrides": {"base_channels": 1024}})
        assert r.status_code == 422, r.text
        reason = _detail(r)["options.unet_overrides"]
        assert "parameters, above the limit of 200,000,000" in reason
        assert "DDPM_MAX_MODEL_PARAMS" in reason
        # 512x512 with attention at 16x16 and below: ~18 GiB of activations per image.
        r = _train(client, {"preset": "ddpm-cifar10", "image_size": 512, "channels": 3})
        assert r.status_code == 422, r.text
        assert "DDPM_MAX_ACTIVATION_BYTES" in _detail(r)["options.image_size"]
    _, client = isolated(max_model_params=600_000)  # one-channel tiny: 651,041
    with client:
        assert "options.image_size" in _detail(_train(client, {"steps": 5}))
        r = _train(client, {"steps": 5, "unet_overrides": {"base_channels": 16}})
        assert r.status_code == 202, r.text


def test_valid_overrides_are_queued_checked(isolated) -> None:
    _, client = isolated()
    with client:
        r = _train(client, {"steps": 5, "unet_overrides": {"channel_mult": [1, 2], "dropout": 0}})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["options"] == {
        "steps": 5,
        "unet_overrides": {"channel_mult": [1, 2], "dropout": 0.0},
    }


def test_train_options_revalidate_from_a_plain_dict(settings) -> None:
    """What the worker reads back from Redis goes through the same checks."""
    opts = validate_train_options({"steps": 5, "unet_overrides": {"base_channels": 16}}, settings)
    assert opts.steps == 5 and opts.unet_overrides == {"base_channels": 16}
    for bad, field in [
        ({"weight_decay": float("inf")}, "options.weight_decay"),
        ({"adam_betas": [float("nan"), 0.9]}, "options.adam_betas.0"),
        ({"unet_overrides": {"base_channels": 10**9}}, "options.unet_overrides.base_channels"),
        ({"unet_overrides": {"base_channels": 2048}}, "options.unet_overrides"),
        ({"dataset": "../../etc"}, "options.dataset"),
        ({"dataset": "nosuchfolder"}, "options.dataset"),
        ({"out": "/tmp/x"}, "options.out"),
        ("not a dict", "options"),
    ]:
        with pytest.raises(InvalidInput) as info:
            validate_train_options(bad, settings)  # type: ignore[arg-type]
        assert info.value.status == 422 and info.value.field == field, info.value.message


@pytest.mark.parametrize(
    "body,field",
    [
        ('{"eta": NaN}', "eta"),
        ('{"guidance_scale": Infinity, "label": 1}', "guidance_scale"),
        ('{"eta": 1e999}', "eta"),
    ],
)
def test_generate_floats_must_be_finite(isolated, body: str, field: str) -> None:
    _, client = isolated()
    with client:
        r = client.post("/generate", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in _detail(r)


# -- planted checkpoints -----------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    """A DATA_DIR whose checkpoint ``good`` is valid and whose other checkpoints have a
    config.json edited by hand; (settings, registry, source checkpoint)."""
    data = tmp_path_factory.mktemp("planted")
    src = make_tiny_checkpoint(tmp_path_factory.mktemp("src") / "tiny", num_classes=10)
    reg = Registry(data)
    reg.publish(src, "good")
    return make_settings(redis_url, data, default_checkpoint="good"), reg, src


def _plant(reg: Registry, src: Path, name: str, mutate) -> None:
    dest = reg.root / name / "1"
    shutil.rmtree(dest.parent, ignore_errors=True)
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    mutate(cfg)
    (dest / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.update(default_steps="abc"), "default_steps must be an integer, got 'abc'"),
        (lambda d: d.update(num_classes="10"), "num_classes must equal"),
        (lambda d: d["unet"].update(num_classes="10"), "unet.num_classes must be an integer"),
        (lambda d: d.update(schedule="x"), "schedule must be an object"),
        (lambda d: d.update(schedule={"kind": "nope"}), "schedule.kind must be one of"),
        (lambda d: d.update(schedule={"num_train_timesteps": "1000"}), "num_train_timesteps"),
        (lambda d: d.update(default_sampler=7), "default_sampler must be one of"),
        (lambda d: d.update(default_sampler="euler"), "default_sampler must be one of"),
        (lambda d: d.update(prediction_type="v"), "prediction_type must be one of"),
        (lambda d: d.update(default_eta="0.5"), "default_eta must be a number"),
        (lambda d: d.update(default_guidance_scale=[2]), "default_guidance_scale must be a"),
        (lambda d: d.update(unet=None), "unet must be an object"),
        (lambda d: d.update(format_version=2), "format_version"),
        (lambda d: d.clear(), "format_version"),
        (lambda d: d["unet"].update(base_channels=65536), "unet.base_channels must be at most"),
        (
            lambda d: d["unet"].update(base_channels=4096, channel_mult=[1, 2], norm_groups=8),
            "parameters, above the limit of 200,000,000 (DDPM_MAX_MODEL_PARAMS)",
        ),
        (
            lambda d: d["unet"].update(image_size=4096) or d.update(image_size=4096),
            "GiB of activations per image",
        ),
    ],
)
def test_invalid_checkpoint_configs_are_422_at_generate(planted, mutate, message: str) -> None:
    settings, reg, src = planted
    _plant(reg, src, "bad", mutate)
    with make_client(settings) as client:
        for body in ({"checkpoint": "bad"}, {"checkpoint": "bad@1", "label": 1}):
            r = client.post("/generate", json=body)
            assert r.status_code == 422, r.text
            reason = _detail(r)["checkpoint"]
            assert message in reason and "bad@1" in reason
            assert str(reg.root) not in r.text and "/config.json" not in r.text
        # The registry still lists it (with its config as stored), and others still work.
        assert client.get("/checkpoints/bad").status_code == 200
        assert client.post("/generate", json={"checkpoint": "good"}).status_code != 422
        assert client.post("/generate", json={"checkpoint": "missing"}).status_code == 404


def test_unreadable_config_is_422_too(planted) -> None:
    settings, reg, src = planted
    _plant(reg, src, "garbled", lambda d: None)
    (reg.root / "garbled" / "1" / "config.json").write_text("[" * 100_000)
    with make_client(settings) as client:
        r = client.post("/generate", json={"checkpoint": "garbled"})
    assert r.status_code == 422 and "config.json: " in _detail(r)["checkpoint"], r.text


# -- names and paths ---------------------------------------------------------------------


def test_names_and_versions_must_match_in_full() -> None:
    for bad in ("keep\n", "keep\n@1", "keep@1\n", "keep@builtin\n"):
        with pytest.raises(InvalidName):
            parse_ref(bad)
    assert not NAME_RE.fullmatch("keep\n") and not VERSION_RE.fullmatch("1\n")
    assert parse_ref("keep@1") == ("keep", "1")


def test_served_metadata_has_no_absolute_paths(planted) -> None:
    settings, reg, src = planted
    _plant(reg, src, "leaky", lambda d: None)
    meta_file = reg.root / "leaky" / "1" / "meta.json"
    meta = json.loads(meta_file.read_text()) | {
        "train_config": {"out": "/srv/ddpm/data/runs/abc123", "dataset": "/srv/ddpm/ds/cats"},
        "command": "ddpm train --dataset /srv/ddpm/ds/cats --out /srv/ddpm/runs/x --steps 5",
        "checkpoint": "/work/main/ddpm_core/builtin/digits",
        "windows": "C:\\Users\\me\\ck",
        "route": "POST /train (abc)",
        "rate": "12 img/s, 1/2 done, see https://example.org/a/b",
    }
    meta_file.write_text(json.dumps(meta))
    with make_client(settings) as client:
        listed = client.get("/checkpoints").json()
        served = client.get("/checkpoints/leaky").json()["versions"][0]["meta"]
        builtin = client.get("/checkpoints/digits").json()
    assert served["train_config"] == {"out": "abc123", "dataset": "cats"}
    assert served["command"] == "ddpm train --dataset cats --out x --steps 5"
    assert served["checkpoint"] == "digits" and served["windows"] == "ck"
    assert served["route"] == "POST /train (abc)"
    assert served["rate"] == "12 img/s, 1/2 done, see https://example.org/a/b"
    # The built-in's meta.json records /tmp/builtin/digits and /work/main/...: scrubbed.
    text = json.dumps([listed, builtin])
    for leak in ("/tmp/", "/work/", "/srv/", str(settings.data_dir)):
        assert leak not in text


def test_scrub_paths_keeps_what_is_not_a_path() -> None:
    assert scrub_paths({"a": ["/x/y/z", 3, None, "no/abs"], "b": {"c": "~/d/e"}}) == {
        "a": ["z", 3, None, "no/abs"],
        "b": {"c": "e"},
    }


def test_size_settings_default_to_the_library_limits() -> None:
    from app.core.settings import Settings
    from ddpm_core.config.size import DEFAULT_MAX_ACTIVATION_BYTES, DEFAULT_MAX_PARAMS

    fields = Settings.model_fields
    assert fields["max_model_params"].default == DEFAULT_MAX_PARAMS
    assert fields["max_activation_bytes"].default == DEFAULT_MAX_ACTIVATION_BYTES
    limits = Settings(max_model_params=5, max_activation_bytes=6).model_limits
    assert limits == {"max_params": 5, "max_activation_bytes": 6}


def test_engine_loads_checkpoints_within_the_size_settings(tmp_path) -> None:
    from app.core.settings import Settings
    from worker.generate.engine import Engine, GenSpec

    ck = str(make_tiny_checkpoint(tmp_path / "ck"))  # 651,041 parameters
    limits = Settings(max_model_params=600_000).model_limits  # what the runtime passes
    engine = Engine("cpu", threads=1, model_limits=limits).start()
    try:
        job = engine.submit(GenSpec("j", ck, "ck", count=1, seed=0, steps=2))
        assert job.wait(60)
    finally:
        engine.stop()
    assert job.status == "failed" and job.error.type == "CheckpointError"
    assert "651,041 parameters, above the limit of 600,000" in job.error.message
