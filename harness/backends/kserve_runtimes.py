"""The KServe runtimes tokenbench deploys: their manifests, the protocols they serve, their settings.

Why a table: a ``backend: kserve`` server names a runtime (``deploy.runtime``), and everything
that differs between runtimes follows from that one name: the ServingRuntime manifest under
``servers/kserve/``, which protocols its port speaks, which settings a cell may sweep and how each
becomes an argument of ``spec.predictor.model.args`` (KServe appends those to the runtime
container's own ``args``). vLLM's settings are exactly ``backend: vllm``'s (same model, same
flags, via ``vllm.engine_args``); TGI and TGIS take their launchers' flags.

This module also builds the InferenceService for one cell from the template
(``servers/kserve/inferenceservice.yaml``), pinning ``minReplicas = maxReplicas = 1`` so that
autoscaling never mixes with a measurement.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from harness.backends.base import BackendSettings
from harness.backends.tgi_settings import TgiFlagSettings
from harness.backends.vllm import engine_args
from harness.backends.vllm_settings import VllmSettings
from harness.redact import REDACTED, is_secret_name, redact_command

if TYPE_CHECKING:
    from harness.matrix import Cell

MANIFEST_DIR = Path("servers") / "kserve"  # under the source tree
# The kept manifests are files of the source tree (``servers/kserve``), not package data: a
# checkout or an editable install finds them here; an installed wheel needs
# ``deploy.runtime_manifest`` / ``deploy.isvc_template`` (or a ``servers/kserve`` in the cwd).
MANIFEST_ROOT = Path(__file__).resolve().parents[2]
ISVC_TEMPLATE = "inferenceservice.yaml"
RuntimeName = Literal["vllm", "tgi", "tgis", "caikit-tgis-grpc", "caikit-tgis-http"]
MANAGED_BY = {"app.kubernetes.io/managed-by": "tokenbench"}
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
Positive = Annotated[int, Field(ge=1)]


class TgisLauncherSettings(BackendSettings):
    """``text-generation-launcher`` (IBM/Open Data Hub TGIS) flags a cell may sweep."""

    max_concurrent_requests: Positive | None = None
    max_sequence_length: Positive | None = None
    max_new_tokens: Positive | None = None
    max_batch_size: Positive | None = None
    max_batch_weight: Positive | None = None
    max_prefill_weight: Positive | None = None
    num_shard: Positive | None = None
    dtype_str: str | None = None
    quantize: str | None = None
    deployment_framework: str | None = None


def launcher_flags(settings: dict[str, Any], model: type[BaseModel]) -> list[str]:
    """``--max-batch-size=8`` per set field, in the model's field order; true bools as bare flags."""
    flags: list[str] = []
    for key in model.model_fields:
        value = settings.get(key)
        if value is None or value is False:
            continue
        name = "--" + key.replace("_", "-")
        flags.append(name if value is True else f"{name}={value}")
    return flags


def joined(flags: list[str]) -> list[str]:
    """``["--x", "1", "--y"]`` -> ``["--x=1", "--y"]``: one list item per flag, as manifests write them."""
    out: list[str] = []
    for item in flags:
        if out and out[-1].startswith("--") and "=" not in out[-1] and not item.startswith("--"):
            out[-1] = f"{out[-1]}={item}"
        else:
            out.append(item)
    return out


@dataclass(frozen=True)
class Runtime:
    """One ServingRuntime kind: its manifest file, the protocols its port speaks, its settings."""

    name: str
    manifest: str
    protocols: tuple[str, ...]
    settings: type[BackendSettings]
    # where ``servers[].max_model_len`` goes when the cell does not set it (None: vLLM's own table)
    context_setting: str | None
    # the flag that renames the served model, when the runtime has one
    served_name_flag: str | None = None

    def args_and_env(self, cell: Cell) -> tuple[list[str], dict[str, str]]:
        """The cell's ``spec.predictor.model.args`` and ``env``: settings, then ``servers[].args``."""
        server = cell.server
        if self.settings is VllmSettings:
            flags, env = engine_args(cell, cpu=False)
            args = joined(flags)
        else:
            settings = dict(cell.settings)
            if self.context_setting and server.max_model_len and settings.get(self.context_setting) is None:
                settings[self.context_setting] = server.max_model_len
            args = launcher_flags(settings, self.settings) + list(server.args)
            env = dict(server.env)
        if self.served_name_flag and server.served_model_name:
            args.append(f"{self.served_name_flag}={server.served_model_name}")
        return args, env


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("vllm", "vllm.yaml", ("completions", "chat", "tgis"), VllmSettings, None, "--served-model-name"),
        Runtime("tgi", "tgi.yaml", ("completions", "chat", "tgi"), TgiFlagSettings, "max_total_tokens"),
        Runtime("tgis", "tgis.yaml", ("tgis",), TgisLauncherSettings, "max_sequence_length"),
        Runtime("caikit-tgis-grpc", "caikit-tgis-grpc.yaml", ("caikit-grpc",), TgisLauncherSettings,
                "max_sequence_length"),
        Runtime("caikit-tgis-http", "caikit-tgis-http.yaml", ("caikit-http",), TgisLauncherSettings,
                "max_sequence_length"),
    )
}  # fmt: skip
ALL_PROTOCOLS = tuple(dict.fromkeys(p for r in RUNTIMES.values() for p in r.protocols))


