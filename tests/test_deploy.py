"""The deployment files, checked against the specifications and the code, and run where they can be.

No Docker engine exists here, so: docker-compose.yml is validated against the Compose Specification's
JSON schema (the copy check-jsonschema ships), the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate, strict), and every service's command, port, volume and variable is
compared with the code (`vsearch ... --help`, services.config.Settings, the TF Serving config).
The container commands that need no other service run for real outside Docker: the one-shot model
export (twice), redis-server, gunicorn with the gateway, a worker answering its healthcheck, and
the TF Serving and model-server healthchecks against stand-ins.
"""
from __future__ import annotations

import fnmatch
import functools
import http.server
import importlib.resources
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from packaging.requirements import Requirement

from services.config import PREFIX, Settings
from tests.conftest import ROOT, QuietHandler, free_port, stop_process

COMPOSE_FILE = ROOT / "docker-compose.yml"
MODEL_SERVER_OVERRIDE = ROOT / "deploy" / "compose.model-server.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
TFSERVING_DIR = ROOT / "deploy" / "tfserving"
K8S_DIR = ROOT / "deploy" / "k8s"
EXPORT_ONCE = ROOT / "deploy" / "export-once.sh"
# The oldest Kubernetes release the manifests are written for.
K8S_VERSION = "1.30"

SETTINGS_VARS = {PREFIX + f.name.upper() for f in fields(Settings)}
VSEARCH_VAR = re.compile(r"\bVSEARCH_[A-Z0-9_]+\b")
APP_SERVICES = ("worker", "indexer", "gateway")
LONG_RUNNING = ("redis", "tfserving", "worker", "indexer", "gateway", "flower")
REDIS_PORT, GRPC_PORT, REST_PORT, GATEWAY_PORT = 6379, 8500, 8501, 8000
# Flags of tensorflow_model_server (tensorflow_serving/model_servers/main.cc).
TF_SERVING_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "enable_batching", "batching_parameters_file", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "file_system_poll_wait_seconds", "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "grpc_channel_arguments", "grpc_max_threads",
    "enable_model_warmup", "monitoring_config_file", "allow_version_labels_for_unavailable_models",
}
# Fields of tensorflow.serving.BatchingParameters (session_bundle_config.proto), wrapped int64 values.
BATCHING_FIELDS = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"}
COMPILERS = re.compile(r"build-essential|\bgcc\b|\bg\+\+|\bclang\b|\bcmake\b|\bmake\b")
HEAVY_PACKAGES = re.compile(r"^(tensorflow|tf-|torch|keras|tensorboard|jax|nvidia-)", re.I)


# ---------------------------------------------------------------- compose loading and interpolation

class MissingVariable(Exception):
    pass


_INTERPOLATION = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_EXPRESSION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.S)


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}; raises MissingVariable like compose."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group(1):
            return "$"
        if m.group(3):
            return env.get(m.group(3), "")
        parsed = _EXPRESSION.fullmatch(m.group(2))
        assert parsed, f"unsupported interpolation ${{{m.group(2)}}}"
        name, op, arg = parsed.groups()
        current = env.get(name)
        if op is None:
            return current or ""
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if op in (":?", "?"):
            if (op == ":?" and not current) or current is None:
                raise MissingVariable(f"{name}: {arg}")
            return current
        if op == ":+":
            return arg if current else ""
        return arg if current is not None else ""

    return _INTERPOLATION.sub(substitute, value)


def interpolated_names(value) -> dict[str, bool]:
    """Variables that a compose document interpolates -> whether each has a default."""
    found: dict[str, bool] = {}
    if isinstance(value, dict):
        for v in value.values():
            for k, d in interpolated_names(v).items():
                found[k] = found.get(k, True) and d
    elif isinstance(value, list):
        for v in value:
            for k, d in interpolated_names(v).items():
                found[k] = found.get(k, True) and d
    elif isinstance(value, str):
        for m in _INTERPOLATION.finditer(value):
            if m.group(3):
                found[m.group(3)] = False
            elif m.group(2):
                name, op, _ = _EXPRESSION.fullmatch(m.group(2)).groups()
                found[name] = found.get(name, True) and op in (":-", "-")
    return found


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            env[name.strip()] = value.strip()
    return env


