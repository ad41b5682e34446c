"""The Kubernetes API as the kserve backend uses it: connect, apply, wait, read pods, delete.

Why a thin wrapper over the official ``kubernetes`` client: the backend needs a dozen calls, each
with the same error handling (an ``ApiException`` becomes one line naming the object, the HTTP
status and the API server's own message, never a token) and the same raw-JSON reading (the
client's typed models refuse objects that lack optional fields some clusters leave out). The
client is imported here only, and only when a kserve cell starts, so other users never load it.

Where the cluster comes from: ``deploy.kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config``; the context ``deploy.context``, else ``$TOKENBENCH_KUBE_CONTEXT``, else the
kubeconfig's current one; the namespace ``deploy.namespace``, else ``$TOKENBENCH_KUBE_NAMESPACE``,
else the context's, else ``default``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.base import BackendStartError
from harness.redact import scrub_text

CONTEXT_ENV = "TOKENBENCH_KUBE_CONTEXT"
NAMESPACE_ENV = "TOKENBENCH_KUBE_NAMESPACE"
# kind -> (group, version, plural)
KINDS: dict[str, tuple[str, str, str]] = {
    "ServingRuntime": ("serving.kserve.io", "v1alpha1", "servingruntimes"),
    "InferenceService": ("serving.kserve.io", "v1beta1", "inferenceservices"),
    "Route": ("route.openshift.io", "v1", "routes"),
}
ISVC_LABEL = "serving.kserve.io/inferenceservice"
API_TIMEOUT_S = 30.0
LOG_LIMIT_BYTES = 32 * 1024 * 1024


class ClusterError(BackendStartError):
    """A call to the Kubernetes API failed, or the cluster could not be reached or configured."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the API server's HTTP status, when it answered


def kubeconfig_path(given: str | None) -> str:
    """``deploy.kubeconfig``, else ``$KUBECONFIG`` (may list several files), else ``~/.kube/config``."""
    if given:
        return str(Path(given).expanduser())
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def is_ready(obj: dict[str, Any]) -> bool:
    """An InferenceService whose ``Ready`` condition is ``True`` (and that has a URL)."""
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return ready and bool(status.get("url"))


def conditions_text(obj: dict[str, Any] | None) -> list[str]:
    """``Ready=False (RevisionMissing): message`` per condition, for an error message."""
    lines = []
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        why = f" ({c['reason']})" if c.get("reason") else ""
        lines.append(f"{c.get('type')}={c.get('status')}{why}: {c.get('message', '')}".rstrip(": "))
    return lines


def event_line(event: dict[str, Any]) -> str:
    involved = event.get("involvedObject") or {}
    when = event.get("lastTimestamp") or event.get("eventTime") or ""
    count = f" (x{event['count']})" if (event.get("count") or 1) > 1 else ""
    return (
        f"{when} {event.get('type', '?')} {event.get('reason', '?')} "
        f"{involved.get('kind', '?')}/{involved.get('name', '?')}: {event.get('message', '')}{count}"
    ).strip()


