"""Reading the deployment files (compose, TF Serving config, Dockerfiles, Kubernetes manifests) and
the CLI as their commands meet it, for the tests/test_deploy_*.py modules.

No Docker engine exists here, so: docker-compose.yml is validated against the Compose Specification's
JSON schema (the copy check-jsonschema ships), the Kubernetes manifests against the Kubernetes API
schemas (kubernetes-validate, strict), and every service's command, port, volume and variable is
compared with the code (`vsearch ... --help`, services.config.Settings, the TF Serving config).
"""
from __future__ import annotations

import fnmatch
import functools
import importlib.resources
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path, PurePosixPath

import jsonschema
import yaml
from google.protobuf import text_format
from packaging.requirements import Requirement

from services.config import PREFIX, Settings
from tests.conftest import ROOT, QuietHandler

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
    known = help_options(help_text("cli.main", sub))
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


def _redis_reachable(url: str) -> bool:
    import redis
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False