TEST_ENV = {**read_env_file(ENV_EXAMPLE), "VSEARCH_API_TOKEN": "test-token"}


@functools.cache
def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@functools.cache
def compose() -> dict:
    return interpolate(compose_raw(), TEST_ENV)


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool
    kind: str  # volume | bind


def mounts(svc: dict) -> dict[str, Mount]:
    """The service's mounts by container path, short and long syntax."""
    found = {}
    for entry in svc.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target, kind = entry["source"], entry["target"], entry["type"]
            read_only = entry.get("read_only", False)
        found[target] = Mount(source, target, read_only, kind)
    return found


def mount_for(path: str, svc_mounts: dict[str, Mount]) -> Mount | None:
    """The mount that holds `path` in the container, the deepest one."""
    best = None
    for target, m in svc_mounts.items():
        if PurePosixPath(path) == PurePosixPath(target) or PurePosixPath(target) in PurePosixPath(path).parents:
            if best is None or len(target) > len(best.target):
                best = m
    return best


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def flag_values(args: list[str]) -> dict[str, str]:
    """--name=value flags (TF Serving style) -> {name: value}."""
    values = {}
    for a in args:
        assert a.startswith("--") and "=" in a, f"TF Serving flags are --name=value, not {a!r}"
        name, value = a[2:].split("=", 1)
        values[name] = value
    return values


def option_value(command: list[str], *names: str) -> str | None:
    for i, token in enumerate(command):
        for name in names:
            if token == name and i + 1 < len(command):
                return command[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def compose_schema() -> dict:
    # The official schema (github.com/compose-spec/compose-spec, schema/compose-spec.json, Apache-2.0),
    # as vendored by check-jsonschema for its `check-compose-spec` hook.
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(ref.read_text())


def schema_errors(document: dict) -> list[str]:
    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# ---------------------------------------------------------------- the CLI as the commands meet it

@functools.cache
def help_text(*command: str) -> str:
    result = subprocess.run([sys.executable, "-m", *command, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


def help_options(text: str) -> set[str]:
    """Option names from a click help page: '  -Q, --queues TEXT   ...' -> {'-Q', '--queues'}."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"\s+(-\S.*?)(?:\s{2,}|$)", line)
        if m:
            for part in m.group(1).split(", "):
                names.add(part.split()[0].split("=")[0])
    return names


def used_options(args: list[str]) -> set[str]:
    return {a.split("=")[0] for a in args if a.startswith("-")}


def check_vsearch_command(command: list[str]) -> None:
    assert command[0] == "vsearch", command
    sub = command[1]
    known = help_options(help_text("services.cli", sub))
    unknown = used_options(command[2:]) - known
    if sub == "worker":  # extra arguments pass through to `celery worker`
        unknown -= help_options(help_text("celery", "worker"))
    assert not unknown, f"`vsearch {sub}` has no option {sorted(unknown)}"


def venv_env(**extra: str) -> dict[str, str]:
    """The environment a container command runs with here: the venv's scripts first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


# ---------------------------------------------------------------- compose: the specification

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
    from worker.celery_app import INDEX_QUEUE, INGEST_QUEUE
    assert (INGEST_QUEUE, INDEX_QUEUE) == ("ingest", "index")
    # The healthcheck pings the node name the command gives the worker.
    for svc in (worker, indexer):
        node = option_value(svc["command"], "-n", "--hostname")
        assert node.endswith("@%h")
        assert f"-d {node.split('@')[0]}@$HOSTNAME" in svc["healthcheck"]["test"][1]


# ---------------------------------------------------------------- compose: variables and secrets

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


# ---------------------------------------------------------------- compose: commands, ports, volumes

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


# ---------------------------------------------------------------- TF Serving configuration

def model_server_config():
    from tensorflow_serving.config import model_server_config_pb2
    return text_format.Parse((TFSERVING_DIR / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())


def batching_parameters() -> dict[str, int]:
    values = {}
    for line in (TFSERVING_DIR / "batching.config").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"(\w+) \{ value: (\d+) \}", line)
            assert m, f"batching.config: {line!r}"
            values[m.group(1)] = int(m.group(2))
    return values


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


# ---------------------------------------------------------------- Dockerfiles

@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    args, stages, current = {}, {}, None
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base = re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], m.group(1))
            current = Stage(m.group(2) or str(len(stages)), base)
            stages[current.name] = current
        else:
            current.instructions.append((keyword, rest))
    return stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    out = [stages[name]]
    while out[-1].base in stages:
        out.append(stages[out[-1].base])
    return out


def copied_from(stage: Stage) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for kw, rest in stage.instructions if kw == "COPY"
            for m in [re.search(r"--from=(\S+)\s+(\S+)", rest)] if m]


