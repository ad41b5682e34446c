"""A fake Kubernetes API server: a TEST DOUBLE for ``backend: kserve`` (no cluster can run here).

What it serves: the subset of the REST API the official ``kubernetes`` client uses for the kserve
backend, as the client expects it on the wire: create, get, replace, delete and ``watch=true``
(chunked JSON lines) for ServingRuntimes, InferenceServices and Routes; pods (list by label),
events (list by ``involvedObject.name``) and container logs; ``Status`` objects for 401, 404 and
409; ``Authorization: Bearer`` checking against the kubeconfig's token.

What it does when an InferenceService is created: it makes a predictor "pod" that is the simulator
(``python -m harness.sim``) started on free ports, reports the pod's events (Scheduled, Pulled,
Created, Started), sets the InferenceService's ``status.url`` (the runtime's first port, like
KServe: its h2c port for gRPC runtimes) and ``Ready=True`` after a short delay, and creates a Route
of the same name. Deleting it stops the simulator. In ``never_ready`` mode the pod stays Pending
with Warning events (FailedScheduling, then an image pull back-off) and Ready stays False.

What it proves: the backend's real code path (the client calls, the watch, the records, the
deletion on every exit path, token handling) works against the API's documented behaviour.
What it cannot prove: that a real KServe controller accepts the objects (the manifests are checked
against KServe's CRD schemas instead, ``tests/test_kserve_manifests.py``), real scheduling, image
pulls, Knative/Route networking, TLS, OpenShift AI's token authentication in front of the model,
RBAC, or timings: none of them exist here.

Run by hand: ``python tests/fake_kube_api.py --kubeconfig /tmp/fake-kube.yaml`` (Ctrl-C stops it).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
CUSTOM = {
    ("serving.kserve.io", "v1alpha1", "servingruntimes"): "ServingRuntime",
    ("serving.kserve.io", "v1beta1", "inferenceservices"): "InferenceService",
    ("route.openshift.io", "v1", "routes"): "Route",
}
ISVC_LABEL = "serving.kserve.io/inferenceservice"
CUSTOM_PATH = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$")
CORE_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|events)(?:/([^/]+)(?:/(log))?)?$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    }  # fmt: skip


@dataclass
class Pod:
    name: str
    isvc: str
    containers: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class FakeKube:
    """The double. ``start()``, ``write_kubeconfig(path)``, then point the kserve backend at it."""

    workdir: Path
    token: str = field(default_factory=lambda: "kube-" + secrets.token_hex(12), repr=False)
    namespace: str = "bench"
    never_ready: bool = False
    ready_delay_s: float = 0.3
    delete_delay_s: float = 0.2
    sim_args: tuple[str, ...] = ("--ttft-ms", "5", "--itl-ms", "1")
    leak_in_logs: str | None = field(
        default=None, repr=False
    )  # a string the "pod" prints to its log (a server echoing a secret)
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (plural, name)
    events: list[dict[str, Any]] = field(default_factory=list)
    pods: dict[str, Pod] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, query)
    bodies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # as POSTed/PUT
    auth_seen: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 0
        self.httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> FakeKube:
        handler = type("Handler", (_Handler,), {"fake": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake-user", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-user",
                                                      "namespace": self.namespace}}],
        }  # fmt: skip
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def close(self) -> None:
        for pod in list(self.pods.values()):
            self._stop_sim(pod)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests ask -----------------------------------------------------------------------------
    def calls(self, method: str, plural: str) -> list[str]:
        """Paths of the ``method`` requests on ``plural`` (``inferenceservices``...)."""
        return [p for m, p, _ in self.requests if m == method and f"/{plural}" in p]

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
        return True

    # -- state changes (hold self.cond) -------------------------------------------------------------
    def _put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.objects[(plural, obj["metadata"]["name"])] = obj
        self.cond.notify_all()
        return obj

    def _event(self, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        self.rv += 1
        self.events.append({
            "apiVersion": "v1", "kind": "Event", "type": type_, "reason": reason, "message": message,
            "metadata": {"name": f"{name}.{self.rv:x}", "namespace": self.namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": self.namespace},
            "lastTimestamp": now(), "count": 1,
        })  # fmt: skip

    def _isvc_status(self, name: str, ready: bool, url: str | None, reason: str, message: str) -> None:
        obj = self.objects.get(("inferenceservices", name))
        if obj is None:
            return
        obj = copy.deepcopy(obj)
        state = "True" if ready else "False"
        conditions = [
            {"type": t, "status": state, "lastTransitionTime": now(), **({} if ready else {"reason": reason, "message": message})}
            for t in ("IngressReady", "PredictorReady", "Ready")
        ]  # fmt: skip
        obj["status"] = {"conditions": conditions, **({"url": url, "address": {"url": url}} if url else {})}
        self._put("inferenceservices", obj)

    # -- the "controller" ---------------------------------------------------------------------------
    def _created_isvc(self, isvc: dict[str, Any]) -> None:
        name = isvc["metadata"]["name"]
        model = isvc["spec"]["predictor"]["model"]
        runtime = self.objects.get(("servingruntimes", model.get("runtime", "")))
        containers = (runtime or {}).get("spec", {}).get("containers") or [{"name": "kserve-container"}]
        pod = Pod(f"{name}-predictor-{secrets.token_hex(3)}", name, [c["name"] for c in containers],
                  self.workdir / f"{name}.log")  # fmt: skip
        self.pods[pod.name] = pod
        self._put("pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": self.namespace,
                         "labels": {ISVC_LABEL: name, "component": "predictor"}},
            "spec": {"containers": [{"name": c} for c in pod.containers]},
            "status": {"phase": "Pending"},
        })  # fmt: skip
        self._isvc_status(name, False, None, "PredictorNotReady", "Predictor is not ready")
        threading.Thread(target=self._bring_up, args=(name, pod, containers, model), daemon=True).start()

    def _bring_up(self, name: str, pod: Pod, containers: list[dict[str, Any]], model: dict[str, Any]) -> None:
        if self.never_ready:
            with self.cond:
                self._event("Pod", pod.name, "Warning", "FailedScheduling",
                            "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes "
                            "are available: 3 No preemption victims found for incoming pod.")  # fmt: skip
                self._event(
                    "Pod",
                    pod.name,
                    "Warning",
                    "Failed",
                    'Failed to pull image "quay.io/modh/vllm:rhoai-2.19-cuda": ImagePullBackOff',
                )
                self.cond.notify_all()
            return
        http_port, grpc_port = free_port(), free_port()
        served = name
        for arg in model.get("args") or []:
            if str(arg).startswith("--served-model-name="):
                served = str(arg).split("=", 1)[1]
        command = [sys.executable, "-m", "harness.sim", "--port", str(http_port), "--grpc-port",
                   str(grpc_port), "--model", served, *self.sim_args]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with pod.log.open("wb") as log:
            if self.leak_in_logs:
                log.write(f"request headers: Authorization: Bearer {self.leak_in_logs}\n".encode())
                log.flush()
            pod.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)  # fmt: skip
        with self.cond:
            for reason, message in (("Scheduled", f"Successfully assigned {self.namespace}/{pod.name}"),
                                    ("Pulled", "Container image already present on machine"),
                                    ("Created", "Created container kserve-container")):  # fmt: skip
                self._event("Pod", pod.name, "Normal", reason, message)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pod.proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        time.sleep(self.ready_delay_s)
        serving = next((c for c in containers if c.get("name") == "transformer-container"), containers[0])
        ports = serving.get("ports") or [{}]
        port = grpc_port if ports[0].get("name") == "h2c" else http_port
        url = f"http://127.0.0.1:{port}"
        with self.cond:
            if ("inferenceservices", name) not in self.objects:
                return  # deleted while starting
            self._event("Pod", pod.name, "Normal", "Started", "Started container kserve-container")
            pod_obj = copy.deepcopy(self.objects[("pods", pod.name)])
            pod_obj["status"] = {"phase": "Running"}
            self._put("pods", pod_obj)
            self._put("routes", {
                "apiVersion": "route.openshift.io/v1", "kind": "Route",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"host": f"127.0.0.1:{port}", "to": {"kind": "Service", "name": f"{name}-predictor"}},
            })  # fmt: skip
            self._isvc_status(name, True, url, "", "")

    def _stop_sim(self, pod: Pod) -> None:
        if pod.proc is not None and pod.proc.poll() is None:
            try:
                os.killpg(pod.proc.pid, signal.SIGTERM)
                pod.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait()

    def _deleted_isvc(self, name: str) -> None:
        """Foreground deletion: the pods go (their sim stopped), then the InferenceService and its Route."""
        for pod in [p for p in self.pods.values() if p.isvc == name]:
            self._stop_sim(pod)
        time.sleep(self.delete_delay_s)
        with self.cond:
            for pod in [p for p in self.pods.values() if p.isvc == name]:
                self.objects.pop(("pods", pod.name), None)
            self.objects.pop(("routes", name), None)
            self.objects.pop(("inferenceservices", name), None)
            self.rv += 1
            self.cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKube

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
        return

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    def _route(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        body = self._body() if method in ("POST", "PUT", "DELETE") else {}
        with fake.cond:
            fake.requests.append((method, parts.path, parts.query))
            fake.auth_seen.append(self.headers.get("Authorization", ""))
            fake.cond.notify_all()
        if self.headers.get("Authorization") != f"Bearer {fake.token}":
            return self._send(401, status(401, "Unauthorized", "Unauthorized"))
        custom, core = CUSTOM_PATH.match(parts.path), CORE_PATH.match(parts.path)
        if (
            custom
            and custom.group(3) == fake.namespace
            and custom.groups()[:2] + (custom.group(4),) in CUSTOM
        ):
            group, version, _, plural, name = custom.groups()
            return self._custom(method, plural, name, query, body, f"{plural}.{group}")
        if core and core.group(1) == fake.namespace and method == "GET":
            _, plural, name, sub = core.groups()
            return self._core(plural, name, sub, query)
        self._send(404, status(404, "NotFound", "the server could not find the requested resource"))

    def _custom(self, method: str, plural: str, name: str | None, query: dict[str, str], body: dict[str, Any],
                resource: str) -> None:  # fmt: skip
        fake = self.fake
        if name is None and method == "GET" and query.get("watch") in ("true", "1"):
            return self._watch(plural, query)
        if name is None and method == "POST":
            name = body.get("metadata", {}).get("name", "")
            with fake.cond:
                if (plural, name) in fake.objects:
                    return self._send(409, status(409, "AlreadyExists", f'{resource} "{name}" already exists',
                                                  name=name, kind=plural))  # fmt: skip
                obj = copy.deepcopy(body)
                obj["metadata"].update(namespace=fake.namespace, uid=secrets.token_hex(8), creationTimestamp=now(),
                                       generation=1)  # fmt: skip
                fake.bodies[(plural, name)] = copy.deepcopy(body)
                created = copy.deepcopy(fake._put(plural, obj))
                if plural == "inferenceservices":
                    fake._created_isvc(obj)
            return self._send(201, created)
        with fake.cond:
            obj = copy.deepcopy(fake.objects.get((plural, name or "")))
        if obj is None:
            return self._send(
                404, status(404, "NotFound", f'{resource} "{name}" not found', name=name, kind=plural)
            )
        if method == "GET":
            return self._send(200, obj)
        if method == "PUT":
            with fake.cond:
                fake.bodies[(plural, name or "")] = copy.deepcopy(body)
                replaced = copy.deepcopy(fake._put(plural, copy.deepcopy(body)))
            return self._send(200, replaced)
        if method == "DELETE":
            if plural == "inferenceservices":
                threading.Thread(target=fake._deleted_isvc, args=(name,), daemon=True).start()
            else:
                with fake.cond:
                    fake.objects.pop((plural, name or ""), None)
            return self._send(
                200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
            )
        self._send(405, status(405, "MethodNotAllowed", f"{method} is not supported here"))

    def _watch(self, plural: str, query: dict[str, str]) -> None:
        """``watch=true``: chunked JSON lines (ADDED, MODIFIED, DELETED) until ``timeoutSeconds``."""
        fake = self.fake
        selector = query.get("fieldSelector", "")
        name = selector.removeprefix("metadata.name=") if selector.startswith("metadata.name=") else None
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        seen: dict[str, str] = {}
        try:
            while True:
                with fake.cond:
                    current = {n: copy.deepcopy(o) for (p, n), o in fake.objects.items()
                               if p == plural and name in (None, n)}  # fmt: skip
                out = []
                for n, obj in current.items():
                    rv = obj["metadata"]["resourceVersion"]
                    if seen.get(n) != rv:
                        out.append({"type": "MODIFIED" if n in seen else "ADDED", "object": obj})
                        seen[n] = rv
                for n in [n for n in seen if n not in current]:
                    out.append({"type": "DELETED", "object": {"metadata": {"name": n}}})
                    del seen[n]
                for event in out:
                    line = json.dumps(event).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with fake.cond:
                    fake.cond.wait(min(left, 0.2))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _core(self, plural: str, name: str | None, sub: str | None, query: dict[str, str]) -> None:
        fake = self.fake
        if plural == "pods" and name and sub == "log":
            pod = fake.pods.get(name)
            if pod is None:
                return self._send(404, status(404, "NotFound", f'pods "{name}" not found'))
            text = pod.log.read_bytes() if pod.log.exists() else b""
            if query.get("container") not in (None, "kserve-container"):
                text = f"(the double runs no {query.get('container')}; the sim serves for the pod)\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return None
        with fake.cond:
            if plural == "pods":
                key, _, value = query.get("labelSelector", "").partition("=")
                items = [copy.deepcopy(o) for (p, _n), o in fake.objects.items()
                         if p == "pods" and (not key or o["metadata"]["labels"].get(key) == value)]  # fmt: skip
                kind = "PodList"
            else:
                involved = query.get("fieldSelector", "").removeprefix("involvedObject.name=")
                items = [
                    copy.deepcopy(e)
                    for e in fake.events
                    if not involved or e["involvedObject"]["name"] == involved
                ]
                kind = "EventList"
        self._send(
            200,
            {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(fake.rv)}, "items": items},
        )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="run the fake Kubernetes API (a test double) until Ctrl-C")
    parser.add_argument(
        "--kubeconfig", type=Path, required=True, help="write a kubeconfig pointing at it here"
    )
    parser.add_argument("--never-ready", action="store_true")
    ns = parser.parse_args()
    workdir = ns.kubeconfig.parent / "fake-kube-pods"
    workdir.mkdir(parents=True, exist_ok=True)
    fake = FakeKube(workdir, never_ready=ns.never_ready).start()
    fake.write_kubeconfig(ns.kubeconfig)
    print(f"fake Kubernetes API (test double) on {fake.url}; kubeconfig {ns.kubeconfig}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.close()


if __name__ == "__main__":
    main()