class KserveDeploy(BaseModel):
    """``servers[].deploy`` of a ``backend: kserve`` server: which runtime, which cluster, how to reach it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    runtime: RuntimeName = Field(description="the ServingRuntime kind (servers/kserve/<runtime>.yaml)")
    runtime_manifest: str | None = Field(
        default=None, description="your own ServingRuntime YAML instead (its settings table: runtime's)"
    )
    isvc_template: str | None = Field(default=None, description="your own InferenceService template")
    kubeconfig: str | None = Field(default=None, description="else $KUBECONFIG, else ~/.kube/config")
    context: str | None = Field(default=None, description="else $TOKENBENCH_KUBE_CONTEXT, else current")
    namespace: str | None = Field(
        default=None, description="else $TOKENBENCH_KUBE_NAMESPACE, else the context's, else 'default'"
    )
    token_env: str | None = Field(
        default=None,
        description="env var holding the Bearer token for inference requests; else the kubeconfig's token",
    )
    route: str | None = Field(
        default=None, description="read the URL from this Route ('{name}': the InferenceService)"
    )
    grpc_target: str | None = Field(
        default=None, description="host:port of the gRPC port ('{name}', '{namespace}' filled in)"
    )
    deployment_mode: Literal["RawDeployment", "Serverless"] | None = Field(
        default=None, description="serving.kserve.io/deploymentMode (default: the template's)"
    )
    resources: dict[str, Any] | None = Field(default=None, description="predictor resources (k8s)")
    replace_runtime: bool = Field(
        default=False, description="replace an existing ServingRuntime of the same name that differs"
    )
    delete_timeout_s: float = Field(default=300.0, gt=0, description="wait this long for the pods to go")


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected one YAML mapping")
    return data


def runtime_manifest(deploy: KserveDeploy, base: Path) -> dict[str, Any]:
    """The ServingRuntime to apply: ``runtime_manifest`` (relative to ``base``), else the kept one."""
    path = (
        Path(deploy.runtime_manifest)
        if deploy.runtime_manifest
        else base / MANIFEST_DIR / RUNTIMES[deploy.runtime].manifest
    )
    if (
        not path.is_absolute() and not path.exists()
    ):  # relative: the working directory's, else the source tree's
        path = base / path
    data = load_yaml(path)
    if data.get("kind") != "ServingRuntime" or not data.get("metadata", {}).get("name"):
        raise ValueError(f"{path}: not a ServingRuntime with a metadata.name")
    return data


def isvc_template(deploy: KserveDeploy, base: Path) -> dict[str, Any]:
    path = Path(deploy.isvc_template) if deploy.isvc_template else base / MANIFEST_DIR / ISVC_TEMPLATE
    if not path.is_absolute() and not path.exists():
        path = base / path
    data = load_yaml(path)
    if data.get("kind") != "InferenceService":
        raise ValueError(f"{path}: not an InferenceService")
    return data


def model_format(runtime: dict[str, Any]) -> str:
    """The first ``supportedModelFormats`` name: what the InferenceService asks for."""
    formats = runtime.get("spec", {}).get("supportedModelFormats") or [{}]
    return str(formats[0].get("name") or "unknown")


def build_isvc(
    template: dict[str, Any],
    *,
    name: str,
    namespace: str,
    runtime: dict[str, Any],
    storage_uri: str,
    args: list[str],
    env: dict[str, str],
    deploy: KserveDeploy,
    cell_id: str,
) -> dict[str, Any]:
    """One cell's InferenceService: the template with the cell's name, runtime, model, args and env."""
    isvc = copy.deepcopy(template)
    meta = isvc.setdefault("metadata", {})
    meta["name"], meta["namespace"] = name, namespace
    meta["labels"] = {**(meta.get("labels") or {}), **MANAGED_BY}
    annotations = {**(meta.get("annotations") or {}), "tokenbench.io/cell": cell_id}
    annotations["openshift.io/display-name"] = f"tokenbench {cell_id}"[:253]
    if deploy.deployment_mode:
        annotations[DEPLOYMENT_MODE] = deploy.deployment_mode
    meta["annotations"] = annotations
    predictor = isvc.setdefault("spec", {}).setdefault("predictor", {})
    predictor["minReplicas"] = predictor["maxReplicas"] = 1  # no autoscaling during a measurement
    model = predictor.setdefault("model", {})
    model["runtime"] = runtime["metadata"]["name"]
    model["modelFormat"] = {"name": model_format(runtime)}
    model["storageUri"] = storage_uri
    model["args"] = [*(model.get("args") or []), *args]
    if env:
        model["env"] = [*(model.get("env") or []), *({"name": k, "value": v} for k, v in env.items())]
    if deploy.resources is not None:
        model["resources"] = deploy.resources
    return isvc


def recorded(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to write: secret-named env values and secret flag values replaced."""
    out = copy.deepcopy(obj)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("args"), list):
                node["args"] = redact_command([str(a) for a in node["args"]])
            for item in node.get("env") or [] if isinstance(node.get("env"), list) else []:
                if isinstance(item, dict) and is_secret_name(str(item.get("name", ""))) and "value" in item:
                    item["value"] = REDACTED
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(out)
    return out


def first_difference(ours: Any, theirs: Any, path: str = "spec") -> str | None:
    """Where ``theirs`` does not contain ``ours`` (the API server adds defaults; those do not count)."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return path
        for key, value in ours.items():
            found = first_difference(value, theirs.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return path
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            found = first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if ours == theirs else path


def container_command(runtime: dict[str, Any], isvc_args: list[str]) -> list[str]:
    """The predictor container's command line as KServe runs it (runtime command + args + ours)."""
    containers = runtime.get("spec", {}).get("containers") or [{}]
    main = next((c for c in containers if c.get("name") == "kserve-container"), containers[0])
    return [*(main.get("command") or []), *(main.get("args") or []), *isvc_args]


def runtime_image(runtime: dict[str, Any]) -> str:
    containers = runtime.get("spec", {}).get("containers") or [{}]
    return ", ".join(str(c.get("image", "?")) for c in containers)
