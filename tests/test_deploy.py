"""deploy/: the container image, compose file and Kubernetes manifests, read with real parsers.

No container engine runs here, so nothing is built or started: the manifests
are validated against Kubernetes' own OpenAPI schemas (kubernetes-validate),
the Dockerfile is parsed by dockerfile-parse, every command line they hold is
parsed by splitpoint's own argument parser, and the health check command runs
against a real worker process.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from splitpoint.bundle import Bundle, health_service, segment_model_name
from splitpoint.cli import build_parser
from testbed.demo import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"  # gRPC probes are GA since 1.27, autoscaling/v2 since 1.23


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object under deploy/k8s by kind (one object of each kind)."""
    objects = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects"
            objects[doc["kind"]] = doc | {"_file": path.name}
    return objects


@pytest.fixture(scope="module")
def dockerfile() -> list[dict[str, Any]]:
    return [i for i in DockerfileParser(str(DEPLOY / "Dockerfile")).structure if i["instruction"] != "COMMENT"]


def _serve_args(argv: list[str]):
    """Parse a container's command line with splitpoint's own parser (exits on an unknown flag)."""
    return build_parser().parse_args(argv)


def _container(k8s) -> dict[str, Any]:
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_manifests_are_valid_kubernetes_objects(k8s):
    k8s = dict(k8s)
    kustomized = set(k8s.pop("Kustomization")["resources"])
    assert kustomized == {obj["_file"] for obj in k8s.values()}  # `kubectl apply -k` applies every file
    assert set(k8s) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"}
    for kind, obj in k8s.items():
        obj = {k: v for k, v in obj.items() if k != "_file"}
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises on unknown or mistyped fields
        assert obj["apiVersion"] and obj["metadata"]["name"], kind


def test_the_validator_can_fail(k8s):
    deployment = {k: v for k, v in k8s["Deployment"].items() if k != "_file"}
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"  # must be a number
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployment_serves_the_mounted_bundles_with_grpc_probes_on_its_port(k8s):
    deployment, container = k8s["Deployment"], _container(k8s)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    args = _serve_args(container["args"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == args.port, probe
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert [m["mountPath"] for m in mounts.values() if m.get("readOnly")] == args.bundles
    claims = [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == [k8s["PersistentVolumeClaim"]["metadata"]["name"]]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    # the drain (--grace-s) ends before the kubelet's SIGKILL
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > args.grace_s
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0


def test_headless_service_selects_the_pods_and_names_their_ports(k8s):
    service, container = k8s["Service"], _container(k8s)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= k8s["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert names[port["targetPort"]] == port["port"]


def test_autoscaler_targets_the_deployment(k8s):
    hpa, deployment = k8s["HorizontalPodAutoscaler"], k8s["Deployment"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == \
        (deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # utilization targets are relative to the container's requests, which must exist
    assert all(m["resource"]["name"] in _container(k8s)["resources"]["requests"] for m in hpa["spec"]["metrics"])


def test_dockerfile_is_multi_stage_non_root_with_a_health_check_on_the_served_port(dockerfile, k8s):
    froms = [i["value"].split() for i in dockerfile if i["instruction"] == "FROM"]
    assert len(froms) >= 2 and froms[0][-2].upper() == "AS"
    stage = froms[0][-1]
    final = dockerfile[max(n for n, i in enumerate(dockerfile) if i["instruction"] == "FROM"):]
    by_kind: dict[str, list[str]] = {}
    for i in final:
        by_kind.setdefault(i["instruction"], []).append(i["value"])
    assert any(v.startswith(f"--from={stage} ") for v in by_kind["COPY"])  # only the built environment is copied
    (user,) = by_kind["USER"]
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and int(uid) == k8s["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    (entrypoint,), (cmd,), (healthcheck,) = by_kind["ENTRYPOINT"], by_kind["CMD"], by_kind["HEALTHCHECK"]
    args = _serve_args(json.loads(cmd))
    assert json.loads(entrypoint) == ["splitpoint"] and args.command == "serve" and args.host == "0.0.0.0"
    assert {str(args.port), str(args.metrics_port)} <= set(by_kind["EXPOSE"][0].split())
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    health = _serve_args(probe[1:])
    assert probe[0] == "splitpoint" and health.command == "health" and health.address.endswith(f":{args.port}")
    for i in dockerfile:  # everything copied from the build context exists in the repository
        if i["instruction"] == "COPY" and not i["value"].startswith("--from"):
            for source in shlex.split(i["value"])[:-1]:
                assert (ROOT / source).exists(), source


def test_compose_runs_a_worker_and_an_edge_that_waits_for_it(dockerfile):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    worker, edge = compose["services"]["worker"], compose["services"]["edge"]
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    serve = _serve_args(worker["command"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert serve.command == "serve" and serve.bundles == ["/models"] and "/models" in mounts
    assert any(p.endswith(f":{serve.port}") for p in worker["ports"])
    infer = _serve_args([a.replace("${BUNDLE:-mymodel}", "mymodel") for a in edge["command"]])
    assert infer.command == "infer" and infer.cloud == f"worker:{serve.port}"
    assert infer.bundle.startswith("/models/") and edge["image"] == worker["image"]
    assert edge["depends_on"]["worker"]["condition"] == "service_healthy"  # the image's HEALTHCHECK gates it
    assert any(i["instruction"] == "HEALTHCHECK" for i in dockerfile)


def _health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitpoint", "health", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_image_health_check_command_probes_a_real_worker(worker, demo_bundle, dockerfile):
    (healthcheck,) = [i["value"] for i in dockerfile if i["instruction"] == "HEALTHCHECK"]
    probe = json.loads(healthcheck.split("CMD", 1)[1])[1:]  # splitpoint health 127.0.0.1:8500
    assert probe[:1] == ["health"]
    up = _health(worker.address, *probe[2:])
    assert up.returncode == 0 and "SERVING" in up.stdout, up.stdout + up.stderr
    down = _health(f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert down.returncode == 1 and "not serving" in down.stdout
    b = Bundle(demo_bundle)
    name = segment_model_name(b.name, "cloud")
    assert _health(worker.address, "--service", health_service(name, b.manifest.model_sha256)).returncode == 0
    assert _health(worker.address, "--service", health_service(name, "0" * 64)).returncode == 1