@dataclass
class Cluster:
    """An API client bound to one namespace; ``secrets`` are the values no message may show."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    server: str
    secrets: frozenset[str]
    bearer: str | None = None  # the kubeconfig user's token (OpenShift: `oc login`), if it has one

    @classmethod
    def connect(
        cls, *, kubeconfig: str | None, context: str | None, namespace: str | None, where: str
    ) -> Cluster:
        """Load the kubeconfig (a clear error naming the file and context if it cannot be used)."""
        try:
            from kubernetes import client, config
        except ImportError:
            raise ClusterError(
                f"{where}: backend 'kserve' needs the Kubernetes client: pip install 'tokenbench[kserve]' "
                "(kubernetes==37.0.2)"
            ) from None
        path = kubeconfig_path(kubeconfig)
        context = context or os.environ.get(CONTEXT_ENV) or None
        configuration = client.Configuration()
        try:
            config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
            contexts, active = config.list_kube_config_contexts(config_file=path)
        except (config.ConfigException, OSError, ValueError, TypeError) as err:
            raise ClusterError(
                f"{where}: cannot use kubeconfig {path}" + (f" (context {context!r})" if context else "")
                + f": {err}"
            ) from None  # fmt: skip
        chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
        ns = namespace or os.environ.get(NAMESPACE_ENV) or (chosen or {}).get("context", {}).get("namespace")
        # ``BearerToken`` in kubernetes 37 (``authorization`` in older clients), as "Bearer <token>"
        auth = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization") or ""
        bearer = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        secrets = {v.removeprefix("Bearer ").strip() for v in configuration.api_key.values() if v}
        secrets |= {s for s in (configuration.password,) if s}
        api = client.ApiClient(configuration)
        return cls(api, ns or "default", configuration.host, frozenset(secrets), bearer or None)

    # -- errors -------------------------------------------------------------------------------------
    def _fail(self, what: str, err: Exception) -> ClusterError:
        status = getattr(err, "status", None)
        message = getattr(err, "reason", None) or str(err)
        body = getattr(err, "body", None)
        if body:
            try:
                message = json.loads(body).get("message") or message
            except (ValueError, AttributeError):
                pass
        hint = ""
        if status == 401:
            hint = " (the kubeconfig's credentials were refused: log in again, e.g. `oc login`)"
        elif status == 403:
            hint = f" (your user may not do this in namespace {self.namespace!r})"
        code = f"HTTP {status}: " if status else ""
        text = scrub_text(f"{what} on {self.server}: {code}{message}{hint}", self.secrets)
        return ClusterError(text, status if isinstance(status, int) else None)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.rest import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", API_TIMEOUT_S)
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise self._fail(what, err) from None
        except (HTTPError, OSError) as err:
            raise self._fail(what, err) from None

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    # -- objects ------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        from kubernetes.client.rest import ApiException

        group, version, plural = KINDS[kind]
        try:
            return self._custom().get_namespaced_custom_object(
                group, version, self.namespace, plural, name, _request_timeout=API_TIMEOUT_S
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise self._fail(f"GET {kind} {self.namespace}/{name}", err) from None

    def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = KINDS[kind]
        name = body["metadata"]["name"]
        return self._call(
            f"create {kind} {self.namespace}/{name}",
            self._custom().create_namespaced_custom_object, group, version, self.namespace, plural, body,
        )  # fmt: skip

    def replace(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        group, version, plural = KINDS[kind]
        name = body["metadata"]["name"]
        return self._call(
            f"replace {kind} {self.namespace}/{name}",
            self._custom().replace_namespaced_custom_object, group, version, self.namespace, plural, name, body,
        )  # fmt: skip

    def delete(self, kind: str, name: str) -> bool:
        """Delete (foreground, so the pods go first); False when it was already gone."""
        from kubernetes.client.rest import ApiException

        group, version, plural = KINDS[kind]
        try:
            self._custom().delete_namespaced_custom_object(
                group, version, self.namespace, plural, name,
                body={"propagationPolicy": "Foreground"}, _request_timeout=API_TIMEOUT_S,
            )  # fmt: skip
        except ApiException as err:
            if err.status == 404:
                return False
            raise self._fail(f"DELETE {kind} {self.namespace}/{name}", err) from None
        return True

    def wait_ready(self, name: str, deadline: float) -> dict[str, Any] | None:
        """Watch the InferenceService until it is Ready; the last state seen if ``deadline`` passes first."""
        from kubernetes import watch

        group, version, plural = KINDS["InferenceService"]
        last = self.get("InferenceService", name)
        while last is None or not is_ready(last):
            left = deadline - time.monotonic()
            if left <= 0:
                return last
            w = watch.Watch()
            stream = w.stream(
                self._custom().list_namespaced_custom_object, group, version, self.namespace, plural,
                field_selector=f"metadata.name={name}", timeout_seconds=max(1, int(min(left, 60))),
                _request_timeout=(10, min(left, 60) + 10), deserialize=False,
            )  # fmt: skip
            try:
                for event in stream:
                    obj = event.get("object") if isinstance(event, dict) else None
                    if isinstance(obj, dict) and obj.get("metadata", {}).get("name") == name:
                        last = obj
                        if event.get("type") == "DELETED":
                            raise ClusterError(
                                f"InferenceService {self.namespace}/{name} was deleted while starting"
                            )
                        if is_ready(obj):
                            w.stop()
                            break
                    if time.monotonic() >= deadline:
                        w.stop()
                        break
            except ClusterError:
                raise
            except Exception as err:  # noqa: BLE001 - a broken watch: poll once, then watch again
                if getattr(err, "status", None) in (401, 403):
                    raise self._fail(f"watch InferenceService {self.namespace}/{name}", err) from None
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
                last = self.get("InferenceService", name) or last
        return last

    def gone(self, name: str) -> bool:
        """The InferenceService and every pod it had are gone."""
        return self.get("InferenceService", name) is None and not self.pods(name)

    # -- pods ---------------------------------------------------------------------------------------
    def _raw(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        response = self._call(what, fn, *args, _preload_content=False, **kwargs)
        return json.loads(response.data)

    def pods(self, isvc: str) -> list[dict[str, Any]]:
        """The InferenceService's pods (raw JSON), predictor first."""
        data = self._raw(
            f"list pods of {isvc}", self._core().list_namespaced_pod, self.namespace,
            label_selector=f"{ISVC_LABEL}={isvc}",
        )  # fmt: skip
        items = data.get("items") or []
        return sorted(items, key=lambda p: "predictor" not in p.get("metadata", {}).get("name", ""))

    def events(self, name: str) -> list[dict[str, Any]]:
        """Events about the object called ``name`` (a pod or the InferenceService), oldest first."""
        data = self._raw(
            f"list events of {name}", self._core().list_namespaced_event, self.namespace,
            field_selector=f"involvedObject.name={name}",
        )  # fmt: skip
        items = data.get("items") or []
        return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    def logs(self, pod: str, container: str) -> str:
        response = self._call(
            f"read log of {pod}/{container}", self._core().read_namespaced_pod_log, pod, self.namespace,
            container=container, limit_bytes=LOG_LIMIT_BYTES, _preload_content=False,
        )  # fmt: skip
        return scrub_text(response.data.decode("utf-8", "replace"), self.secrets)

    def route_url(self, name: str) -> str | None:
        """``https://HOST`` (``http://`` without TLS) of the Route called ``name``; None if there is none."""
        route = self.get("Route", name)
        if route is None:
            return None
        spec = route.get("spec") or {}
        host = spec.get("host") or next(
            (i.get("host") for i in (route.get("status") or {}).get("ingress") or [] if i.get("host")), None
        )
        if not host:
            return None
        return ("https://" if spec.get("tls") else "http://") + str(host)
