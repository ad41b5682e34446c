"""Every invalid scenario fails at ``tokenbench validate``: exit 2, no traceback, no process, and a
message that starts with the file and names the field and the value.

Why a table: each row is one way a user's file (or ``--set``) can be wrong, and the same four
promises hold for all of them. Running 70-odd ``tokenbench`` subprocesses would take minutes on a
loaded machine, so the whole table goes through the real CLI (``harness.cli.app``, the entry point
``tokenbench`` runs) inside ONE subprocess, this file run as a script, with an audit hook that sees
every process creation (``subprocess.Popen``, ``os.fork``, ``os.posix_spawn``, ``os.exec*``,
``os.system``). A representative subset also runs as separate ``tokenbench validate`` processes, and
neither way leaves a process carrying the test's environment marker.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from cli_runner import tokenbench
from leftovers import new_marker, processes_with_marker

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "seed": 1,
    "servers": [{"name": "a", "backend": "sim", "model": "m", "settings": {"ttft_ms": [10, 20]}}],
    "workload": {
        "prompt_tokens": 8,
        "output_tokens": 4,
        "steps": {"concurrency": [1], "rate": [2]},
        "duration_s": 5,
    },
}
SECRET = "s3cr3t-pw"


@dataclass
class Case:
    """One invalid input: the scenario (a change to ``BASE``, or raw bytes), ``--set`` args, files."""

    id: str
    field: str  # the field path the message must name
    value: str  # the (shown) value the message must name
    edit: dict | None = None  # dotted path -> value, applied to a copy of BASE (None deletes)
    sets: list[str] = field(default_factory=list)
    raw: bytes | None = None  # the whole scenario file instead of BASE
    files: dict[str, bytes] = field(default_factory=dict)  # extra files beside the scenario
    absent: str | None = None  # a text that must NOT appear (a secret, a whole huge value)


def _edit(data: dict, changes: dict) -> dict:
    data = json.loads(json.dumps(data))
    for path, value in changes.items():
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def _dataset(lines: bytes, case_id: str, field_: str, value: str) -> Case:
    return Case(
        case_id,
        field_,
        value,
        edit={"workload.prompt_tokens": None, "workload.dataset": "data.jsonl"},
        files={"data.jsonl": lines},
    )


VLLM = {"servers.0.backend": "vllm", "servers.0.settings": {"max_num_seqs": -4}}
EXTERNAL = {"servers.0.backend": "external", "servers.0.settings": {}}
GOOD_LINE = b'{"prompt": "hello there"}\n'
BOMB = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n".encode()
    for i in range(8)
)
HUGE = "z" * 100_000

CASES: list[Case] = [
    # -- inf / nan in durations, timeouts, warm-ups, rates, SLOs, temperatures, lengths, settings
    Case("duration-inf", "workload.duration_s", "inf", sets=["workload.duration_s=.inf"]),
    Case("duration-nan", "workload.duration_s", "nan", sets=["workload.duration_s=.nan"]),
    Case("duration-1e12", "workload.duration_s", "1000000000000.0", sets=["workload.duration_s=1.0e+12"]),
    Case("warmup-inf", "workload.warmup_s", "inf", sets=["workload.warmup_s=.inf"]),
    Case("warmup-negative", "workload.warmup_s", "-1", sets=["workload.warmup_s=-1"]),
    Case("timeout-inf", "workload.timeout_s", "inf", sets=["workload.timeout_s=.inf"]),
    Case("timeout-1e300", "workload.timeout_s", "1e+300", sets=["workload.timeout_s=1.0e+300"]),
    Case(
        "startup-timeout-nan",
        "servers[0].startup_timeout_s",
        "nan",
        edit={"servers.0.startup_timeout_s": float("nan")},
    ),
    Case("rate-inf", "workload.steps.rate[0]", "inf", sets=["workload.steps.rate=[.inf]"]),
    Case("rate-nan-second", "workload.steps.rate[1]", "nan", sets=["workload.steps.rate=[2, .nan]"]),
    Case("rate-1e-300", "workload.steps.rate[0]", "1e-300", sets=["workload.steps.rate=[1e-300]"]),
    Case("rate-1e300", "workload.steps.rate[0]", "1e+300", sets=["workload.steps.rate=[1e300]"]),
    Case("rate-zero", "workload.steps.rate[0]", "0", sets=["workload.steps.rate=[0]"]),
    Case("rate-longer-than-step", "workload.steps.rate[0]", "0.1", sets=["workload.steps.rate=[0.1]"]),
    Case(
        "rate-requests-take-years",
        "workload.steps.rate[0]",
        "0.01",
        sets=["workload.duration_s=null", "workload.requests=100000000", "workload.steps.rate=[0.01]"],
    ),
    Case("rate-repeated-step", "workload.steps.rate[1]", "1.0", sets=["workload.steps.rate=[1, 1.0]"]),
    Case(
        "concurrency-repeated",
        "workload.steps.concurrency[1]",
        "4",
        sets=["workload.steps.concurrency=[4, 4]"],
    ),
    Case("concurrency-zero", "workload.steps.concurrency[0]", "0", sets=["workload.steps.concurrency=[0]"]),
    Case("slo-inf", "slo.ttft_p99_ms", "inf", sets=["slo.ttft_p99_ms=.inf"]),
    Case("slo-nan", "slo.tpot_p95_ms", "nan", sets=["slo.tpot_p95_ms=.nan"]),
    Case("temperature-inf", "workload.temperature", "inf", sets=["workload.temperature=.inf"]),
    Case("temperature-negative", "workload.temperature", "-0.5", sets=["workload.temperature=-0.5"]),
    Case("connections-unknown", "workload.connections", "warm", sets=["workload.connections=warm"]),
    Case("connections-not-text", "workload.connections", "1", edit={"workload.connections": 1}),
    Case("abort-rate-nan", "workload.abort_error_rate", "nan", sets=["workload.abort_error_rate=.nan"]),
    Case(
        "length-mean-inf",
        "workload.output_tokens.mean",
        "inf",
        sets=["workload.output_tokens={dist: normal, mean: .inf, stddev: 1}"],
    ),
    Case(
        "length-huge",
        "workload.output_tokens.value",
        "100000000000",
        sets=["workload.output_tokens=100000000000"],
    ),
    Case("setting-inf", "servers[0].settings.ttft_ms", "inf", sets=["servers.0.settings.ttft_ms=.inf"]),
    Case(
        "setting-sweep-nan",
        "servers[0].settings.ttft_ms[1]",
        "nan",
        sets=["servers.0.settings.ttft_ms=[1, .nan]"],
    ),
    Case("processes-huge", "workload.processes", "100000", sets=["workload.processes=100000"]),
    # -- workload.distributed (load from other hosts)
    Case(
        "distributed-bind-no-port",
        "workload.distributed.bind",
        "localhost",
        edit={"workload.distributed": {"expect_workers": 2, "bind": "localhost"}},
    ),
    Case(
        "distributed-port-out-of-range",
        "workload.distributed.bind",
        "127.0.0.1:70000",
        sets=["workload.distributed={expect_workers: 1, bind: '127.0.0.1:70000'}"],
    ),
    Case(
        "distributed-no-workers",
        "workload.distributed.expect_workers",
        "0",
        edit={"workload.distributed": {"expect_workers": 0}},
    ),
    Case(
        "distributed-open-bind-without-token",
        "workload.distributed.bind",
        "0.0.0.0:5557",
        edit={"workload.distributed": {"expect_workers": 1, "bind": "0.0.0.0:5557"}},
    ),
    # -- seed
    Case("seed-negative", "seed", "-1", sets=["seed=-1"]),
    Case("seed-huge", "seed", "99999999999999999999", sets=["seed=99999999999999999999"]),
    Case("seed-text", "seed", "'abc'", sets=["seed=abc"]),
    # -- backend settings
    Case("vllm-max-num-seqs-negative", "settings.max_num_seqs", "-4", edit=VLLM),
    Case(
        "vllm-max-num-seqs-sweep",
        "settings.max_num_seqs",
        "-4",
        edit={"servers.0.backend": "vllm", "servers.0.settings": {"max_num_seqs": [8, -4]}},
    ),
    Case(
        "vllm-unknown-setting",
        "settings.max_num_seqz",
        "max_num_seqz",
        edit={"servers.0.backend": "vllm", "servers.0.settings": {"max_num_seqz": 4}},
    ),
    Case("sim-negative-ttft", "settings.ttft_ms", "-5", sets=["servers.0.settings.ttft_ms=-5"]),
    Case("unknown-backend", "servers[0].backend", "'nope'", sets=["servers.0.backend=nope"]),
    Case("unknown-protocol", "workload.api", "'smoke-signals'", sets=["workload.api=smoke-signals"]),
    Case(
        "unknown-local-model",
        "model",
        "'tokenbench:huge-llama'",
        edit={
            "servers.0.backend": "vllm",
            "servers.0.settings": {},
            "servers.0.model": "tokenbench:huge-llama",
        },
    ),
    Case("context-too-short", "servers[0].max_model_len", "8", sets=["servers.0.max_model_len=8"]),
    # -- names and cell ids
    Case("scenario-name-300", "name", "'" + "n" * 150, sets=["name=" + "n" * 300]),
    Case("server-name-300", "servers[0].name", "'" + "s" * 150, sets=["servers.0.name=" + "s" * 300]),
    Case(
        "cell-id-too-long",
        "servers[0].name",
        "s" * 99,
        sets=["servers.0.name=" + "s" * 99, "servers.0.settings.fault_schedule=[" + "q" * 120 + ", b]"],
    ),
    Case("name-with-slash", "name", "'a/b'", sets=["name=a/b"]),
    Case("name-empty", "servers[0].name", "''", sets=["servers.0.name=''"]),
    Case("repeats-huge", "repeats", "100000", sets=["repeats=100000"]),
    Case(
        "sweep-too-large",
        "servers",
        "repeats 1",
        edit={
            "servers.0.settings": {
                k: list(range(1, 11)) for k in ("ttft_ms", "itl_ms", "jitter_ms", "stall_ms", "backlog")
            }
        },
    ),
    Case("duplicate-servers", "servers", "['a']", edit={"servers": [BASE["servers"][0], BASE["servers"][0]]}),
    # -- base_url and gRPC target
    Case(
        "base-url-ftp", "servers[0].base_url", "'ftp://x'", edit={**EXTERNAL, "servers.0.base_url": "ftp://x"}
    ),
    Case(
        "base-url-no-scheme",
        "servers[0].base_url",
        "'localhost:8000'",
        edit={**EXTERNAL, "servers.0.base_url": "localhost:8000"},
    ),
    Case(
        "base-url-no-host",
        "servers[0].base_url",
        "'http://'",
        edit={**EXTERNAL, "servers.0.base_url": "http://"},
    ),
    Case(
        "base-url-bad-port",
        "servers[0].base_url",
        "'http://h:99999'",
        edit={**EXTERNAL, "servers.0.base_url": "http://h:99999"},
    ),
    Case(
        "base-url-secret-not-echoed",
        "servers[0].base_url",
        "'ftp://***@h/v1'",
        edit={**EXTERNAL, "servers.0.base_url": f"ftp://user:{SECRET}@h/v1"},
        absent=SECRET,
    ),
    Case("base-url-missing", "servers[0].base_url", "None", edit=EXTERNAL),
    Case(
        "grpc-target-no-port",
        "servers[0].grpc_target",
        "'nohost'",
        edit={**EXTERNAL, "servers.0.base_url": "http://h:1", "servers.0.grpc_target": "nohost"},
    ),
    # -- placement: CPU sets of the server and the load generator
    Case("placement-word", "placement", "'half'", sets=["placement=half"]),
    Case(
        "placement-bad-list",
        "placement.server_cpus",
        "'0-x'",
        edit={"placement": {"server_cpus": "0-x", "load_cpus": "1"}},
    ),
    Case(
        "placement-overlap",
        "placement.load_cpus",
        "'1-2'",
        edit={"placement": {"server_cpus": "0-1", "load_cpus": "1-2"}},
    ),
    Case(
        "placement-not-here",
        "placement.load_cpus",
        "'4000'",
        edit={"placement": {"server_cpus": "0", "load_cpus": "4000"}},
    ),
    # -- telemetry: the cluster's Prometheus for servers not on this host
    Case(
        "prometheus-url-ftp",
        "telemetry.prometheus_url",
        "'ftp://p'",
        edit={"telemetry": {"prometheus_url": "ftp://p"}},
    ),
    Case(
        "prometheus-url-secret-not-echoed",
        "telemetry.prometheus_url",
        "'ftp://***@p'",
        edit={"telemetry": {"prometheus_url": f"ftp://u:{SECRET}@p"}},
        absent=SECRET,
    ),
    Case(
        "prometheus-url-credentials-refused",
        "telemetry.prometheus_url",
        "'https://***@thanos:9091'",
        edit={"telemetry": {"prometheus_url": f"https://admin:{SECRET}@thanos:9091", "namespace": "llm"}},
        absent=SECRET,
    ),
    Case(
        "prometheus-token-env-bad-name",
        "telemetry.prometheus_token_env",
        "'MY TOKEN'",
        edit={"telemetry": {"prometheus_url": "http://p:9090", "prometheus_token_env": "MY TOKEN"}},
    ),
    Case(
        "prometheus-pod-bad-regex",
        "telemetry.pod",
        "'granite-(['",
        edit={"telemetry": {"prometheus_url": "http://p:9090", "pod": "granite-(["}},
    ),
    Case(
        "prometheus-namespace-upper",
        "telemetry.namespace",
        "'LLM_Serving'",
        edit={"telemetry": {"prometheus_url": "http://p:9090", "namespace": "LLM_Serving"}},
    ),
    Case(
        "prometheus-pod-without-url",
        "telemetry.pod",
        "'granite-.*'",
        edit={"telemetry": {"pod": "granite-.*"}},
    ),
    Case(
        "prometheus-step-zero",
        "telemetry.step_s",
        "0",
        edit={"telemetry": {"prometheus_url": "http://p:9090", "step_s": 0}},
    ),
    Case(
        "prometheus-label-bad",
        "telemetry.pod_label",
        "'exported-pod'",
        edit={"telemetry": {"prometheus_url": "http://p:9090", "pod_label": "exported-pod"}},
    ),
    Case(
        "telemetry-unknown-key",
        "telemetry.prometheus",
        "'http://p'",
        edit={"telemetry": {"prometheus": "http://p"}},
    ),
    Case(
        "prometheus-external-without-selector",
        "telemetry.prometheus_url",
        "'http://p:9090'",
        edit={
            **EXTERNAL,
            "servers.0.base_url": "http://h:1",
            "telemetry": {"prometheus_url": "http://p:9090"},
        },
    ),
    # -- datasets: the whole file, at validate
    _dataset(b"", "dataset-empty", "workload.dataset", "0 bytes"),
    _dataset(b"\n  \n\n", "dataset-blank-lines", "workload.dataset", "5 bytes"),
    _dataset(GOOD_LINE + b"{nope\n", "dataset-not-json", "data.jsonl:2", "not valid JSON"),
    _dataset(GOOD_LINE * 3 + b"[1, 2]\n", "dataset-not-object", "data.jsonl:4", "[1, 2]"),
    _dataset(b'{"text": "hi"}\n', "dataset-no-prompt", "data.jsonl:1: prompt", "['text']"),
    _dataset(b'{"prompt": 5}\n', "dataset-prompt-number", "data.jsonl:1: prompt", "got 5"),
    _dataset(b'{"prompt": ""}\n', "dataset-prompt-empty", "data.jsonl:1: prompt", "got ''"),
    _dataset(b'{"messages": "hi"}\n', "dataset-messages-string", "data.jsonl:1: messages", "'hi'"),
    _dataset(b'{"messages": []}\n', "dataset-messages-empty", "data.jsonl:1: messages", "[]"),
    _dataset(b'{"messages": [1]}\n', "dataset-messages-not-object", "data.jsonl:1: messages[0]", "got 1"),
    _dataset(
        b'{"messages": [{"role": "user"}]}\n', "dataset-message-no-content", "messages[0].content", "None"
    ),
    _dataset(
        GOOD_LINE + b'{"prompt": "x", "output_tokens": -3}\n',
        "dataset-output-negative",
        "data.jsonl:2: output_tokens",
        "-3",
    ),
    _dataset(b'{"prompt": "x", "output_tokens": 2.5}\n', "dataset-output-float", "output_tokens", "2.5"),
    _dataset(b'{"prompt": "x", "output_tokens": true}\n', "dataset-output-bool", "output_tokens", "True"),
    _dataset(GOOD_LINE + b"\x00\x01\x02binary", "dataset-binary", "data.jsonl:2", "offset 26"),
    # -- length-only lines ({"prompt_tokens", "output_tokens"}: a recorded length distribution)
    _dataset(
        b'{"prompt_tokens": 10, "output_tokens": 5}\n{"prompt_tokens": 0, "output_tokens": 5}\n',
        "dataset-lengths-prompt-zero",
        "data.jsonl:2: prompt_tokens",
        "got 0",
    ),
    _dataset(
        b'{"prompt_tokens": "12", "output_tokens": 5}\n',
        "dataset-lengths-prompt-string",
        "prompt_tokens",
        "'12'",
    ),
    _dataset(
        b'{"prompt_tokens": 12}\n',
        "dataset-lengths-no-output",
        "data.jsonl:1: output_tokens",
        "prompt_tokens 12",
    ),
    _dataset(
        b'{"prompt": "hi", "prompt_tokens": 12, "output_tokens": 5}\n',
        "dataset-lengths-and-text",
        "data.jsonl:1: prompt_tokens",
        "not both",
    ),
    _dataset(b'{"prompt": "caf\xe9"}\n', "dataset-latin1", "data.jsonl:1", "0xe9"),
    Case(
        "dataset-missing",
        "workload.dataset",
        "missing.jsonl",
        edit={"workload.prompt_tokens": None, "workload.dataset": "missing.jsonl"},
    ),
    # -- the file itself, and --set
    Case("file-binary", "scenario.yaml", "offset 2", raw=b"na\x00me: t\n"),
    Case("file-latin1", "scenario.yaml", "0xe9", raw=b"name: t\ndescription: caf\xe9\n"),
    Case("file-alias-bomb", "scenario.yaml", "200000 values", raw=BOMB),
    Case("file-bad-yaml", "scenario.yaml", "not valid YAML", raw=b"name: [unclosed\n"),
    Case("file-not-mapping", "scenario.yaml", "list", raw=b"- a\n- b\n"),
    Case("set-bad-yaml", "--set", "workload.duration_s=[1,", sets=["workload.duration_s=[1,"]),
    Case("set-no-equals", "--set", "workload.duration_s", sets=["workload.duration_s"]),
    Case("set-bad-index", "servers.5", "servers.5.name=x", sets=["servers.5.name=x"]),
    Case("unknown-key", "workload.colour", "'blue'", sets=["workload.colour=blue"]),
    Case(
        "unknown-key-huge-value",
        "workload.colour",
        "'zzzz",
        sets=[f"workload.colour={HUGE}"],
        absent=HUGE[:1000],
    ),
    Case(
        "unknown-key-huge-name",
        "workload.zzzz",
        "1",
        edit={"workload." + HUGE: 1},
        absent=HUGE[:1000],
    ),
    Case(
        "api-list-repeated",
        "servers[0].api",
        "['completions', 'completions']",
        sets=["servers.0.api=[completions, completions]"],
    ),
    Case("wrong-type", "workload.duration_s", "'long'", sets=["workload.duration_s=long"]),
    Case("env-nul", "servers[0].env.A", "'x\\x00y'", edit={"servers.0.env": {"A": "x\0y"}}),
    Case("arg-nul", "servers[0].args[0]", "'--x\\x00'", edit={"servers.0.args": ["--x\0"]}),
    Case("stop-rule-both", "workload", "duration_s=5.0, requests=10", sets=["workload.requests=10"]),
    Case("no-prompt-source", "workload.prompt_tokens", "None", edit={"workload.prompt_tokens": None}),
]


def _materialise(case: Case, folder: Path) -> tuple[Path, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scenario.yaml"
    if case.raw is not None:
        path.write_bytes(case.raw)
    else:
        path.write_text(yaml.safe_dump(_edit(BASE, case.edit or {}), allow_unicode=True))
    for name, content in case.files.items():
        (folder / name).write_bytes(content)
    args = ["validate", str(path)]
    for item in case.sets:
        args += ["--set", item]
    return path, args


def _check(case: Case, path: Path, code: int, out: str) -> list[str]:
    """What is wrong with one case's outcome (empty: all four promises kept)."""
    problems = []
    if code != 2:
        problems.append(f"exit {code}, expected 2")
    if "Traceback" in out:
        problems.append("a traceback was printed")
    if not out.startswith(f"error: {path}"):
        problems.append("the message does not start with the file's path")
    if case.field not in out:
        problems.append(f"the field {case.field!r} is not named")
    if case.value not in out:
        problems.append(f"the value {case.value!r} is not named")
    if case.absent is not None and case.absent in out:
        problems.append("a value that must not be echoed was printed")
    if len(out) > 4000:
        problems.append(f"the message is {len(out)} characters long")
    return problems


