"""docker-compose.yml and the CPU override hold what a GPU deployment needs."""

import re

import pytest

from .compose import ROOT, MissingVariable, load

MAIN = "docker-compose.yml"
CPU = "docker/compose.cpu.yml"
# The one variable .env must set (compose refuses to start without it).
ENV = {"DDPM_REDIS_PASSWORD": "pw-from-env"}
REDIS_CLIENTS = ("api", "worker-gen", "worker-train", "flower")


@pytest.fixture(scope="module")
def gpu() -> dict:
    return load(MAIN, env=ENV)


@pytest.fixture(scope="module")
def cpu() -> dict:
    return load(MAIN, CPU, env=ENV)


def test_services_and_volumes(gpu: dict) -> None:
    assert set(gpu["services"]) == {
        "redis", "api", "worker-gen", "worker-train", "worker-train-multigpu", "flower",
        "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3",
    }  # fmt: skip
    assert set(gpu["volumes"]) == {"data", "redis-data", "redis-replica-data"}
    for name in ("api", "worker-gen", "worker-train"):
        assert "data:/data" in gpu["services"][name]["volumes"], name
    assert gpu["services"]["flower"]["profiles"] == ["monitoring"]


def test_redis_is_durable_and_never_evicts(gpu: dict) -> None:
    redis = gpu["services"]["redis"]
    cmd = " ".join(redis["command"])
    assert "--appendonly yes" in cmd
    assert "--maxmemory-policy noeviction" in cmd
    assert "redis-data:/data" in redis["volumes"]


@pytest.mark.parametrize("env", [{}, {"DDPM_REDIS_PASSWORD": ""}])
def test_compose_refuses_to_start_without_a_redis_password(env: dict) -> None:
    with pytest.raises(
        MissingVariable, match="DDPM_REDIS_PASSWORD.*set DDPM_REDIS_PASSWORD in .env"
    ):
        load(MAIN, env=env)


def test_redis_requires_the_password_and_its_healthcheck_authenticates(gpu: dict) -> None:
    redis = gpu["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--requirepass") + 1] == "pw-from-env"
    # redis-cli reads REDISCLI_AUTH: the password is not in the healthcheck's argv.
    assert redis["environment"]["REDISCLI_AUTH"] == "pw-from-env"
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "redis-cli ping" in test[1] and "PONG" in test[1]
    assert "pw-from-env" not in " ".join(test)


@pytest.mark.parametrize("name", REDIS_CLIENTS)
def test_redis_clients_get_the_password_and_a_url_without_it(gpu: dict, name: str) -> None:
    env = gpu["services"][name]["environment"]
    assert env["DDPM_REDIS_PASSWORD"] == "pw-from-env"
    assert env["DDPM_REDIS_URL"] == "redis://redis:6379/0"  # Settings.broker_url adds it