def installing_stages(stages: dict[str, Stage], name: str) -> list[Stage]:
    """Every stage whose work ends up in the image `name`: its chain and what it copies from."""
    seen, todo = {}, [name]
    while todo:
        for st in chain(stages, todo.pop()):
            if st.name not in seen:
                seen[st.name] = st
                todo.extend(src for src, _ in copied_from(st) if src in stages)
    return list(seen.values())


def pip_installs(stages: list[Stage]) -> list[str]:
    return [cmd for st in stages for kw, rest in st.instructions if kw == "RUN"
            for cmd in re.split(r"&&|;", rest) if "pip install" in cmd]


def dockerignored(path: str) -> bool:
    ignored = False
    for pattern in DOCKERIGNORE.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


DOCKERFILES = {"app.Dockerfile": ("app", "flower"), "model.Dockerfile": ("model",)}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runtime_stages_are_small_and_run_as_non_root(dockerfile):
    stages = parse_dockerfile(ROOT / "deploy" / dockerfile)
    assert len(stages) >= 2, "multi-stage"
    assert list(stages)[-1] == DOCKERFILES[dockerfile][0], "the default target is the main image"
    for target in DOCKERFILES[dockerfile]:
        runtime = chain(stages, target)
        assert runtime[-1].base == "python:3.11-slim", target
        users = [rest for st in reversed(runtime) for kw, rest in st.instructions if kw == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target}: USER must be non-root"
        for st in runtime:
            for kw, rest in st.instructions:
                if kw == "RUN":
                    assert not COMPILERS.search(rest), f"{target}: compilers in the runtime image: {rest}"
                if kw == "COPY" and "--from=" in rest:
                    assert re.search(r"--from=\S+\s+/opt/venv\s+/opt/venv$", rest), f"{target}: copies {rest}"
    built = [st for st in stages.values() if any(kw == "RUN" and COMPILERS.search(r) for kw, r in st.instructions)]
    assert built, "compilers belong to a build stage"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context(dockerfile):
    for stage in parse_dockerfile(ROOT / "deploy" / dockerfile).values():
        for kw, rest in stage.instructions:
            if kw == "COPY" and "--from=" not in rest:
                sources = [t for t in shlex.split(rest) if not t.startswith("--")][:-1]
                for src in sources:
                    assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: no such file"
                    assert not dockerignored(src), f"{dockerfile}: COPY {src} is excluded by .dockerignore"


def test_gateway_and_worker_image_installs_no_tensorflow():
    stages = parse_dockerfile(ROOT / "deploy" / "app.Dockerfile")
    for target in ("app", "flower"):
        installs = pip_installs(installing_stages(stages, target))
        assert any(re.search(r"pip install \.$", c.strip()) for c in installs), installs
        for cmd in installs:
            assert not re.search(r"tensorflow|torch|\[", cmd), f"{target}: {cmd}"
    # ...and `pip install .` pulls none: the base dependencies' closure, as installed here.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    closure = dependency_closure([Requirement(r) for r in project["dependencies"]])
    heavy = sorted(n for n in closure if HEAVY_PACKAGES.match(n))
    assert not heavy, f"the base dependencies pull {heavy}"


def dependency_closure(requirements: list[Requirement]) -> set[str]:
    seen: set[str] = set()
    todo = [(r, set(r.extras)) for r in requirements]
    while todo:
        req, extras = todo.pop()
        name = req.name.lower().replace("_", "-")
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((sub, set(sub.extras)))
    return {k.split("[")[0] for k in seen}


