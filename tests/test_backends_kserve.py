"""``backend: kserve`` against the fake Kubernetes API (``tests/fake_kube_api.py``, a test double).

What these prove: the real client calls and their order (runtime get/create, InferenceService
create, watch until Ready, pods/events/logs, delete and wait gone), the InferenceService the cell
builds (args from settings, replicas pinned), the records, the handle (token in headers only, pod
and namespace set), the Ready timeout's message with the pod events, deletion on every exit path,
token handling, and scenario validation. What they cannot prove is listed in the double's
docstring and in servers/README.md: no real KServe, scheduler, network or auth is involved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fake_kube_api import FakeKube
from harness.backends.base import BackendStartError
from harness.backends.kserve import SPEC, KserveBackend
from harness.backends.registry import launch
from harness.matrix import Cell
from harness.scenario import ScenarioError, Server, parse_scenario

REPO = Path(__file__).resolve().parents[1]
INFERENCE_TOKEN = "sha256~inference-token-3f9a1c7e"


@pytest.fixture()
def fake(tmp_path: Path) -> Iterator[FakeKube]:
    with FakeKube(tmp_path / "pods") as double:
        (tmp_path / "pods").mkdir()
        yield double


def _server(fake: FakeKube, tmp: Path, **deploy: object) -> Server:
    kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig.yaml")
    return Server(
        name="vllm-a",
        backend="kserve",
        model="pvc://models/tiny",
        startup_timeout_s=deploy.pop("timeout", 30),  # type: ignore[arg-type]
        settings=deploy.pop("settings", {}),  # type: ignore[arg-type]
        deploy={"runtime": "vllm", "kubeconfig": str(kubeconfig), **deploy},
    )


def _cell(server: Server, settings: dict | None = None, protocol: str = "completions") -> Cell:
    return Cell("c0", server, dict(settings or {}), protocol=protocol)


def test_full_cycle_creates_waits_records_and_deletes(fake: FakeKube, tmp_path: Path) -> None:
    server = _server(fake, tmp_path, settings={"max_num_seqs": 16, "dtype": "bfloat16"})
    cell = _cell(server, {"max_num_seqs": 16, "dtype": "bfloat16"})
    work = tmp_path / "cell"
    with launch(cell, work, home=REPO) as handle:
        name = handle.served_model
        assert fake.objects[("inferenceservices", name)]["status"]["url"] == handle.base_url
        assert handle.pod is not None and handle.pod.startswith(f"{name}-predictor-")
        assert handle.namespace == "bench" and handle.pid is None
        assert handle.headers == {"Authorization": f"Bearer {fake.token}"}  # kubeconfig token
        assert fake.calls("DELETE", "inferenceservices") == []
    # the ServingRuntime was created once, the InferenceService carries the cell's settings
    assert len(fake.calls("POST", "servingruntimes")) == 1
    isvc = fake.bodies[("inferenceservices", name)]
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == predictor["maxReplicas"] == 1
    assert predictor["model"]["runtime"] == "tokenbench-vllm"
    assert predictor["model"]["storageUri"] == "pvc://models/tiny"
    assert predictor["model"]["args"] == ["--dtype=bfloat16", "--max-num-seqs=16"]
    assert isvc["metadata"]["annotations"]["tokenbench.io/cell"] == "c0"
    # deleted, and waited for: the pod is gone, its sim stopped
    assert fake.calls("DELETE", "inferenceservices") == [
        f"/apis/serving.kserve.io/v1beta1/namespaces/bench/inferenceservices/{name}"
    ]
    assert ("inferenceservices", name) not in fake.objects
    assert all(p.proc is None or p.proc.poll() is not None for p in fake.pods.values())
    # records: applied YAML, events, the container log
    applied = yaml.safe_load((work / "kserve" / "inferenceservice.yaml").read_text())
    assert applied["spec"]["predictor"]["model"]["args"] == ["--dtype=bfloat16", "--max-num-seqs=16"]
    assert yaml.safe_load((work / "kserve" / "servingruntime.yaml").read_text())["kind"] == "ServingRuntime"
    events = (work / "kserve" / "events.txt").read_text()
    assert "Normal Scheduled Pod/" in events and "Started" in events
    assert "harness.sim" in (work / "server.log").read_text() or (work / "server.log").stat().st_size > 0
    assert "gone after" in (work / "kserve" / "deleted.txt").read_text()
    # every API call authenticated with the kubeconfig's token
    assert set(fake.auth_seen) == {f"Bearer {fake.token}"}


def test_stop_is_idempotent_and_a_second_cell_reuses_the_same_runtime(fake: FakeKube, tmp_path: Path) -> None:
    server = _server(fake, tmp_path)
    backend = KserveBackend(home=REPO)
    backend.start(_cell(server), tmp_path / "a")
    backend.stop()
    backend.stop()
    assert len(fake.calls("DELETE", "inferenceservices")) == 1
    with launch(_cell(server), tmp_path / "b", home=REPO):
        pass
    assert len(fake.calls("POST", "servingruntimes")) == 1  # the existing one is the same: kept
    assert len(fake.calls("POST", "inferenceservices")) == 2
    assert len(fake.calls("DELETE", "inferenceservices")) == 2


def test_a_different_runtime_of_the_same_name_is_refused_unless_replace(
    fake: FakeKube, tmp_path: Path
) -> None:
    runtime = yaml.safe_load((REPO / "servers/kserve/vllm.yaml").read_text())
    runtime["spec"]["containers"][0]["image"] = "example.com/someone-elses:1"
    with fake.cond:
        fake._put("servingruntimes", runtime)
    server = _server(fake, tmp_path)
    with pytest.raises(BackendStartError) as err, launch(_cell(server), tmp_path / "a", home=REPO):
        pass
    assert "ServingRuntime bench/tokenbench-vllm exists and differs" in str(err.value)
    assert "spec.containers[0].image" in str(err.value) and "replace_runtime" in str(err.value)
    assert fake.calls("POST", "inferenceservices") == []
    replacing = _server(fake, tmp_path, replace_runtime=True)
    with launch(_cell(replacing), tmp_path / "b", home=REPO):
        pass
    assert len(fake.calls("PUT", "servingruntimes")) == 1
    assert fake.objects[("servingruntimes", "tokenbench-vllm")]["spec"]["containers"][0]["image"].startswith(
        "quay.io/"
    )


def test_ready_timeout_is_a_clear_error_with_the_pod_events_and_still_deletes(tmp_path: Path) -> None:
    (tmp_path / "pods").mkdir()
    with FakeKube(tmp_path / "pods", never_ready=True) as fake:
        server = _server(fake, tmp_path, timeout=2)
        started = time.monotonic()
        with (
            pytest.raises(BackendStartError) as err,
            launch(_cell(server), tmp_path / "cell", home=REPO),
        ):
            pass
        assert time.monotonic() - started < 30
        message = str(err.value)
        assert "was not Ready within 2 s (servers[].startup_timeout_s)" in message
        assert "Ready=False (PredictorNotReady)" in message
        assert "Warning FailedScheduling" in message and "Insufficient nvidia.com/gpu" in message
        assert "ImagePullBackOff" in message
        assert any("FailedScheduling" in line for line in err.value.log_tail)
        assert len(fake.calls("DELETE", "inferenceservices")) == 1
        assert fake.wait_for(lambda: not any(p == "inferenceservices" for p, _ in fake.objects), 10)
        assert "FailedScheduling" in (tmp_path / "cell" / "kserve" / "events.txt").read_text()


def test_a_refused_kubeconfig_token_is_a_clear_error_without_the_token(
    fake: FakeKube, tmp_path: Path
) -> None:
    wrong = "sha256~wrong-token-0a1b2c3d4e"
    kubeconfig = fake.write_kubeconfig(tmp_path / "bad.yaml", token=wrong)
    server = _server(fake, tmp_path)
    server.deploy = {**(server.deploy or {}), "kubeconfig": str(kubeconfig)}
    with pytest.raises(BackendStartError) as err, launch(_cell(server), tmp_path / "cell", home=REPO):
        pass
    assert "HTTP 401" in str(err.value) and "oc login" in str(err.value)
    assert wrong not in str(err.value)
    assert fake.calls("POST", "inferenceservices") == []


def test_token_env_is_the_inference_token_and_must_be_set(
    fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _server(fake, tmp_path, token_env="TB_TEST_ISVC_TOKEN")
    monkeypatch.delenv("TB_TEST_ISVC_TOKEN", raising=False)
    with pytest.raises(BackendStartError, match="'TB_TEST_ISVC_TOKEN', which is not set"):
        with launch(_cell(server), tmp_path / "a", home=REPO):
            pass
    monkeypatch.setenv("TB_TEST_ISVC_TOKEN", INFERENCE_TOKEN)
    with launch(_cell(server), tmp_path / "b", home=REPO) as handle:
        assert handle.headers == {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
        public = repr(handle) + str(handle.public_dict())
        assert INFERENCE_TOKEN not in public and fake.token not in public
    assert set(fake.auth_seen) == {f"Bearer {fake.token}"}  # the API still uses the kubeconfig's


def test_secrets_echoed_by_the_pod_are_scrubbed_from_every_record(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pods").mkdir()
    with FakeKube(tmp_path / "pods", leak_in_logs=INFERENCE_TOKEN) as fake:
        monkeypatch.setenv("TB_TEST_ISVC_TOKEN", INFERENCE_TOKEN)
        server = _server(fake, tmp_path, token_env="TB_TEST_ISVC_TOKEN")
        server.args = [f"--api-key={fake.token}"]
        with launch(_cell(server), tmp_path / "cell", home=REPO):
            pass
        assert (
            INFERENCE_TOKEN
            in (tmp_path / "pods").joinpath(next(iter(fake.pods.values())).log.name).read_text()
        )
        for path in (tmp_path / "cell").rglob("*"):
            if path.is_file():
                text = path.read_text()
                assert INFERENCE_TOKEN not in text and fake.token not in text, path
        assert "--api-key=REDACTED" in (tmp_path / "cell/kserve/inferenceservice.yaml").read_text()


def test_url_from_a_named_route(fake: FakeKube, tmp_path: Path) -> None:
    server = _server(fake, tmp_path, route="{name}")
    with launch(_cell(server), tmp_path / "cell", home=REPO) as handle:
        route = fake.objects[("routes", handle.served_model)]
        assert handle.base_url == "http://" + route["spec"]["host"]
    assert any("/routes/" in p for p in fake.calls("GET", "routes"))


def test_tgis_runtime_is_driven_over_grpc_at_its_h2c_port(fake: FakeKube, tmp_path: Path) -> None:
    server = _server(fake, tmp_path, settings={"max_batch_size": 8})
    server.deploy = {**(server.deploy or {}), "runtime": "tgis"}
    with launch(_cell(server, {"max_batch_size": 8}, protocol="tgis"), tmp_path / "c", home=REPO) as handle:
        assert handle.grpc_target == handle.base_url.removeprefix("http://")
    args = fake.bodies[("inferenceservices", handle.served_model)]["spec"]["predictor"]["model"]["args"]
    assert args == ["--max-batch-size=8"]


def _scenario(**server: object) -> dict:
    base = {"name": "s", "backend": "kserve", "model": "pvc://models/m", "deploy": {"runtime": "vllm"}}
    return {
        "name": "k", "servers": [{**base, **server}],
        "workload": {"prompt_tokens": 4, "output_tokens": 4, "steps": {"concurrency": [1]}, "requests": 2},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"deploy": {"runtime": "nope"}}, "servers[0].deploy.runtime: Input should be 'vllm', 'tgi'"),
        ({"deploy": {"runtime": "vllm", "namespac": "x"}}, "servers[0].deploy.namespac: unknown key"),
        (
            {"deploy": {"runtime": "tgis"}, "api": "completions"},
            "does not serve api 'completions' (it serves: tgis)",
        ),
        ({"backend": "sim", "model": "m"}, "servers[0].deploy: backend 'sim' takes no 'deploy' block"),
    ],
)
def test_scenario_rejects_bad_deploy_blocks(server: dict, expected: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_scenario(**server), "k.yaml")
    assert expected in str(err.value)


def test_settings_are_judged_by_the_runtime_table() -> None:
    scenario = parse_scenario(
        _scenario(deploy={"runtime": "tgi"}, settings={"max_num_seqs": 4, "max_batch_size": [0, 8]})
    )
    errors = SPEC.validate(scenario.servers[0])
    assert any("settings.max_num_seqs: unknown KServe setting" in e for e in errors)
    assert any("settings.max_batch_size: must be >= 1, got 0" in e for e in errors)
    missing = parse_scenario(_scenario(deploy=None, model="mistral"))
    errors = SPEC.validate(missing.servers[0])
    assert any("needs a 'deploy' block" in e for e in errors)
    assert any("model: a KServe storageUri" in e for e in errors)


def test_cell_identity_follows_the_runtime_not_the_cluster() -> None:
    from harness.matrix import expand_cells

    def identity(deploy: dict) -> str:
        return expand_cells(parse_scenario(_scenario(deploy=deploy)))[0].identity

    base = identity({"runtime": "vllm", "namespace": "a", "kubeconfig": "/x", "token_env": "T"})
    assert identity({"runtime": "vllm", "namespace": "b", "context": "other"}) == base
    assert identity({"runtime": "tgi"}) != base
    assert identity({"runtime": "vllm", "resources": {"limits": {"nvidia.com/gpu": "2"}}}) != base


def test_a_name_clash_is_an_error_and_the_other_inferenceservice_is_left_alone(
    fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fake.cond:
        fake._put("inferenceservices", {"metadata": {"name": "tb-taken-000000"}, "spec": {}})
    monkeypatch.setattr("harness.backends.kserve.isvc_name", lambda server: "tb-taken-000000")
    with pytest.raises(BackendStartError, match="HTTP 409"):
        with launch(_cell(_server(fake, tmp_path)), tmp_path / "cell", home=REPO):
            pass
    assert fake.calls("DELETE", "inferenceservices") == []
    assert ("inferenceservices", "tb-taken-000000") in fake.objects