CASE_TIMEOUT_S = 30


def _too_slow(signum: int, frame: object) -> None:
    raise TimeoutError(f"validate took more than {CASE_TIMEOUT_S} s")


def _drive(folder: Path) -> list[dict]:
    """Run every case through ``harness.cli.app`` in this process, recording process creations."""
    spawned: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event in (
            "subprocess.Popen",
            "os.fork",
            "os.forkpty",
            "os.posix_spawn",
            "os.exec",
            "os.system",
            "os.spawn",
        ):
            spawned.append(f"{event} {str(args)[:200]}")

    sys.addaudithook(hook)
    from harness.cli import app

    results = []
    for i, case in enumerate(CASES):
        path, args = _materialise(case, folder / f"{i:03d}")
        spawned.clear()
        out, err = io.StringIO(), io.StringIO()
        code: int | str = "no exit"
        signal.signal(signal.SIGALRM, _too_slow)
        signal.alarm(CASE_TIMEOUT_S)  # a hang (a sweep expanded to 10^5 cells) fails one case, not all
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                app(args, prog_name="tokenbench")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - a crash is what the table is looking for
                traceback.print_exc()
                code = 1
            finally:
                signal.alarm(0)
        results.append(
            {
                "id": case.id,
                "path": str(path),
                "code": code,
                "out": out.getvalue() + err.getvalue(),
                "spawned": list(spawned),
            }
        )
    return results


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("invalid")
    name, marker = new_marker()
    env = {**os.environ, name: marker, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    env.pop("TOKENBENCH_WORKER_TOKEN", None)  # "distributed-open-bind-without-token" needs it unset
    proc = subprocess.run(
        [sys.executable, __file__, str(folder)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert processes_with_marker(marker) == []
    return {r["id"]: r for r in json.loads(proc.stdout.splitlines()[-1])}


def test_the_table_is_large_and_distinct() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_scenario_fails_at_validate(case: Case, driven: dict[str, dict]) -> None:
    result = driven[case.id]
    assert result["spawned"] == [], f"validate started a process: {result['spawned']}"
    problems = _check(case, Path(result["path"]), result["code"], result["out"])
    assert not problems, f"{problems}\n--- output ---\n{result['out']}"


# One process per case for a representative subset: the installed entry point as a user runs it.
SUBSET = [
    "duration-inf", "rate-1e-300", "seed-negative", "vllm-max-num-seqs-negative", "server-name-300",
    "cell-id-too-long", "base-url-ftp", "dataset-output-negative", "dataset-binary", "file-latin1",
    "file-alias-bomb", "set-bad-yaml", "unknown-local-model",
]  # fmt: skip


@pytest.mark.parametrize("case_id", SUBSET)
def test_invalid_scenario_fails_in_its_own_process(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    path, args = _materialise(case, tmp_path)
    name, marker = new_marker()
    proc = tokenbench(*args, extra_env={name: marker, "COLUMNS": "160"}, timeout=120)
    problems = _check(case, path, proc.returncode, proc.stdout + proc.stderr)
    assert not problems, f"{problems}\n--- output ---\n{proc.stdout}{proc.stderr}"
    assert processes_with_marker(marker) == []


if __name__ == "__main__":  # the driver, run by the ``driven`` fixture in a fresh interpreter
    print(json.dumps(_drive(Path(sys.argv[1]))))
