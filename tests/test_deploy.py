"""deploy/k8s/: Triton on GPU nodes (Deployment, Service, autoscaler), prometheus-adapter's rule, the batch RayJob.

No cluster here: every object is validated against the Kubernetes API schemas that kubernetes-validate bundles
(offline, strict: an unknown field fails), and checked against what it must agree with: docker-compose.yml's
flags and health check, the contract's ports, config.pbtxt's TensorRT cache path, the metric names a live
tritonserver exports, and `face2hbe batch`'s own options.
"""

from __future__ import annotations

import shlex

import pytest
import yaml

from face2hbe import contract

from conftest import REPOSITORY, ROOT

DEPLOY = ROOT / "deploy" / "k8s"
KUBERNETES = "1.30"


def _objects(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def _one(name: str, kind: str) -> dict:
    (found,) = [doc for doc in _objects(name) if doc["kind"] == kind]
    return found


def _validate(obj: dict) -> None:
    from kubernetes_validate import validate

    validate(obj, KUBERNETES, strict=True)  # raises ValidationError naming the field


@pytest.mark.parametrize("name", ["triton.yaml", "prometheus-adapter.yaml"])
def test_every_object_matches_the_kubernetes_schemas(name):
    objects = _objects(name)
    assert objects
    for obj in objects:
        _validate(obj)


def test_a_schema_error_is_caught():
    """Guard: the validator really checks (a misspelt field and a wrong type both fail)."""
    from kubernetes_validate import ValidationError

    deployment = _one("triton.yaml", "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/", "port": 1}
    with pytest.raises(ValidationError):
        _validate(broken)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "one"
    with pytest.raises(ValidationError):
        _validate(broken)


def _triton_container() -> dict:
    (container,) = _one("triton.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _compose_triton() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["triton"]


def test_deployment_runs_the_containers_flags_on_the_baked_repository():
    from face2hbe.serving.embedded import CONTAINER_FLAGS

    command = _triton_container()["command"]
    compose = [str(arg) for arg in _compose_triton()["command"]]
    assert command[0] == compose[0] == "tritonserver"
    assert set(CONTAINER_FLAGS) <= set(command) and set(CONTAINER_FLAGS) <= set(compose)
    # The repository is baked in where the Dockerfile copies it.
    dockerfile = (DEPLOY / "Dockerfile").read_text().splitlines()
    (copy,) = [line.split() for line in dockerfile if line.startswith("COPY ")]
    assert f"--model-repository={copy[-1]}" in command and copy[1] == "."
    restricted = [arg for arg in command if arg.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
    assert len(restricted) == 2 and all("$(TRITON_ADMIN_KEY)" in arg for arg in restricted)
    from face2hbe.serving.embedded import ADMIN_APIS

    assert all(arg.split("=", 1)[1].startswith(f"{ADMIN_APIS}:") for arg in restricted), (
        "the same APIs as face2hbe serve"
    )


def test_ports_probes_gpu_and_volumes():
    from face2hbe.repository import read_config

    container = _triton_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": contract.HTTP_PORT, "grpc": contract.GRPC_PORT, "metrics": contract.METRICS_PORT}
    service = _one("triton.yaml", "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    assert (
        service["spec"]["selector"].items()
        <= _one("triton.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # Liveness is a real inference: the very command compose's health check runs (tests/test_compose.py runs it live).
    kind, compose_check = _compose_triton()["healthcheck"]["test"]
    assert container["livenessProbe"]["exec"]["command"] == ["sh", "-c", compose_check.replace("$$", "$")]
    # The TensorRT engine cache path of the GPU config is a writable volume.
    cache = read_config(REPOSITORY / contract.MODEL_NAME).optimization.execution_accelerators.gpu_execution_accelerator[
        0
    ]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert any(cache.parameters["trt_engine_cache_path"].startswith(path + "/") for path in mounts)
    assert not any(m.get("readOnly") for m in mounts.values())


def test_autoscaler_scales_the_deployment_on_the_adapters_metric(server):
    """The HPA's metric is the adapter rule's, and that rule reads counters a live tritonserver exports."""
    import urllib.request

    hpa = _one("triton.yaml", "HorizontalPodAutoscaler")
    deployment = _one("triton.yaml", "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    (metric,) = hpa["spec"]["metrics"]
    (rule,) = yaml.safe_load(_one("prometheus-adapter.yaml", "ConfigMap")["data"]["config.yaml"])["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(contract.METRICS_PORT)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.settings.metrics_port}/metrics", timeout=30) as response:
        exported = {
            line.split("{")[0].split()[0] for line in response.read().decode().splitlines() if line and line[0] != "#"
        }
    for name in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert name in rule["metricsQuery"] and name in exported, (name, sorted(exported))
    assert rule["name"]["matches"] in rule["seriesQuery"]


def test_rayjob_pods_entrypoint_and_url():
    """The RayJob (a KubeRay CRD, no bundled schema): its pod templates as PodTemplates against the schemas, its
    entrypoint parsed by `face2hbe batch` itself, its --url the Service's cluster name and gRPC port."""
    from face2hbe.app.cli import cli

    job = _one("rayjob.yaml", "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    cluster = job["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    for i, template in enumerate(templates):
        _validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": template})
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["face2hbe", "batch"]
    context = cli.commands["batch"].make_context("batch", words[2:])  # an unknown option or bad value raises here
    service = _one("triton.yaml", "Service")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert (
        context.params["url"]
        == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local:{grpc_port}"
    )
    assert job["metadata"]["namespace"] == service["metadata"]["namespace"]
