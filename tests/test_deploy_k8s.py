"""The Kubernetes manifests against the Kubernetes API schemas, and against the code and compose."""
from __future__ import annotations

import json
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from services.config import Settings
from tests.deploy_files import (
    GATEWAY_PORT, GRPC_PORT, K8S_DIR, K8S_VERSION, REDIS_PORT,
    REST_PORT, TFSERVING_DIR, TF_SERVING_FLAGS, container_command, environment,
    flag_values, host_port, k8s, k8s_documents, model_server_config,
    option_value, pod_spec, service, workload_running, workloads,
)


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
