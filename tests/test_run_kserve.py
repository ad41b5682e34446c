"""``tokenbench run`` with ``backend: kserve`` against the fake Kubernetes API (a TEST DOUBLE).

The harness is a real subprocess (as a user runs it), configured only through ``$KUBECONFIG`` and
the token variable; the double runs in the test process and records every request. Proves: the
whole cycle through the orchestrator (cells ok, records in each cell folder), the tokens never
reaching a file, and the InferenceService deleted when the harness is interrupted (SIGINT) while
it waits for Ready and while load runs. What the double cannot prove: see tests/fake_kube_api.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fake_kube_api import FakeKube

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "tests/data/kserve/fake-kserve.yaml"
ISVC_TOKEN = "sha256~isvc-token-5e8d2b7a90"


@pytest.fixture()
def fake(tmp_path: Path) -> Iterator[FakeKube]:
    (tmp_path / "pods").mkdir()
    with FakeKube(tmp_path / "pods") as double:
        yield double


def _env(fake: FakeKube, tmp: Path) -> dict[str, str]:
    kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig.yaml")
    return {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "TB_FAKE_ISVC_TOKEN": ISVC_TOKEN,
        "PYTHONPATH": str(REPO),
    }


def _run(*args: object, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", *map(str, args)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _one_cell_scenario(tmp: Path, **workload: object) -> Path:
    data = yaml.safe_load(SCENARIO.read_text())
    data["servers"] = data["servers"][:1]
    data["servers"][0]["settings"] = {"max_num_seqs": 8}
    data["workload"].update(workload)
    path = tmp / "one.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_full_kserve_run_records_every_cell_and_never_writes_a_token(fake: FakeKube, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    proc = _run(SCENARIO, "--out", out, env=_env(fake, tmp_path))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    run = next(out.glob("*-fake-kserve"))
    summary = json.loads((run / "summary.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["ok", "ok", "ok"], output
    assert all(c["steps"] for c in summary["cells"])
    # one InferenceService per cell, each created once and deleted once; one runtime per kind
    posts, deletes = fake.calls("POST", "inferenceservices"), fake.calls("DELETE", "inferenceservices")
    assert len(posts) == 3 and len(deletes) == 3
    assert sorted(n for p, n in fake.bodies if p == "servingruntimes") == [
        "tokenbench-tgis",
        "tokenbench-vllm",
    ]
    assert not any(p == "inferenceservices" for p, _ in fake.objects)
    seqs = sorted(
        b["spec"]["predictor"]["model"]["args"]
        for (p, _), b in fake.bodies.items()
        if p == "inferenceservices"
    )
    assert seqs == [["--max-batch-size=8"], ["--max-num-seqs=16"], ["--max-num-seqs=8"]]
    for cell in summary["cells"]:
        folder = run / "cells" / cell["cell_id"]
        for record in (
            "kserve/inferenceservice.yaml",
            "kserve/servingruntime.yaml",
            "kserve/events.txt",
            "server.log",
        ):
            assert (folder / record).is_file(), (cell["cell_id"], record)
    # neither the inference token nor the kubeconfig's reaches any file of the run
    for path in run.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert ISVC_TOKEN.encode() not in data and fake.token.encode() not in data, path


def _interrupt_when(
    proc: subprocess.Popen[str], fake: FakeKube, ready: object, signum: int = signal.SIGINT
) -> str:
    if not fake.wait_for(ready, 120):
        proc.kill()
        raise AssertionError("the harness never got there:\n" + (proc.communicate()[0] or ""))
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)
    return output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_waiting_for_ready_deletes_the_inferenceservice(tmp_path: Path, signum: int) -> None:
    (tmp_path / "pods").mkdir()
    with FakeKube(tmp_path / "pods", never_ready=True) as fake:
        scenario = _one_cell_scenario(tmp_path)
        proc = _run(scenario, "--out", tmp_path / "reports", "--set", "servers.0.startup_timeout_s=600",
                    env=_env(fake, tmp_path))  # fmt: skip
        watching = lambda: any("watch=true" in q for _, _, q in fake.requests)  # noqa: E731
        output = _interrupt_when(proc, fake, watching, signum)
        assert proc.returncode != 0
        assert len(fake.calls("POST", "inferenceservices")) == 1
        assert len(fake.calls("DELETE", "inferenceservices")) == 1, output
        assert fake.wait_for(lambda: not any(p == "inferenceservices" for p, _ in fake.objects), 10)
        summary = json.loads(next((tmp_path / "reports").glob("*/summary.json")).read_text())
        assert summary["cells"][0]["status"] == "interrupted"


def test_sigint_during_load_deletes_the_inferenceservice(fake: FakeKube, tmp_path: Path) -> None:
    scenario = _one_cell_scenario(tmp_path, requests=None, duration_s=60)
    reports = tmp_path / "reports"
    proc = _run(scenario, "--out", reports, env=_env(fake, tmp_path))

    def loading() -> bool:  # requests have been answered: the step spools records as it goes
        return any(reports.glob("*/cells/*/steps/*/records.parquet.parts/*"))

    deadline = time.monotonic() + 120
    while not loading() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert loading() and proc.poll() is None, "the load never started"
    assert fake.calls("DELETE", "inferenceservices") == []
    output = _interrupt_when(proc, fake, lambda: True)
    assert len(fake.calls("DELETE", "inferenceservices")) == 1, output
    assert fake.wait_for(
        lambda: all(p.proc is None or p.proc.poll() is not None for p in fake.pods.values()), 10
    )


def test_validate_names_the_file_and_field_of_a_bad_deploy_block(tmp_path: Path) -> None:
    data = yaml.safe_load(SCENARIO.read_text())
    data["servers"][0]["deploy"]["runtime"] = "triton"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "validate", str(path)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{path}: invalid scenario" in proc.stderr + proc.stdout
    assert "servers[0].deploy.runtime" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