@pytest.mark.slow
def test_what_the_images_copy_builds_the_whole_project(tmp_path):
    """`pip install .` from exactly the files the Dockerfile copies: every package, the web assets,
    the .proto files and the `vsearch` script end up installed (a wheel built the same way)."""
    import zipfile
    src = tmp_path / "src"
    for kw, rest in parse_dockerfile(ROOT / "deploy" / "app.Dockerfile")["build"].instructions:
        if kw == "COPY":
            *sources, dest = shlex.split(rest)
            for source in sources:
                target = src / (dest if dest != "./" else source)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(src), "-w", str(tmp_path / "dist")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if n.endswith("/__init__.py") and n.count("/") == 1}
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    expected = {d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file()
                and any(fnmatch.fnmatch(d.name, pattern) for pattern in include)}
    assert packages == expected, "the Dockerfiles must COPY every package"
    for path in ROOT.glob("gateway/*/*"):
        if path.suffix in (".html", ".js", ".css"):
            assert path.relative_to(ROOT).as_posix() in names, f"{path.name} is missing from the image"
    assert "services/protos/tfserving.proto" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "vsearch = services.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_model_image_installs_cpu_tensorflow_and_torch_pinned_like_the_project():
    stages = parse_dockerfile(ROOT / "deploy" / "model.Dockerfile")
    installs = " ; ".join(pip_installs(installing_stages(stages, "model")))
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    torch_pin = next(r for r in extras["export"] if r.startswith("torch"))
    assert re.search(r"--index-url https://download.pytorch.org/whl/cpu \"?" + re.escape(torch_pin), installs)
    assert 'pip install ".[model,export]"' in installs
    assert re.search(r'pip install --no-deps "tensorflow-serving-api==2\.21\.0"', installs)
    assert "tensorflow-cpu==2.21.0" in extras["model"]
    model = chain(stages, "model")[0]
    assert any(kw == "COPY" and "deploy/export-once.sh /usr/local/bin/export-once" in rest
               for kw, rest in model.instructions)


# ---------------------------------------------------------------- Kubernetes

@functools.cache
def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s(kind: str, name: str | None = None) -> list[dict] | dict:
    found = [d for d in k8s_documents() if d["kind"] == kind]
    if name is None:
        return found
    (doc,) = [d for d in found if d["metadata"]["name"] == name]
    return doc


