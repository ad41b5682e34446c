"""The shipped CI recipes (docs/ci/) are valid, consistent and do what docs/ci.md says, offline.

* GitHub Actions: ``check-jsonschema --builtin-schema vendor.github-workflows`` (the schema ships inside
  the package), its Benchmark step run in bash with ``make`` replaced by a double that only creates a run
  folder (proves the run folder is found without PyYAML or any interpreter), and its timeout against the
  scenario's own length.
* Tekton: every object against the Tekton v1 CRD schemas in ``tests/data/tekton/`` (README there), with
  unknown fields rejected as ``kubectl --validate=strict`` would; the references the admission webhook
  resolves (params, workspaces, results, step exit codes, pipeline tasks); and the ``collect`` step run in
  bash: a regression (exit 1) keeps the artifacts *and* fails the TaskRun.

What this does not prove: that the runner has a GPU, that the images pull, or Tekton's own webhook rules
beyond the references checked here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from harness.matrix import expand_cells, expand_steps
from harness.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "docs" / "ci"
WORKFLOW = CI / "github-actions.yml"
TEKTON = CI / "tekton.yaml"
PIPELINERUN = CI / "tekton-pipelinerun.yaml"
SCHEMAS = Path(__file__).parent / "data" / "tekton"
SETUP_MINUTES = 20  # harness venv + a first vLLM environment build (minutes on a GPU runner)


def _check_jsonschema() -> str:
    return str(Path(sys.executable).with_name("check-jsonschema"))


def test_workflow_validates_against_the_github_workflow_schema() -> None:
    res = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok -- validation done" in res.stdout


def test_the_workflow_schema_check_does_reject_a_broken_workflow(tmp_path: Path) -> None:
    broken = yaml.safe_load(WORKFLOW.read_text())
    broken["jobs"]["gate"]["timeout-minutes"] = "ninety"
    broken["jobs"]["gate"]["stepz"] = broken["jobs"]["gate"].pop("steps")
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    res = subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout


def _minimum_minutes(scenario_path: Path, repeats: int) -> float:
    """Load time (every cell × step, warm-up included) plus each server's startup budget plus setup:
    shorter than this, CI could kill a run that the harness itself would still finish."""
    sc = load_scenario(scenario_path, [f"repeats={repeats}"])
    cells, steps = expand_cells(sc), expand_steps(sc)
    w = sc.workload
    assert w.duration_s is not None, "a CI scenario with a time-bounded load"
    load_s = len(cells) * len(steps) * (w.warmup_s + w.duration_s)
    starts_s = sum(c.server.startup_timeout_s for c in cells)
    return (load_s + starts_s) / 60 + SETUP_MINUTES


def _duration_minutes(text: str) -> float:
    """A Go duration as Tekton takes it (``5h30m``, ``15m``)."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, text
    h, m, s = (int(x or 0) for x in parts.groups())
    return h * 60 + m + s / 60


def test_workflow_timeout_covers_the_scenario() -> None:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]
    need = _minimum_minutes(REPO / job["env"]["SCENARIO"], int(job["env"]["REPEATS"]))
    assert need > 90  # the old recipe's 90 minutes could not have finished
    assert job["timeout-minutes"] >= need, f"timeout-minutes {job['timeout-minutes']} < {need:.0f}"


