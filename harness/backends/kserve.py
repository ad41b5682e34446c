"""``backend: kserve``: each cell is an InferenceService on a cluster: deploy, wait, bench, delete.

Why this shape: on OpenShift AI (and plain KServe) the thing users sweep is the InferenceService's
``spec.predictor.model.args``, and the server is not a process on this host. A cell therefore:

1. applies the runtime's ServingRuntime (``servers/kserve/<runtime>.yaml``, or ``deploy.
   runtime_manifest``) unless one of that name already exists and is the same (a different one is
   an error unless ``deploy.replace_runtime``: other deployments may use it);
2. creates an InferenceService from ``servers/kserve/inferenceservice.yaml`` whose args carry the
   cell's settings, with ``minReplicas = maxReplicas = 1`` so autoscaling stays out of the numbers;
3. watches it until ``Ready`` (``servers[].startup_timeout_s``: model pulls take minutes); a timeout
   says so with the predictor pod's events, which say why (FailedScheduling, image pulls...);
4. reads the URL from ``status.url``, or from the Route ``deploy.route`` names, then waits for the
   cell protocol's own readiness probes over it (TLS and a CA bundle from ``servers[].tls``);
5. hands back a handle whose only secret is the Bearer token in ``headers``;
6. on ``stop`` (always: success, failure, Ctrl-C/SIGTERM through the orchestrator's ``finally``)
   saves the pod's logs and events, deletes the InferenceService and waits for its pods to go, so
   the next cell does not queue behind it for the GPU.

Records in the cell folder: ``kserve/servingruntime.yaml`` and ``kserve/inferenceservice.yaml``
(as applied), ``kserve/events.txt``, ``server.log`` (the predictor's ``kserve-container``; other
containers in ``server-<container>.log``), all scrubbed of every token the backend knows.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from harness.backends.base import BackendSettings, BackendSpec, BackendStartError, ServerHandle
from harness.backends.external import _probe_metrics, _probe_version, normalize_base_url
from harness.backends.kserve_cluster import Cluster, ClusterError, conditions_text, event_line, is_ready
from harness.backends.kserve_runtimes import (
    ALL_PROTOCOLS,
    MANIFEST_ROOT,
    RUNTIMES,
    KserveDeploy,
    build_isvc,
    container_command,
    first_difference,
    isvc_template,
    recorded,
    runtime_image,
    runtime_manifest,
)  # fmt: skip
from harness.backends.process import ProcessRegistry
from harness.backends.vllm_settings import choices_context
from harness.matrix import Cell
from harness.protocols.base import Endpoint, ProtocolError
from harness.protocols.readiness import wait_until_ready
from harness.protocols.registry import get_protocol
from harness.protocols.tls import ssl_context
from harness.redact import REDACTED, is_secret_name, redact_command, scrub_text
from harness.scenario import Server

RECORDS = "kserve"
MAIN_CONTAINER = "kserve-container"
STORAGE_SCHEMES = ("pvc", "hf", "s3", "gs", "oci", "http", "https", "azure")


def deploy_of(server: Server) -> KserveDeploy | None:
    """The server's ``deploy`` block as the model, or None when absent or invalid (the scenario said why)."""
    try:
        return KserveDeploy.model_validate(server.deploy) if server.deploy is not None else None
    except ValidationError:
        return None


