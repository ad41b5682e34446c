"""The manifests under ``servers/``: valid by KServe's CRD schemas and Kubernetes' own, and fit for OpenShift.

KServe objects (``servers/kserve/``) are checked with ``jsonschema`` against the CRDs' OpenAPI
schemas kept in ``tests/data/kserve/`` (source and cut: its README), including that no field would
be *pruned* (an API server silently drops fields its schema does not know, so a typo would
otherwise pass). Core objects (``servers/k8s/``) go through ``kubernetes-validate`` in strict mode.
Then the fields OpenShift AI expects and the restricted-SCC rules are asserted one by one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness.backends.kserve_runtimes import (
    ISVC_TEMPLATE,
    MANIFEST_DIR,
    RUNTIMES,
    KserveDeploy,
    build_isvc,
    load_yaml,
    model_format,
)  # fmt: skip

REPO = Path(__file__).resolve().parents[1]
KSERVE = REPO / MANIFEST_DIR
DATA = REPO / "tests/data/kserve"
K8S_VERSION = "1.37.0"
GRPC_PROTOCOLS = {"tgis", "caikit-grpc"}


def _schema(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.schema.json").read_text())


def pruned(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``obj`` that a structural schema does not know (what the API server would drop)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                found += pruned(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += pruned(value, extra, f"{path}.{key}")
            elif props is not None and not (path == "" and key == "metadata"):
                found.append(f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            found += pruned(value, schema["items"], f"{path}[{i}]")
    return found


def _check_crd(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(schema).validate(obj)
    assert pruned(obj, schema) == []


RUNTIME_FILES = sorted(p.name for p in KSERVE.glob("*.yaml") if p.name != ISVC_TEMPLATE)


def test_every_runtime_of_the_table_has_its_manifest_and_every_manifest_a_runtime() -> None:
    assert sorted(r.manifest for r in RUNTIMES.values()) == RUNTIME_FILES


@pytest.mark.parametrize("name", RUNTIME_FILES)
def test_serving_runtime_is_valid_by_the_kserve_crd(name: str) -> None:
    _check_crd(load_yaml(KSERVE / name), _schema("servingruntime.v1alpha1"))


def test_the_pruning_check_catches_a_misspelled_field() -> None:
    runtime = load_yaml(KSERVE / "vllm.yaml")
    runtime["spec"]["multimodel"] = False
    runtime["spec"]["containers"][0]["argz"] = []
    assert sorted(pruned(runtime, _schema("servingruntime.v1alpha1"))) == [
        ".spec.containers[0].argz",
        ".spec.multimodel",
    ]
    bad = load_yaml(KSERVE / "vllm.yaml")
    bad["spec"]["multiModel"] = "no"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema("servingruntime.v1alpha1")).validate(bad)


def _serving_container(runtime: dict[str, Any]) -> dict[str, Any]:
    containers = runtime["spec"]["containers"]
    return next((c for c in containers if c["name"] == "transformer-container"), containers[0])


@pytest.mark.parametrize("kind", sorted(RUNTIMES))
def test_serving_runtime_has_what_openshift_ai_expects(kind: str) -> None:
    table = RUNTIMES[kind]
    runtime = load_yaml(KSERVE / table.manifest)
    meta, spec = runtime["metadata"], runtime["spec"]
    assert meta["labels"]["opendatahub.io/dashboard"] == "true"
    assert meta["annotations"]["openshift.io/display-name"]
    assert json.loads(meta["annotations"]["opendatahub.io/recommended-accelerators"]) == ["nvidia.com/gpu"]
    grpc = bool(set(table.protocols) & GRPC_PROTOCOLS) and not {"completions", "chat"} & set(table.protocols)
    assert meta["annotations"]["opendatahub.io/apiProtocol"] == ("gRPC" if grpc else "REST")
    assert spec["annotations"]["prometheus.io/path"] == "/metrics"
    assert spec["annotations"]["prometheus.io/port"].isdigit()
    assert spec["multiModel"] is False
    assert spec["supportedModelFormats"][0]["autoSelect"] is True and model_format(runtime)
    names = [c["name"] for c in spec["containers"]]
    assert names[0] == "kserve-container"
    # the first port of the serving container is what KServe routes: h2c for gRPC runtimes
    ports = _serving_container(runtime)["ports"]
    assert (ports[0]["name"] == "h2c") == grpc
    h2c = {p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if p["name"] == "h2c"}
    expected = {"vllm": {8033}, "tgis": {8033}, "caikit-tgis-grpc": {8085}}.get(kind, set())
    assert h2c == expected
    for container in spec["containers"]:  # restricted SCC: arbitrary non-root UID, HOME (/) not writable
        env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
        assert env["HF_HOME"].startswith("/tmp/")
        assert all(not v.startswith(("/root", "~")) for v in env.values())
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


def test_vllm_runtime_args_are_the_ones_kserve_and_the_dashboard_expect() -> None:
    container = load_yaml(KSERVE / "vllm.yaml")["spec"]["containers"][0]
    assert container["args"][:3] == ["--model=/mnt/models", "--served-model-name={{.Name}}", "--port=8080"]
    assert "--grpc-port=8033" in container["args"]
    assert container["env"] and {e["name"] for e in container["env"]} >= {"HF_HOME", "XDG_CACHE_HOME"}


@pytest.mark.parametrize(("kind", "grpc"), [("caikit-tgis-grpc", "true"), ("caikit-tgis-http", "false")])
def test_caikit_serves_exactly_one_front_end(kind: str, grpc: str) -> None:
    runtime = load_yaml(KSERVE / RUNTIMES[kind].manifest)
    env = {e["name"]: e["value"] for e in _serving_container(runtime)["env"]}
    assert env["RUNTIME_GRPC_ENABLED"] == grpc
    assert env["RUNTIME_HTTP_ENABLED"] == ("false" if grpc == "true" else "true")


@pytest.mark.parametrize("kind", sorted(RUNTIMES))
def test_the_cells_inferenceservice_is_valid_and_pins_one_replica(kind: str) -> None:
    template = load_yaml(KSERVE / ISVC_TEMPLATE)
    template["spec"]["predictor"].update(minReplicas=0, maxReplicas=4)  # a template that autoscales
    runtime = load_yaml(KSERVE / RUNTIMES[kind].manifest)
    deploy = KserveDeploy(runtime=kind, deployment_mode="Serverless",
                          resources={"limits": {"nvidia.com/gpu": "2"}})  # type: ignore[arg-type]  # fmt: skip
    isvc = build_isvc(
        template, name="tb-x-abc123", namespace="bench", runtime=runtime, storage_uri="pvc://models/m",
        args=["--max-num-seqs=8"], env={"VLLM_CPU_KVCACHE_SPACE": "1"}, deploy=deploy, cell_id="x__a-1",
    )  # fmt: skip
    _check_crd(isvc, _schema("inferenceservice.v1beta1"))
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 1
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["model"]["modelFormat"] == {"name": model_format(runtime)}
    assert predictor["model"]["resources"] == {"limits": {"nvidia.com/gpu": "2"}}
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert isvc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tokenbench"


def _resources(folder: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((REPO / "servers" / folder).glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


CORE = _resources("k8s")


@pytest.mark.parametrize(("file", "doc"), CORE, ids=[f"{f}:{d['kind']}" for f, d in CORE])
def test_core_objects_are_valid_by_kubernetes_validate(file: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in CORE if d["kind"] == "Deployment"}


@pytest.mark.parametrize("name", sorted(_deployments()))
def test_deployments_run_under_the_restricted_scc(name: str) -> None:
    pod = _deployments()[name]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        assert all(p["containerPort"] >= 1024 for p in container["ports"]), "non-root cannot bind < 1024"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for path in ("/.cache", "/.config", "/tmp"):
            assert "emptyDir" in volumes[mounts[path]], path
        assert "persistentVolumeClaim" in volumes[mounts["/data"]], "weights go on a PVC"
        assert container["securityContext"]["runAsNonRoot"] is True


def _args(name: str) -> dict[str, str]:
    container = _deployments()[name]["spec"]["template"]["spec"]["containers"][0]
    return dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)


def test_tgi_listens_on_3000_matches_vllms_dtype_and_takes_an_api_key() -> None:
    assert _args("tgi")["port"] == "3000"
    assert _args("tgi")["dtype"] == _args("vllm")["dtype"] == _args("tgis")["dtype"]
    env = _deployments()["tgi"]["spec"]["template"]["spec"]["containers"][0]["env"]
    api_key = next(e for e in env if e["name"] == "API_KEY")
    assert api_key["valueFrom"]["secretKeyRef"]["name"] == "tgi-api-key"
    service = next(d for _, d in CORE if d["kind"] == "Service" and d["metadata"]["name"] == "tgi")
    assert service["spec"]["ports"][0]["port"] == 3000
    route = (REPO / "servers/openshift/tgi-route.yaml").read_text()
    assert "no built-in auth" not in route and "--api-key" in route


def test_a_passthrough_route_exposes_a_grpc_service_port() -> None:
    routes = [d for _, d in _resources("openshift") if d["kind"] == "Route"]
    for route in routes:
        assert route["apiVersion"] == "route.openshift.io/v1" and route["spec"]["to"]["kind"] == "Service"
    grpc = [r for r in routes if r["spec"]["tls"]["termination"] == "passthrough"]
    assert len(grpc) == 1
    target = grpc[0]["spec"]
    service = next(
        d for _, d in CORE if d["kind"] == "Service" and d["metadata"]["name"] == target["to"]["name"]
    )
    assert target["port"]["targetPort"] in {p["name"] for p in service["spec"]["ports"]}
