"""docker-compose.yml (and the model-server override) against the Compose Specification and the code:
services, variables, secrets, commands, ports, volumes; the TF Serving configuration it mounts."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from services.config import Settings
from tests.conftest import ROOT
from tests.deploy_files import (
    APP_SERVICES, BATCHING_FIELDS, COMPOSE_FILE, ENV_EXAMPLE, EXPORT_ONCE,
    GATEWAY_PORT, GRPC_PORT, K8S_DIR, LONG_RUNNING, MODEL_SERVER_OVERRIDE,
    MissingVariable, REDIS_PORT, REST_PORT, SETTINGS_VARS, TFSERVING_DIR,
    TF_SERVING_FLAGS, VSEARCH_VAR, batching_parameters, check_vsearch_command, compose,
    compose_raw, dockerignored, environment, flag_values, host_port,
    interpolate, interpolated_names, model_server_config, mount_for, mounts,
    option_value, read_env_file, schema_errors, service,
)


def test_compose_file_is_valid_against_the_compose_specification():
    assert schema_errors(compose_raw()) == []
    assert schema_errors(compose()) == []


def test_model_server_override_is_valid_against_the_compose_specification():
    assert schema_errors(yaml.safe_load(MODEL_SERVER_OVERRIDE.read_text())) == []


def test_the_schema_check_catches_a_misspelled_key():
    broken = json.loads(json.dumps(compose()))
    broken["services"]["worker"]["helthcheck"] = broken["services"]["worker"].pop("healthcheck")
    assert any("helthcheck" in e for e in schema_errors(broken))


def test_services_profiles_and_restart_policies():
    services = compose()["services"]
    assert set(services) == {"redis", "model-export", "tfserving", "worker", "indexer", "gateway", "flower"}
    assert services["flower"]["profiles"] == ["flower"]
    assert all("profiles" not in s for n, s in services.items() if n != "flower")
    assert services["model-export"]["restart"] == "no"
    for name in LONG_RUNNING:
        assert services[name]["restart"] in ("unless-stopped", "always"), name
        assert services[name]["healthcheck"]["test"], name


def test_images_tensorflow_serving_official_and_ours_built_from_deploy():
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", service("tfserving")["image"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    expected = {"model-export": ("deploy/model.Dockerfile", "model"), "flower": ("deploy/app.Dockerfile", "flower"),
                **{n: ("deploy/app.Dockerfile", "app") for n in APP_SERVICES}}
    for name, (dockerfile, target) in expected.items():
        svc = service(name)
        assert svc["build"]["context"] == "."
        assert (svc["build"]["dockerfile"], svc["build"]["target"]) == (dockerfile, target), name
        assert svc["image"].endswith(f":{version}"), f"{name}: tag the image with the project version"


def test_depends_on_conditions():
    services = compose()["services"]
    assert services["tfserving"]["depends_on"] == {"model-export": {"condition": "service_completed_successfully"}}
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["tfserving"]["condition"] == "service_healthy", name
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name, svc in services.items():  # a service_healthy dependency must have a healthcheck
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"


def test_worker_scales_and_index_builder_is_the_single_index_consumer():
    worker, indexer = service("worker"), service("indexer")
    for svc in (worker, indexer):
        assert "container_name" not in svc and "ports" not in svc and "hostname" not in svc
    assert option_value(worker["command"], "-Q", "--queues") == "ingest"
    assert int(option_value(worker["command"], "-c", "--concurrency")) >= 1
    assert option_value(indexer["command"], "-Q", "--queues") == "index"
    assert option_value(indexer["command"], "-c", "--concurrency") == "1"
    from services.broker import INDEX_QUEUE, INGEST_QUEUE
    assert (INGEST_QUEUE, INDEX_QUEUE) == ("ingest", "index")
    # The healthcheck pings the node name the command gives the worker.
    for svc in (worker, indexer):
        node = option_value(svc["command"], "-n", "--hostname")
        assert node.endswith("@%h")
        assert f"-d {node.split('@')[0]}@$HOSTNAME" in svc["healthcheck"]["test"][1]


def test_every_vsearch_variable_is_a_setting():
    files = [COMPOSE_FILE, MODEL_SERVER_OVERRIDE, ENV_EXAMPLE, *K8S_DIR.glob("*.yaml"),
             *(ROOT / "deploy").glob("*.Dockerfile"), EXPORT_ONCE, ROOT / "deploy" / "README.md",
             ROOT / "docs" / "scaling.md"]
    for path in files:
        unknown = set(VSEARCH_VAR.findall(path.read_text())) - SETTINGS_VARS
        assert not unknown, f"{path.relative_to(ROOT)} names variables no Setting reads: {sorted(unknown)}"


@pytest.mark.parametrize("name", ["model-export", *APP_SERVICES, "flower"])
def test_service_environment_parses_as_settings(name):
    env = environment(service(name))
    assert env, name
    Settings.from_env(env)  # raises on a value of the wrong type


def test_app_services_share_one_configuration():
    shared = {k: v for k, v in environment(service("worker")).items()}
    for name in ("indexer", "gateway", "flower"):
        env = environment(service(name))
        assert {k: env[k] for k in shared} == shared, name
    settings = Settings.from_env(shared)
    assert settings.model_name == "effnet_lite0"
    assert str(settings.model_base) == environment(service("model-export"))["VSEARCH_MODEL_BASE"]


def test_no_secret_in_the_compose_file_and_env_example_lists_what_it_needs():
    raw = compose_raw()
    for name, svc in raw["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if re.search(r"(TOKEN|PASSWORD|SECRET|_KEY)$", var):
                assert re.fullmatch(r"\$\{[^}]+\}", str(value)), f"{name}.{var} must come from .env"
    example = read_env_file(ENV_EXAMPLE)
    assert example["VSEARCH_API_TOKEN"] == "", ".env.example must not carry a token"
    names = interpolated_names(raw)
    assert set(example) == set(names), "every interpolated variable in .env.example and no other"
    with pytest.raises(MissingVariable, match="VSEARCH_API_TOKEN"):
        interpolate(raw, read_env_file(ENV_EXAMPLE))  # compose refuses to run without a token
    assert environment(service("gateway"))["VSEARCH_API_TOKEN"] == "test-token"
    for name in ("worker", "indexer", "flower"):
        assert "VSEARCH_API_TOKEN" not in environment(service(name))


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context():
    for path in (".env", ".venv/bin/python", ".git/config", "var/models/x", "tests/test_deploy.py"):
        assert dockerignored(path), path
    assert not dockerignored(".env.example")


@pytest.mark.parametrize("name", ["model-export", "worker", "indexer"])
def test_vsearch_commands_and_their_options_exist(name):
    command = service(name)["command"]
    if command[0] == "export-once":
        command = command[1:]
    check_vsearch_command(command)


def test_model_server_override_command_and_options_exist():
    override = yaml.safe_load(MODEL_SERVER_OVERRIDE.read_text())["services"]["tfserving"]
    command = override["command"]
    check_vsearch_command(command)
    assert option_value(command, "--port") == str(GRPC_PORT)
    assert mount_for(option_value(command, "--model-base"), mounts(service("tfserving"))).source == "models"
    batch_size = Settings.from_env(environment(service("worker"))).model_batch_size
    assert int(option_value(command, "--max-batch")) >= batch_size


def test_model_export_writes_into_the_models_volume_that_tfserving_reads():
    export, tfs = service("model-export"), service("tfserving")
    command = export["command"]
    assert command[:3] == ["export-once", "vsearch", "export-model"]
    assert "--overwrite" not in command
    out, model = option_value(command, "--out"), option_value(command, "--model")
    assert out == environment(export)["VSEARCH_MODEL_BASE"]
    assert model == environment(service("worker"))["VSEARCH_MODEL_NAME"]
    assert mounts(export)[out].source == "models" and not mounts(export)[out].read_only
    config = model_server_config()
    (entry,) = config.model_config_list.config
    assert entry.name == model
    holder = mount_for(entry.base_path, mounts(tfs))
    assert holder.source == "models" and holder.read_only
    assert PurePosixPath(entry.base_path) == PurePosixPath(holder.target) / model


def test_tfserving_ports_flags_and_config_files():
    tfs = service("tfserving")
    assert tfs["entrypoint"] == ["tensorflow_model_server"]
    flags = flag_values(tfs["command"])
    assert set(flags) <= TF_SERVING_FLAGS, set(flags) - TF_SERVING_FLAGS
    assert (int(flags["port"]), int(flags["rest_api_port"])) == (GRPC_PORT, REST_PORT)
    assert {int(p) for p in tfs["expose"]} == {GRPC_PORT, REST_PORT}
    host, port = host_port(environment(service("worker"))["VSEARCH_MODEL_SERVER"])
    assert (host, port) == ("tfserving", GRPC_PORT)
    assert flags["enable_batching"] == "true"
    for flag, file in (("model_config_file", "models.config"), ("batching_parameters_file", "batching.config")):
        holder = mount_for(flags[flag], mounts(tfs))
        assert holder and holder.read_only, flag
        assert (ROOT / holder.source / PurePosixPath(flags[flag]).relative_to(holder.target)) == TFSERVING_DIR / file
    assert int(flags["file_system_poll_wait_seconds"]) > 0
    assert f":{REST_PORT}" not in json.dumps(tfs.get("ports", []))  # internal only
    probe = tfs["healthcheck"]["test"]
    assert probe[:3] == ["CMD", "bash", "-c"]
    assert f"/dev/tcp/127.0.0.1/{REST_PORT}" in probe[3] and "/v1/models/effnet_lite0" in probe[3]


def test_redis_port_persistence_and_address():
    redis_svc = service("redis")
    command = redis_svc["command"]
    assert command[0] == "redis-server"
    assert option_value(command, "--port") in (None, str(REDIS_PORT))
    assert option_value(command, "--appendonly") == "yes"
    assert option_value(command, "--maxmemory-policy") == "noeviction"
    data_dir = option_value(command, "--dir")
    assert mounts(redis_svc)[data_dir].source == "redis-data"
    url = urlsplit(environment(service("worker"))["VSEARCH_REDIS_URL"])
    assert (url.scheme, url.hostname, url.port or REDIS_PORT) == ("redis", "redis", REDIS_PORT)
    assert "ports" not in redis_svc


def test_gateway_command_port_and_healthcheck():
    gateway = service("gateway")
    command = gateway["command"]
    assert command[0] == "gunicorn" and command[-1] == "gateway:create_app()"
    assert option_value(command, "--bind", "-b") == f"0.0.0.0:{GATEWAY_PORT}"
    (published,) = gateway["ports"]
    assert published.rsplit(":", 1)[1] == str(GATEWAY_PORT)
    assert published.startswith("127.0.0.1:"), "published on the loopback unless .env says otherwise"
    assert f"http://127.0.0.1:{GATEWAY_PORT}/healthz" in " ".join(gateway["healthcheck"]["test"])


def test_volumes_mount_where_the_variables_point():
    declared = set(compose()["volumes"])
    for name in APP_SERVICES:
        svc = service(name)
        env, svc_mounts = environment(svc), mounts(svc)
        data = svc_mounts.get(env["VSEARCH_DATA_DIR"])
        assert data and data.source == "data" and not data.read_only, f"{name}: data volume at VSEARCH_DATA_DIR"
        for root in env["VSEARCH_ALLOWED_ROOTS"].split(":"):
            if name != "indexer":  # directory jobs are read by the gateway and the ingest workers
                assert mount_for(root, svc_mounts), f"{name}: nothing mounted at allowed root {root}"
    for name, svc in compose()["services"].items():
        for m in mounts(svc).values():
            if m.kind == "volume":
                assert m.source in declared, f"{name}: volume {m.source} is not declared"
            else:
                assert m.read_only, f"{name}: bind mounts are read-only"


def test_models_config_serves_every_version_so_clients_can_pin_theirs():
    (entry,) = model_server_config().model_config_list.config
    assert entry.model_platform == "tensorflow"
    policy = entry.model_version_policy
    assert policy.HasField("all") or (policy.HasField("latest") and policy.latest.num_versions >= 2)


def test_batching_parameters_fit_the_clients_batches():
    params = batching_parameters()
    assert set(params) <= BATCHING_FIELDS and set(params) == BATCHING_FIELDS
    settings = Settings.from_env(environment(service("worker")))
    assert params["max_batch_size"] >= max(settings.model_batch_size, settings.ingest_chunk)
    assert 0 < params["batch_timeout_micros"] <= 10_000
    assert params["num_batch_threads"] >= 1 and params["max_enqueued_batches"] >= 1