def test_flower_runs_our_celery_app_behind_required_basic_auth(gpu: dict) -> None:
    flower = gpu["services"]["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert flower["image"] == gpu["services"]["worker-gen"]["image"]  # our image
    assert flower["build"] == gpu["services"]["worker-gen"]["build"]
    script = flower["command"][-1]
    assert flower["command"][:2] == ["sh", "-c"]
    assert "exec celery -A worker.celery_app flower" in script  # not a bare --broker URL
    assert "--broker" not in script
    assert "$FLOWER_BASIC_AUTH" in script and "exit 2" in script
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == ""  # from .env; refused when empty
    assert flower["environment"]["FLOWER_UNAUTHENTICATED_API"] == "false"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_every_long_running_service_has_a_healthcheck(gpu: dict) -> None:
    for name in ("redis", "api", "worker-gen", "worker-train", "flower", "redis-replica"):
        assert gpu["services"][name]["healthcheck"]["test"], name
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        assert gpu["services"][name]["healthcheck"]["test"], name
    assert "/healthz" in " ".join(gpu["services"]["api"]["healthcheck"]["test"])
    for name, node in (("worker-gen", "gen@$HOSTNAME"), ("worker-train", "train@$HOSTNAME")):
        check = " ".join(gpu["services"][name]["healthcheck"]["test"])
        assert "inspect ping" in check and node in check, check


def test_api_waits_for_a_healthy_redis_and_publishes_8000(gpu: dict) -> None:
    api = gpu["services"]["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["ports"] == ["8000:8000"]


@pytest.mark.parametrize("name,queue", [("worker-gen", "gen"), ("worker-train", "train")])
def test_workers_reserve_a_gpu_and_serve_their_queue(gpu: dict, name: str, queue: str) -> None:
    svc = gpu["services"][name]
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device["device_ids"] == ["0"]
    assert svc["command"][-2:] == ["--queue", queue]
    assert svc["environment"]["DDPM_DEVICE"] == "cuda"


def test_stop_grace_outlasts_the_workers_soft_shutdown(gpu: dict) -> None:
    from app.core.settings import Settings

    grace = gpu["services"]["worker-gen"]["stop_grace_period"]
    m = re.fullmatch(r"(\d+)m", grace)
    assert m, grace
    assert int(m[1]) * 60 > Settings().soft_shutdown_timeout


def test_cpu_override_removes_gpu_reservations(cpu: dict) -> None:
    for name in ("worker-gen", "worker-train"):
        svc = cpu["services"][name]
        assert "deploy" not in svc
        assert svc["environment"]["DDPM_DEVICE"] == "cpu"
        assert svc["environment"]["DDPM_REDIS_URL"] == "redis://redis:6379/0"  # merged, not lost


def test_build_contexts_and_dockerfiles_exist(gpu: dict) -> None:
    for name, svc in gpu["services"].items():
        if "build" in svc:
            context = ROOT / svc["build"]["context"]
            assert context.is_dir(), name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        else:
            assert re.search(r":[0-9][\w.-]*$", svc["image"]), f"{name}: unpinned {svc['image']}"


def test_no_secrets_in_compose_files() -> None:
    for f in (MAIN, CPU, ".env.example"):
        text = (ROOT / f).read_text()
        # A name then its value, not a variable inside an interpolation (${NAME:?message}).
        pattern = r"(?<!\$\{)\b\w*(TOKEN|KEYS?|PASSWORD|SECRET|AUTH)\b[:=][ \t]*([^\s#]*)"
        for m in re.finditer(pattern, text):
            value = m.group(2).strip("\"'")
            assert value == "" or value.startswith("${"), f"{f}: {m.group(0)}"
    assert load(MAIN, env=ENV)["services"]["api"]["environment"]["DDPM_ADMIN_TOKEN"] == ""


def test_env_overrides_reach_the_services() -> None:
    project = load(
        MAIN, env=ENV | {"DDPM_PORT": "9000", "DDPM_GEN_GPU": "3", "DDPM_ADMIN_TOKEN": "t"}
    )
    assert project["services"]["api"]["ports"] == ["9000:8000"]
    assert project["services"]["api"]["environment"]["DDPM_ADMIN_TOKEN"] == "t"
    devices = project["services"]["worker-gen"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["device_ids"] == ["3"]


def test_a_multi_gpu_train_worker_behind_a_profile(gpu: dict) -> None:
    svc = gpu["services"]["worker-train-multigpu"]
    assert svc["profiles"] == ["multigpu"]
    assert svc["command"][-2:] == ["--queue", "train"]
    assert svc["environment"]["DDPM_TRAIN_DEVICES"] == "auto"
    assert svc["environment"]["DDPM_REDIS_URL"] == "redis://redis:6379/0"
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "2"
    assert "train@$HOSTNAME" in " ".join(svc["healthcheck"]["test"])
    assert svc["shm_size"]
    more = load(MAIN, env=ENV | {"DDPM_TRAIN_GPU_COUNT": "8", "DDPM_TRAIN_DEVICES": "0,1,2,3"})
    svc = more["services"]["worker-train-multigpu"]
    assert svc["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "8"
    assert svc["environment"]["DDPM_TRAIN_DEVICES"] == "0,1,2,3"


def test_the_object_store_override() -> None:
    env = ENV | {"DDPM_OBJECT_STORE": "s3://ckpts/prod", "AWS_SECRET_ACCESS_KEY": "k"}
    project = load(MAIN, "docker/compose.s3.yml", env=env)
    for name in ("api", "worker-gen", "worker-train", "worker-train-multigpu"):
        e = project["services"][name]["environment"]
        assert e["DDPM_OBJECT_STORE"] == "s3://ckpts/prod" and e["DDPM_RESULT_STORE"] == "s3"
        assert e["AWS_SECRET_ACCESS_KEY"] == "k"
        assert e["DDPM_REDIS_URL"] == "redis://redis:6379/0"  # merged, not lost
    text = (ROOT / "docker/compose.s3.yml").read_text()
    for m in re.finditer(r"\b\w*(TOKEN|KEYS?|SECRET)\w*\b:[ \t]*([^\s#]*)", text):
        assert m.group(2).startswith("${"), m.group(0)


def test_a_sentinel_profile_with_a_replica_and_three_sentinels(gpu: dict) -> None:
    services = gpu["services"]
    master = services["redis"]["command"]
    replica = services["redis-replica"]["command"]
    # The replica runs the master's flags (either may be promoted), replicating from it.
    assert replica[: len(master)] == master and replica[len(master) :] == [
        "--replicaof", "redis", "6379"
    ]  # fmt: skip
    assert master[master.index("--masterauth") + 1] == "pw-from-env"  # once demoted
    for name in ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert services[name]["profiles"] == ["sentinel"], name
    for name in ("sentinel-2", "sentinel-3"):
        assert services[name]["command"] == services["sentinel-1"]["command"]
    script = services["sentinel-1"]["command"][-1]
    assert "/etc/ddpm/sentinel.conf" in script and "--sentinel" in script
    assert "requirepass" in script and "sentinel auth-pass ddpm" in script
    assert "./docker/sentinel.conf:/etc/ddpm/sentinel.conf:ro" in services["sentinel-1"]["volumes"]
    conf = (ROOT / "docker" / "sentinel.conf").read_text()
    assert "sentinel monitor ddpm redis 6379 2" in conf
    # Off unless .env names the sentinels: the plain `redis` service stays the default.
    for name in REDIS_CLIENTS:
        env = services[name]["environment"]
        assert env["DDPM_REDIS_SENTINELS"] == "" and env["DDPM_REDIS_MASTER_NAME"] == "ddpm"
    on = load(MAIN, env=ENV | {"DDPM_REDIS_SENTINELS": "sentinel-1:26379,sentinel-2:26379"})
    assert on["services"]["api"]["environment"]["DDPM_REDIS_SENTINELS"].startswith("sentinel-1")