def isvc_name(server: Server) -> str:
    """A fresh DNS-1035 name per cell (``tb-<server>-<6 hex>``): a leftover of a killed run never clashes."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in server.name.lower()).strip("-") or "server"
    return f"tb-{slug[:30].rstrip('-')}-{secrets.token_hex(3)}"


def grpc_target_of(url: str) -> str:
    """``host:port`` of a URL (443 for https, 80 for http): a Knative URL serves its runtime's one port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class KserveBackend:
    """One cell's InferenceService. ``start`` then ``stop``; ``stop`` is idempotent and always deletes."""

    def __init__(self, *, home: Path) -> None:
        self.home = home
        self.cluster: Cluster | None = None
        self.name: str | None = None
        self.workdir: Path | None = None
        self.known: frozenset[str] = frozenset()
        self.delete_timeout_s = 300.0
        self.stopped = False

    # -- start ------------------------------------------------------------------------------------
    def start(self, cell: Cell, workdir: Path) -> ServerHandle:
        errors = SPEC.validate_cell(cell)
        if errors:
            raise BackendStartError("invalid KServe settings:\n" + "\n".join(errors))
        server = cell.server
        deploy = deploy_of(server)
        assert deploy is not None, "validate_cell requires a valid deploy block"
        where = f"cell '{cell.cell_id}'"
        self.delete_timeout_s = deploy.delete_timeout_s
        token = self._token(deploy, server)
        # a relative kubeconfig is the working directory's, as kubectl reads it
        kubeconfig = str(Path(deploy.kubeconfig).expanduser().absolute()) if deploy.kubeconfig else None
        self.cluster = cluster = Cluster.connect(
            kubeconfig=kubeconfig, context=deploy.context, namespace=deploy.namespace, where=where
        )
        if token is None:  # OpenShift AI token auth with the user's own (kubeconfig) token
            token = cluster.bearer
        self.known = cluster.secrets | ({token} if token else set())
        self.workdir = workdir
        records = workdir / RECORDS
        records.mkdir(parents=True, exist_ok=True)
        try:
            runtime = runtime_manifest(deploy, MANIFEST_ROOT)
            template = isvc_template(deploy, MANIFEST_ROOT)
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise BackendStartError(f"{where}: {err}") from None
        self._write(records / "servingruntime.yaml", runtime)
        self._apply_runtime(runtime, deploy, where)
        args, env = RUNTIMES[deploy.runtime].args_and_env(cell)
        self.name = name = isvc_name(server)
        isvc = build_isvc(
            template, name=name, namespace=cluster.namespace, runtime=runtime, storage_uri=server.model,
            args=args, env=env, deploy=deploy, cell_id=cell.cell_id,
        )  # fmt: skip
        self._write(records / "inferenceservice.yaml", isvc)
        started = time.monotonic()
        try:
            cluster.create("InferenceService", isvc)
        except ClusterError as err:
            if err.status == 409:  # someone else's of that name: never delete it
                self.name = None
            raise
        obj = cluster.wait_ready(name, started + server.startup_timeout_s)
        if obj is None or not is_ready(obj):
            raise self._not_ready(where, obj, server.startup_timeout_s)
        base_url, grpc_target = self._address(obj, deploy, where)
        served = server.served_model_name or name
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        endpoint = Endpoint(
            base_url=base_url, model=served, grpc_target=grpc_target, grpc_tls=server.tls is not None,
            tls=server.tls_options(), headers=headers,
        )  # fmt: skip
        left = server.startup_timeout_s - (time.monotonic() - started)
        try:
            wait_until_ready(get_protocol(cell.protocol), endpoint, max(left, 5.0))
        except ProtocolError as err:
            raise BackendStartError(
                scrub_text(f"{where}: InferenceService {name} is Ready but {base_url}: {err}", self.known),
                self._event_lines(),
            ) from None
        launch_s = time.monotonic() - started
        pod = self._save_pod_records()
        import httpx

        verify = ssl_context(endpoint.tls) if base_url.startswith("https://") else True
        with httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0), headers=headers, verify=verify) as client:
            http = get_protocol(cell.protocol).transport == "http"
            version = _probe_version(client, base_url) if http else None
            metrics_url = _probe_metrics(client, base_url) if http else None
        image, rt_name = runtime_image(runtime), runtime["metadata"]["name"]
        return ServerHandle(
            base_url=base_url,
            served_model=served,
            command=redact_command(container_command(runtime, args)),
            env={k: (REDACTED if is_secret_name(k) else v) for k, v in env.items()},
            version=f"{version} (KServe ServingRuntime {rt_name}, {image})"
            if version
            else f"KServe ServingRuntime {rt_name} ({image})",
            launch_s=launch_s,
            log_path=workdir / "server.log",
            pid=None,
            metrics_url=metrics_url,
            headers=headers,
            grpc_target=grpc_target,
            pod=pod,
            namespace=cluster.namespace,
        )

    def _token(self, deploy: KserveDeploy, server: Server) -> str | None:
        if deploy.token_env is None:
            return None
        value = os.environ.get(deploy.token_env)
        if not value:
            raise BackendStartError(
                f"server '{server.name}': deploy.token_env names environment variable "
                f"'{deploy.token_env}', which is not set (or empty)"
            )
        return value

    def _apply_runtime(self, runtime: dict[str, Any], deploy: KserveDeploy, where: str) -> None:
        """Create the ServingRuntime, keep an identical one, refuse (or replace) a different one."""
        assert self.cluster is not None
        name = runtime["metadata"]["name"]
        existing = self.cluster.get("ServingRuntime", name)
        if existing is None:
            self.cluster.create("ServingRuntime", runtime)
            return
        differs = first_difference(runtime.get("spec"), existing.get("spec"))
        if differs is None:
            return
        if not deploy.replace_runtime:
            raise BackendStartError(
                f"{where}: ServingRuntime {self.cluster.namespace}/{name} exists and differs from "
                f"{deploy.runtime_manifest or 'servers/kserve/' + RUNTIMES[deploy.runtime].manifest} at {differs}; "
                "rename yours, delete it, or set deploy.replace_runtime: true"
            )
        body = {
            **runtime,
            "metadata": {
                **runtime["metadata"],
                "resourceVersion": existing["metadata"].get("resourceVersion"),
            },
        }
        self.cluster.replace("ServingRuntime", body)

    def _address(self, obj: dict[str, Any], deploy: KserveDeploy, where: str) -> tuple[str, str | None]:
        """The base URL (``status.url`` or the named Route's) and the gRPC ``host:port``."""
        assert self.cluster is not None and self.name is not None
        url = str(obj["status"]["url"])
        if deploy.route:
            route = deploy.route.format(name=self.name, namespace=self.cluster.namespace)
            found = self.cluster.route_url(route)
            if found is None:
                raise BackendStartError(
                    f"{where}: deploy.route: no Route {self.cluster.namespace}/{route} with a host"
                )
            url = found
        base_url = normalize_base_url(url)
        if deploy.grpc_target:
            return base_url, deploy.grpc_target.format(name=self.name, namespace=self.cluster.namespace)
        return base_url, grpc_target_of(base_url)

    def _not_ready(self, where: str, obj: dict[str, Any] | None, timeout_s: float) -> BackendStartError:
        assert self.cluster is not None
        state = "; ".join(conditions_text(obj)) or "no status yet"
        events = self._event_lines()
        warnings = [e for e in events if " Warning " in f" {e} "]
        shown = "\n  ".join((warnings or events)[-8:]) or "(no events)"
        return BackendStartError(
            scrub_text(
                f"{where}: InferenceService {self.cluster.namespace}/{self.name} was not Ready within "
                f"{timeout_s:g} s (servers[].startup_timeout_s); status: {state}\n"
                f"  pod events:\n  {shown}",
                self.known,
            ),
            events[-20:],
        )

    # -- records ----------------------------------------------------------------------------------
    def _write(self, path: Path, obj: dict[str, Any]) -> None:
        text = yaml.safe_dump(recorded(obj), sort_keys=False)
        path.write_text(scrub_text(text, self.known), encoding="utf-8")

    def _event_lines(self) -> list[str]:
        """Events of the InferenceService and of each of its pods, oldest first (best effort)."""
        if self.cluster is None or self.name is None:
            return []
        try:
            names = [self.name] + [p["metadata"]["name"] for p in self.cluster.pods(self.name)]
            lines = [event_line(e) for n in names for e in self.cluster.events(n)]
        except ClusterError as err:
            return [f"(events unavailable: {err})"]
        return [scrub_text(line, self.known) for line in lines]

    def _save_pod_records(self) -> str | None:
        """Write events and each container's log into the cell folder; the predictor pod's name."""
        if self.cluster is None or self.name is None or self.workdir is None:
            return None
        events = self._event_lines()
        (self.workdir / RECORDS / "events.txt").write_text("\n".join(events) + "\n", encoding="utf-8")
        try:
            pods = self.cluster.pods(self.name)
        except ClusterError:
            return None
        if not pods:
            return None
        pod = pods[0]
        pod_name = pod["metadata"]["name"]
        for container in (pod.get("spec") or {}).get("containers") or []:
            cname = container.get("name", MAIN_CONTAINER)
            target = "server.log" if cname == MAIN_CONTAINER else f"server-{cname}.log"
            try:
                text = self.cluster.logs(pod_name, cname)
            except ClusterError as err:
                text = f"(log unavailable: {err})\n"
            (self.workdir / target).write_text(scrub_text(text, self.known), encoding="utf-8")
        return pod_name

    # -- stop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Save the pod's records, delete the InferenceService, wait (bounded) for its pods to go."""
        if self.stopped or self.cluster is None or self.name is None:
            return
        self.stopped = True
        try:
            try:
                self._save_pod_records()
            except Exception:  # noqa: BLE001 - records are best effort; the delete below is not
                pass
        finally:
            self._delete()

    def _delete(self) -> None:
        assert self.cluster is not None and self.name is not None
        for attempt in range(2):  # a second Ctrl-C during the DELETE must not leave the GPU taken
            try:
                self.cluster.delete("InferenceService", self.name)
                break
            except KeyboardInterrupt:
                if attempt:
                    raise
        deadline = time.monotonic() + self.delete_timeout_s
        note = f"deleted; pods still terminating after {self.delete_timeout_s:g} s"
        try:
            while time.monotonic() < deadline:
                if self.cluster.gone(self.name):
                    note = (
                        f"deleted; gone after {self.delete_timeout_s - (deadline - time.monotonic()):.1f} s"
                    )
                    break
                time.sleep(0.5)
        except (ClusterError, KeyboardInterrupt) as err:
            note = f"deleted; stopped waiting for the pods to go: {type(err).__name__}"
        if self.workdir is not None:
            (self.workdir / RECORDS / "deleted.txt").write_text(
                f"InferenceService {self.cluster.namespace}/{self.name}: {note}\n", encoding="utf-8"
            )