def workloads() -> list[dict]:
    return [d for d in k8s_documents() if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container_command(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def workload_running(command_head: list[str]) -> dict:
    (found,) = [w for w in workloads() for c in pod_spec(w)["containers"]
                if container_command(c)[:len(command_head)] == command_head]
    return found


def test_k8s_manifests_are_valid_kubernetes_objects():
    kinds = set()
    for doc in k8s_documents():
        kinds.add(doc["kind"])
        if doc["kind"] == "Kustomization":
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "ConfigMap",
            "StatefulSet", "Job", "Kustomization"} <= kinds


def test_kustomization_lists_every_manifest():
    (kustomization,) = k8s("Kustomization")
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_k8s_workloads_have_resources_probes_and_run_as_non_root():
    served = {json.dumps(s["spec"]["selector"], sort_keys=True) for s in k8s("Service")}
    for w in workloads():
        name, spec = w["metadata"]["name"], pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        labels = w["spec"]["template"]["metadata"]["labels"]
        if w["kind"] != "Job":
            assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for c in spec.get("initContainers", []) + spec["containers"]:
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"], f"{name}/{c['name']}"
            assert res["limits"]["memory"], f"{name}/{c['name']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
        if w["kind"] == "Job":
            continue
        for c in spec["containers"]:
            assert "livenessProbe" in c, f"{name}/{c['name']}"
        behind_service = any(json.loads(sel).items() <= labels.items() for sel in served)
        if behind_service:
            assert all("readinessProbe" in c for c in spec["containers"]), f"{name} serves traffic"


def test_k8s_services_select_a_workload_and_reach_its_ports():
    for svc in k8s("Service"):
        selector = svc["spec"]["selector"]
        (target,) = [w for w in workloads() if w["kind"] != "Job"
                     and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        ports = {p["name"]: p["containerPort"] for c in pod_spec(target)["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], f"{svc['metadata']['name']}:{port['port']}"


def test_k8s_addresses_and_ports_agree_with_the_configuration():
    env = k8s("ConfigMap", "vsearch-env")["data"]
    host, port = host_port(env["VSEARCH_MODEL_SERVER"])
    tfs_service = k8s("Service", host)
    assert tfs_service["spec"]["clusterIP"] == "None", "headless: clients see every replica"
    assert {p["port"] for p in tfs_service["spec"]["ports"]} == {GRPC_PORT, REST_PORT} and port == GRPC_PORT
    url = urlsplit(env["VSEARCH_REDIS_URL"])
    redis_service = k8s("Service", url.hostname)
    assert [p["port"] for p in redis_service["spec"]["ports"]] == [url.port or REDIS_PORT]
    gateway = workload_running(["gunicorn"])
    (c,) = pod_spec(gateway)["containers"]
    assert option_value(c["command"], "--bind", "-b") == f"0.0.0.0:{GATEWAY_PORT}"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_k8s_configuration_matches_compose():
    env = k8s("ConfigMap", "vsearch-env")["data"]
    compose_env = environment(service("worker"))
    assert set(env) == set(compose_env)
    differs = {k for k in env if env[k] != compose_env[k]}
    assert differs <= {"VSEARCH_ALLOWED_ROOTS"}, differs  # k8s: a folder of the data volume
    Settings.from_env(env)
    config = k8s("ConfigMap", "tfserving-config")["data"]
    for file in ("models.config", "batching.config"):
        assert config[file] == (TFSERVING_DIR / file).read_text(), f"{file} differs from deploy/tfserving"


@pytest.mark.parametrize("name", ["model-export", "worker", "indexer", "gateway", "redis"])
def test_k8s_commands_match_compose(name):
    command = service(name)["command"]
    workload = workload_running(command[:4] if command[0] == "vsearch" else command[:2])
    (c,) = pod_spec(workload)["containers"]
    assert container_command(c) == command
    image = service(name)["image"]
    assert c["image"] == image, name


def test_k8s_tfserving_matches_compose():
    tfs = k8s("Deployment", "tfserving")
    (c,) = pod_spec(tfs)["containers"]
    assert c["image"] == service("tfserving")["image"] and c["command"] == ["tensorflow_model_server"]
    flags = flag_values(c["args"])
    assert set(flags) <= TF_SERVING_FLAGS
    assert set(service("tfserving")["command"]) <= set(c["args"])
    assert c["readinessProbe"]["exec"]["command"] == service("tfserving")["healthcheck"]["test"][1:]
    mounts_by_path = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(tfs)["volumes"]}
    config_dir = str(PurePosixPath(flags["model_config_file"]).parent)
    assert volumes[mounts_by_path[config_dir]]["configMap"]["name"] == "tfserving-config"
    (entry,) = model_server_config().model_config_list.config
    models_dir = str(PurePosixPath(entry.base_path).parent)
    assert volumes[mounts_by_path[models_dir]]["persistentVolumeClaim"]["claimName"] == "vsearch-models"


def test_k8s_volumes_mount_where_the_variables_point():
    env = k8s("ConfigMap", "vsearch-env")["data"]
    claims = {c["metadata"]["name"]: c for c in k8s("PersistentVolumeClaim")}
    for claim in ("vsearch-data", "vsearch-models"):
        assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], "shared by pods on several nodes"
    for head, path_var, claim in ((["vsearch", "worker", "-Q", "ingest"], "VSEARCH_DATA_DIR", "vsearch-data"),
                                  (["vsearch", "worker", "-Q", "index"], "VSEARCH_DATA_DIR", "vsearch-data"),
                                  (["gunicorn"], "VSEARCH_DATA_DIR", "vsearch-data"),
                                  (["export-once"], "VSEARCH_MODEL_BASE", "vsearch-models")):
        w = workload_running(head)
        (c,) = pod_spec(w)["containers"]
        volumes = {v["name"]: v for v in pod_spec(w)["volumes"]}
        (m,) = [m for m in c["volumeMounts"] if m["mountPath"] == env[path_var]]
        assert volumes[m["name"]]["persistentVolumeClaim"]["claimName"] == claim, head
        assert not m.get("readOnly"), head
        if head[0] != "export-once":
            assert {"name": "vsearch-env"} in [e["configMapRef"] for e in c["envFrom"]]
            for root in env["VSEARCH_ALLOWED_ROOTS"].split(":"):
                assert PurePosixPath(env["VSEARCH_DATA_DIR"]) in PurePosixPath(root).parents


def test_k8s_workers_autoscale_and_the_index_builder_stays_single():
    (hpa,) = k8s("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    worker = workload_running(["vsearch", "worker", "-Q", "ingest"])
    assert (target["kind"], target["name"]) == ("Deployment", worker["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    indexer = workload_running(["vsearch", "worker", "-Q", "index"])
    assert indexer["spec"]["replicas"] == 1 and indexer["spec"]["strategy"]["type"] == "Recreate"
    autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in k8s("HorizontalPodAutoscaler")}
    assert indexer["metadata"]["name"] not in autoscaled


def test_k8s_secret_comes_from_a_secret_object():
    gateway = workload_running(["gunicorn"])
    (c,) = pod_spec(gateway)["containers"]
    (token,) = [e for e in c["env"] if e["name"] == "VSEARCH_API_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "vsearch-secrets", "key": "VSEARCH_API_TOKEN"}
    assert not k8s("Secret"), "no Secret with a value in the repository"
    for cm in k8s("ConfigMap"):
        assert "VSEARCH_API_TOKEN" not in cm["data"]


# ---------------------------------------------------------------- running the container commands

@pytest.fixture(scope="module")
def one_shot_export(tmp_path_factory):
    """The model-export service's command, run here into a temporary models folder."""
    base = tmp_path_factory.mktemp("models")
    command = service("model-export")["command"]
    local = [str(EXPORT_ONCE)] + [str(base) if t == option_value(command, "--out") else t for t in command[1:]]
    env = venv_env(VSEARCH_MODEL_BASE=str(base))
    first = subprocess.run(local, cwd=base, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    return base, local, env


@pytest.mark.slow
def test_model_export_one_shot_exports_once_then_does_nothing(one_shot_export):
    base, local, env = one_shot_export
    command = service("model-export")["command"]
    version_dir = base / option_value(command, "--model") / option_value(command, "--version")
    pb = version_dir / "saved_model.pb"
    assert pb.is_file() and (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    written = pb.stat().st_mtime_ns
    second = subprocess.run(local, cwd=base, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "nothing to do" in second.stdout
    assert pb.stat().st_mtime_ns == written
    assert sorted(p.name for p in version_dir.parent.iterdir()) == [version_dir.name]


def test_export_once_passes_the_command_through_and_its_failure_too(tmp_path):
    env = venv_env(VSEARCH_MODEL_BASE=str(tmp_path))
    ran = subprocess.run([str(EXPORT_ONCE), "sh", "-c", "echo ran; exit 3", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=10)
    assert (ran.returncode, ran.stdout.strip()) == (3, "ran")
    (tmp_path / "effnet_lite0" / "1").mkdir(parents=True)
    skipped = subprocess.run([str(EXPORT_ONCE), "false", "--out", str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=10)
    assert skipped.returncode == 0 and "nothing to do" in skipped.stdout
    forced = subprocess.run([str(EXPORT_ONCE), "false", "--out", str(tmp_path), "--overwrite"], env=env,
                            capture_output=True, text=True, timeout=10)
    assert forced.returncode == 1


def test_redis_command_runs_with_persistence(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed here")
    command = service("redis")["command"]
    port = free_port()
    local = [server if t == "redis-server" else str(tmp_path) if t == option_value(command, "--dir") else t
             for t in command] + ["--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    proc = subprocess.Popen(local, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import redis
        client = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
                time.sleep(0.1)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.set("k", "v")
        client.close()
    finally:
        stop_process(proc)
    assert any(tmp_path.rglob("*.aof")), "append-only file written to --dir"


class _FakeTFServingStatus(QuietHandler):
    state = "AVAILABLE"

    def do_GET(self):
        if self.path != "/v1/models/effnet_lite0":
            self.send_error(404)
            return
        body = json.dumps({"model_version_status": [
            {"version": "1", "state": self.state, "status": {"error_code": "OK", "error_message": ""}}]},
            indent=1).encode()
        self.send(200, body, Content_Type="application/json")


@pytest.mark.parametrize("state, healthy", [("AVAILABLE", True), ("LOADING", False), (None, False)])
def test_tfserving_healthcheck_needs_no_curl_and_wants_an_available_version(state, healthy):
    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    test = service("tfserving")["healthcheck"]["test"]
    if state is None:
        port = free_port()  # nothing listens
        server = None
    else:
        handler = type("Handler", (_FakeTFServingStatus,), {"state": state})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        script = test[3].replace(f"/dev/tcp/127.0.0.1/{REST_PORT}", f"/dev/tcp/127.0.0.1/{port}")
        result = subprocess.run(test[1:3] + [script], capture_output=True, text=True, timeout=10)
        assert (result.returncode == 0) == healthy, result.stderr
    finally:
        if server:
            server.shutdown()
            server.server_close()


@pytest.mark.slow
def test_model_server_override_command_serves_the_export_and_passes_its_healthcheck(one_shot_export, tmp_path):
    base, _, _ = one_shot_export
    override = yaml.safe_load(MODEL_SERVER_OVERRIDE.read_text())["services"]["tfserving"]
    command, test = override["command"], override["healthcheck"]["test"]
    port = free_port()
    local = [str(base) if t == option_value(command, "--model-base") else str(port) if t == str(GRPC_PORT) else t
             for t in command] + ["--host", "127.0.0.1"]
    assert test[:3] == ["CMD", "python", "-c"]
    probe = ["python", "-c", test[3].replace(f"127.0.0.1:{GRPC_PORT}", f"127.0.0.1:{port}")]
    env = venv_env()
    log_path = tmp_path / "model-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(local, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, timeout=30).returncode != 0:
            assert proc.poll() is None, f"model server exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"healthcheck never passed:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        stop_process(proc)


def _import_error(code: str, env: dict[str, str]) -> str | None:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return None if result.returncode == 0 else result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_gateway_command_serves_and_passes_its_healthcheck(tmp_path):
    gateway = service("gateway")
    env = venv_env(**{**environment(gateway), "VSEARCH_DATA_DIR": str(tmp_path / "data"),
                      "VSEARCH_ALLOWED_ROOTS": str(tmp_path), "VSEARCH_REDIS_URL": "redis://127.0.0.1:1/0",
                      "VSEARCH_MODEL_SERVER": "127.0.0.1:1"})
    error = _import_error("from gateway import create_app; create_app()", env)
    if error:
        pytest.xfail(f"the gateway does not build yet: {error}")
    port = free_port()
    command = [t if t != f"0.0.0.0:{GATEWAY_PORT}" else f"127.0.0.1:{port}" for t in gateway["command"]]
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        probe = [t.replace(f":{GATEWAY_PORT}/", f":{port}/") for t in gateway["healthcheck"]["test"][1:]]
        deadline = time.monotonic() + 30
        while subprocess.run(probe, env=env, capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None, f"gunicorn exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer on /healthz:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.3)
    finally:
        stop_process(proc)


def _redis_reachable(url: str) -> bool:
    import redis
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False


@pytest.mark.slow
def test_index_builder_command_starts_and_answers_its_healthcheck(tmp_path):
    from tests.workers import TEST_REDIS_URL, drop_keys, isolated_settings, settings_env
    if not _redis_reachable(TEST_REDIS_URL):
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    settings = isolated_settings(tmp_path, "127.0.0.1:1")
    env = {**settings_env(settings), "PATH": venv_env()["PATH"]}
    error = _import_error("import worker.app, worker.tasks", env)
    if error:
        pytest.xfail(f"the worker does not import yet: {error}")
    indexer = service("indexer")
    log_path = tmp_path / "indexer.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(indexer["command"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, f"worker exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        check = indexer["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        probe = subprocess.run(["sh", "-c", check[1]], cwd=ROOT, env={**env, "HOSTNAME": socket.gethostname()},
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        other = subprocess.run(["sh", "-c", check[1].replace("-t 10", "-t 1")], cwd=ROOT,
                               env={**env, "HOSTNAME": "no-such-host"}, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0, "the ping must name this worker"
    finally:
        stop_process(proc, timeout_s=20)
        drop_keys(settings)