def test_workflow_gpu_environment_is_built_by_make_bench(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`make bench` runs `tokenbench setup --for SCENARIO`: on a GPU runner that is vllm-gpu."""
    import harness.rundir
    from harness.assets import required_environments

    monkeypatch.setattr(harness.rundir, "_gpus", lambda: {"count": 1, "name": "NVIDIA A10G", "driver": "550"})
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]
    assert required_environments(load_scenario(REPO / job["env"]["SCENARIO"]), tmp_path) == ["vllm-gpu"]
    bench = next(s for s in job["steps"] if s.get("id") == "bench")["run"]
    assert "make bench" in bench and "import yaml" not in WORKFLOW.read_text()


def _fake_make(tmp: Path) -> Path:
    """A double for `make`: creates the run folder `tokenbench run --out DIR` would, and exits 1 like a
    run with a failed cell (the step must go on)."""
    bindir = tmp / "bin"
    bindir.mkdir()
    make = bindir / "make"
    make.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do case $a in RUN_ARGS=*) args=${a#RUN_ARGS=};; esac; done\n'
        'out=${args##*--out }; mkdir -p "$out/20260101T000000Z-mistral-7b-a10g"; echo "make $*"; exit 1\n'
    )
    make.chmod(0o755)
    return bindir


def test_workflow_benchmark_step_finds_the_run_folder(tmp_path: Path) -> None:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]
    script = next(s for s in job["steps"] if s.get("id") == "bench")["run"]
    output = tmp_path / "github_output"
    env = {
        "PATH": f"{_fake_make(tmp_path)}:/usr/bin:/bin",  # no python on purpose
        "RUNNER_TEMP": str(tmp_path / "runner"),
        "GITHUB_OUTPUT": str(output),
        **{k: str(v) for k, v in job["env"].items()},
    }
    res = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bench exited 1" in res.stdout and "--set repeats=2" in res.stdout
    assert output.read_text() == f"run={tmp_path}/runner/tokenbench-runs/20260101T000000Z-mistral-7b-a10g\n"


# -- Tekton -------------------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """An OpenAPI v3 structural schema (Kubernetes CRD) as a JSON Schema with unknown fields rejected."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out and "additionalProperties" not in out:
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def _validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / f"{kind}-v1.schema.json").read_text())
    return jsonschema.Draft7Validator(_strict(schema))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _tekton() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = {d["kind"]: d for d in _docs(TEKTON)}
    assert sorted(docs) == ["Pipeline", "Task"] and all(
        d["apiVersion"] == "tekton.dev/v1" for d in docs.values()
    )
    return docs["Task"], docs["Pipeline"]


def test_tekton_objects_validate_against_the_v1_crd_schemas() -> None:
    task, pipeline = _tekton()
    assert _errors(_validator("task"), task) == []
    assert _errors(_validator("pipeline"), pipeline) == []
    for pt in pipeline["spec"]["tasks"] + pipeline["spec"]["finally"]:
        if "taskSpec" in pt:  # kept as unknown fields by the Pipeline CRD: check it as a Task's spec
            embedded = {"apiVersion": "tekton.dev/v1", "kind": "Task", "metadata": {"name": pt["name"]}}
            assert _errors(_validator("task"), {**embedded, "spec": pt["taskSpec"]}) == []
    (run,) = _docs(PIPELINERUN)
    assert run["kind"] == "PipelineRun" and _errors(_validator("pipelinerun"), run) == []


def test_the_crd_schemas_do_reject_mistakes() -> None:
    task, _ = _tekton()
    bad = json.loads(json.dumps(task))
    bad["spec"]["steps"][0]["onErorr"] = "continue"  # a typo: an unknown field
    bad["spec"]["steps"][1]["volumeMounts"] = [{"name": "work"}]  # mountPath is required
    bad["spec"]["steps"][0]["env"] = {"SCENARIO": "x"}  # a list of name/value objects, not a map
    errors = _errors(_validator("task"), bad)
    assert len(errors) == 3, errors
    assert any("onErorr" in e for e in errors) and any("mountPath" in e for e in errors)
    assert any(e.startswith("spec/steps/0/env:") for e in errors)


REF = re.compile(r"\$\((params|workspaces|results|steps)\.([A-Za-z0-9_.-]+?)\)")


def _refs(node: Any) -> list[tuple[str, str]]:
    text = json.dumps(node)
    return REF.findall(text)


def test_tekton_task_references_resolve() -> None:
    task, _ = _tekton()
    spec = task["spec"]
    params = {p["name"] for p in spec["params"]}
    workspaces = {w["name"] for w in spec["workspaces"]}
    results = {r["name"] for r in spec["results"]}
    volumes = {v["name"] for v in spec.get("volumes", [])}
    seen_steps: list[str] = []
    for step in spec["steps"]:
        for kind, ref in _refs(step):
            head = ref.split(".")[0]
            if kind == "params":
                assert ref in params, ref
            elif kind == "workspaces":
                assert head in workspaces and ref.split(".")[1] in ("path", "bound", "claim", "volume"), ref
            elif kind == "results":
                assert head in results and ref.endswith(".path"), ref
            else:
                assert ref.endswith(".exitCode.path") and head.removeprefix("step-") in seen_steps, ref
        assert {m["name"] for m in step.get("volumeMounts", [])} <= volumes
        assert step.get("onError", "stopAndFail") in ("continue", "stopAndFail")  # the webhook's enum
        seen_steps.append(step["name"])
    continued = [s["name"] for s in spec["steps"] if s.get("onError") == "continue"]
    later = json.dumps(spec["steps"][-1])
    assert all(
        f"$(steps.step-{name}.exitCode.path)" in later for name in continued
    )  # the last step re-raises