class KserveSpec(BackendSpec):
    """``backend: kserve``: an InferenceService per cell, on the cluster the kubeconfig names."""

    name = "kserve"
    label = "KServe"
    protocols = ALL_PROTOCOLS
    launches_locally = False
    Deploy = KserveDeploy

    def protocols_for(self, server: Server) -> tuple[str, ...]:
        deploy = deploy_of(server)
        return RUNTIMES[deploy.runtime].protocols if deploy else self.protocols

    def settings_model(self, server: Server) -> type[BackendSettings]:
        deploy = deploy_of(server)
        return RUNTIMES[deploy.runtime].settings if deploy else BackendSettings

    def deploy_identity(self, server: Server) -> dict[str, Any]:
        """Runtime, manifests, resources and mode: what the server is; not the cluster, namespace or token."""
        keys = ("runtime", "runtime_manifest", "isvc_template", "resources", "deployment_mode")
        return {k: v for k, v in (server.deploy or {}).items() if k in keys}

    def validation_context(self, server: Server) -> dict[str, Any]:
        """vLLM choices from the kept list: the cluster's image is not inspectable from here."""
        return choices_context(None)

    def check(self, server: Server) -> list[str]:
        errors: list[str] = []
        if server.deploy is None:
            errors.append(
                f"deploy: backend 'kserve' needs a 'deploy' block with 'runtime' (one of {', '.join(RUNTIMES)})"
            )
        scheme = server.model.split("://", 1)[0] if "://" in server.model else None
        if scheme not in STORAGE_SCHEMES:
            errors.append(
                f"model: a KServe storageUri such as pvc://CLAIM/PATH or hf://ORG/MODEL "
                f"(schemes: {', '.join(STORAGE_SCHEMES)}), got {server.model!r}"
            )
        if server.python:
            errors.append("python: a KServe server runs the runtime's image; 'python' does not apply")
        return errors

    def create(self, *, home: Path, registry: ProcessRegistry | None) -> KserveBackend:
        return KserveBackend(home=home)


SPEC = KserveSpec()