def test_tekton_pipeline_wiring() -> None:
    task, pipeline = _tekton()
    spec = pipeline["spec"]
    params = {p["name"] for p in spec["params"]}
    workspaces = {w["name"] for w in spec["workspaces"]}
    names = [t["name"] for t in spec["tasks"]]
    for pt in spec["tasks"] + spec["finally"]:
        for kind, ref in _refs(pt.get("params", [])):
            assert kind == "params" and ref in params, ref
        assert {w["workspace"] for w in pt.get("workspaces", [])} <= workspaces
        assert set(pt.get("runAfter", [])) <= set(names)
        if pt.get("taskRef", {}).get("name") == task["metadata"]["name"]:
            declared = {p["name"] for p in task["spec"]["params"]}
            assert {p["name"] for p in pt["params"]} <= declared
            required = {w["name"] for w in task["spec"]["workspaces"] if not w.get("optional")}
            bound = {w["name"] for w in pt["workspaces"]}
            assert required <= bound <= {w["name"] for w in task["spec"]["workspaces"]}
            need = _minimum_minutes(REPO / _default(task, "scenario"), int(_default(task, "repeats")))
            assert _duration_minutes(pt["timeout"]) >= need
    (run,) = _docs(PIPELINERUN)
    timeouts = {k: _duration_minutes(v) for k, v in run["spec"]["timeouts"].items()}
    bench = next(t for t in spec["tasks"] if t["name"] == "bench-gate")
    assert timeouts["pipeline"] >= timeouts["tasks"] + timeouts["finally"]
    assert timeouts["tasks"] >= _duration_minutes(bench["timeout"])
    assert run["spec"]["pipelineRef"]["name"] == pipeline["metadata"]["name"]


def _default(task: dict[str, Any], name: str) -> str:
    return next(p["default"] for p in task["spec"]["params"] if p["name"] == name)


def _collect_script(tmp: Path) -> tuple[str, dict[str, str]]:
    """The Task's `collect` step with Tekton's substitutions done as the controller would."""
    task, _ = _tekton()
    step = next(s for s in task["spec"]["steps"] if s["name"] == "collect")
    script = (
        step["script"]
        .replace("$(workspaces.artifacts.path)", str(tmp / "artifacts"))
        .replace("$(results.verdict.path)", str(tmp / "verdict"))
        .replace("/work/", f"{tmp}/work/")
    )
    env = {"PATH": "/usr/bin:/bin", "RESULT": str(tmp / "exitCode")}
    return script, env


@pytest.mark.parametrize(
    ("code", "verdict"), [(0, "pass"), (1, "regression"), (3, "inconclusive"), (2, "bad-input")]
)
def test_tekton_collect_keeps_artifacts_and_fails_on_a_regression(
    tmp_path: Path, code: int, verdict: str
) -> None:
    run = tmp_path / "work" / "runs" / "20260101T000000Z-mistral-7b-a10g"
    (run / "gate").mkdir(parents=True)
    for name in ("report.html", "summary.json", "summary.md", "gate/gate.md"):
        (run / name).write_text(name)
    (tmp_path / "work" / "run-dir").write_text(str(run))
    (tmp_path / "exitCode").write_text(str(code))
    script, env = _collect_script(tmp_path)
    res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stdout + res.stderr  # the TaskRun fails unless the gate passed
    assert (tmp_path / "verdict").read_text() == verdict
    out = tmp_path / "artifacts" / "tokenbench"
    assert (out / "report.html").is_file() and (out / "gate" / "gate.md").is_file()
    assert (out / "verdict.txt").read_text() == verdict


def test_tekton_collect_without_a_run_folder_still_fails(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "exitCode").write_text("2")
    script, env = _collect_script(tmp_path)
    res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and (tmp_path / "verdict").read_text() == "bad-input"


def test_docs_ci_points_at_the_shipped_files() -> None:
    text = (REPO / "docs" / "ci.md").read_text()
    for path in ("docs/ci/github-actions.yml", "docs/ci/tekton.yaml", "docs/ci/tekton-pipelinerun.yaml"):
        assert path in text, path
    # one source of truth: the recipes are the files, not copies in the page that could drift
    assert "apiVersion: tekton.dev/v1" not in text and "runs-on:" not in text
