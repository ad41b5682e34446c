"""Load plan (de)serialisation, the per-process step gate, health aggregation and record building."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.load.collector import MasterCollector, StepState, summarize_health
from harness.load.httpstream import Outcome
from harness.load.plan import HEADERS_ENV, PLAN_ENV, LoadPlan, PlanError, headers_from_env, plan_from_env
from harness.load.prompts import PromptSpec
from harness.load.recordbuild import build_record, finalize_records
from harness.load.spool import RecordSpool, parts_dir
from harness.load.sseframe import SseSplitter
from harness.protocols.openai import openai_body
from harness.protocols.registry import get_protocol
from harness.records import read_records


def _plan(tmp_path: Path, **kw: Any) -> LoadPlan:
    base: dict[str, Any] = dict(
        run_id="run",
        cell_id="cell",
        step_id="c2",
        api="completions",
        base_url="http://127.0.0.1:9",
        model="m",
        kind="concurrency",
        target=2,
        prompts_path=str(tmp_path / "p.jsonl"),
        records_path=str(tmp_path / "records.parquet"),
        health_path=str(tmp_path / "health.json"),
        duration_s=10.0,
    )
    base.update(kw)
    return LoadPlan(**base)


def test_plan_round_trips_through_json(tmp_path: Path) -> None:
    plan = _plan(tmp_path, kind="rate", target=7.5, warmup_s=1.0, seed=9, tokenizer_path="/t.json")
    path = tmp_path / "plan.json"
    plan.write(path)
    assert LoadPlan.read(path) == plan
    assert plan_from_env({PLAN_ENV: str(path)}) == plan


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "burst"}, "kind"),
        ({"target": 0}, "target"),
        ({"target": 2.5}, "target"),
        ({"requests": 5}, "duration_s"),
        ({"duration_s": None}, "duration_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"processes": 0}, "processes"),
        ({"base_url": "localhost:8000"}, "base_url"),
    ],
)
def test_bad_plan_fields_are_named(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    data = _plan(tmp_path).to_dict() | change
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match=rf"plan\.json: {field}: "):
        LoadPlan.read(path)


def test_unknown_plan_field_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"unknown field\(s\) \['extra'\]"):
        LoadPlan.from_dict(_plan(tmp_path).to_dict() | {"extra": 1}, "x.json")
    with pytest.raises(PlanError, match="no such load plan file"):
        LoadPlan.read(tmp_path / "nope.json")
    with pytest.raises(PlanError, match=PLAN_ENV):
        plan_from_env({})


def test_headers_env_parsing_never_echoes_the_value() -> None:
    assert headers_from_env({HEADERS_ENV: '{"Authorization": "Bearer s3cret"}'}) == {
        "Authorization": "Bearer s3cret"
    }
    assert headers_from_env({}) == {}
    with pytest.raises(PlanError) as err:
        headers_from_env({HEADERS_ENV: "Bearer s3cret"})
    assert "s3cret" not in str(err.value)


def test_pool_size_defaults(tmp_path: Path) -> None:
    assert _plan(tmp_path, target=3).users == 3
    assert _plan(tmp_path, kind="rate", target=2.0, timeout_s=10).users == 20
    assert _plan(tmp_path, kind="rate", target=100.0, timeout_s=120).users == 1024
    assert _plan(tmp_path, kind="rate", target=100.0, max_concurrency=8).users == 8


def test_openai_body_fields(tmp_path: Path) -> None:
    spec = PromptSpec(prompt_tokens=3, output_tokens=11, prompt="a b c")
    body = openai_body(_plan(tmp_path), spec, chat=False)
    assert body["prompt"] == "a b c" and body["max_tokens"] == 11 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["ignore_eos"] is True and body["min_tokens"] == 11
    chat = openai_body(_plan(tmp_path, api="chat", ignore_eos=False), spec, chat=True)
    assert chat["messages"] == [{"role": "user", "content": "a b c"}]
    assert "ignore_eos" not in chat and "min_tokens" not in chat


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


def test_step_state_warmup_and_duration_windows(tmp_path: Path) -> None:
    clock = _Clock()
    done: list[bool] = []
    state = StepState(
        plan=_plan(tmp_path, warmup_s=1.0, duration_s=2.0), now_ns=clock, on_done=lambda: done.append(True)
    )
    t0 = clock.now
    assert state.admit(t0) and state.is_warmup(t0)
    assert state.admit(t0 + 999_999_999) and state.is_warmup(t0 + 999_999_999)
    assert state.admit(t0 + 1_000_000_000) and not state.is_warmup(t0 + 1_000_000_000)
    assert not state.admit(t0 + 3_000_000_000)  # past warm-up + duration: issuing ends for good
    assert not state.admit(t0 + 1)
    assert state.outstanding == 3 and not done
    for _ in range(3):
        state.outstanding -= 1
    state.close_issuing()
    assert done == [True]


def test_step_state_request_quota_is_split_by_worker(tmp_path: Path) -> None:
    plan = _plan(tmp_path, duration_s=None, requests=5, warmup_s=0.0)
    admitted = []
    for index in range(2):
        state = StepState(plan=plan, worker_index=index, workers=2, now_ns=_Clock())
        n = 0
        while state.admit(1_000_000_000 + n):
            n += 1
        admitted.append(n)
    assert admitted == [3, 2]


def test_request_ids_are_unique_across_workers(tmp_path: Path) -> None:
    ids = set()
    for index in range(3):
        state = StepState(plan=_plan(tmp_path), worker_index=index, workers=3)
        ids |= {state.next_request_id() for _ in range(100)}
    assert len(ids) == 300


def _outcome(events: list[bytes], status: int = 200, error: str | None = None) -> Outcome:
    sp = SseSplitter()
    for i, raw in enumerate(events):
        sp.feed(raw, 100 + 10 * i)
    return Outcome(status, sent_ns=50, end_ns=500, splitter=sp, error_class=error)


def _chunk(text: str, ct: int | None) -> bytes:
    obj: dict[str, Any] = {"choices": [{"index": 0, "text": text, "finish_reason": None}]}
    if ct is not None:
        obj["usage"] = {"prompt_tokens": 4, "completion_tokens": ct}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _build(plan: LoadPlan, outcome: Outcome) -> Any:
    spec = PromptSpec(prompt_tokens=4, output_tokens=3, prompt="x", exact=True)
    result = get_protocol(plan.api).interpret(outcome.splitter.events)
    return build_record(
        plan, request_id=1, worker=0, scheduled_ns=40, warmup=False, spec=spec, outcome=outcome, result=result
    ), result


def test_record_from_a_stream_without_usage_counts_chunks(tmp_path: Path) -> None:
    rec, _ = _build(_plan(tmp_path), _outcome([_chunk(" a", None), _chunk(" b", None), b"data: [DONE]\n\n"]))
    assert rec.ok and rec.token_source == "chunks" and rec.output_tokens == 2
    assert rec.first_token_ns == 100 and rec.chunk_times_ns == [100, 110]
    assert rec.prompt_tokens == 4  # exact prompt and no usage: the requested count stands


def test_record_without_done_is_stream_broken(tmp_path: Path) -> None:
    rec, _ = _build(_plan(tmp_path), _outcome([_chunk(" a", 1)]))
    assert rec.error_class == "stream_broken" and rec.token_source == "usage_per_chunk"


def test_finalize_uses_the_tokenizer_for_client_counts(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_path = tmp_path / "tok.json"
    tok.save(str(tok_path))
    plan = _plan(tmp_path, tokenizer_path=str(tok_path))
    rec, res = _build(plan, _outcome([_chunk(" a", None), _chunk(" b a", None), b"data: [DONE]\n\n"]))
    assert rec.output_tokens is None  # left for the tokenizer, off the hot path
    rows = finalize_records([rec], [res.text], plan.tokenizer_path)
    assert rows[0]["output_tokens"] == 3 and rows[0]["client_output_tokens"] == 3
    assert rows[0]["token_source"] == "tokenizer"


def test_summarize_health_flags_lag_and_missing_workers() -> None:
    reports = [
        {
            "index": 0,
            "requests": 3,
            "cancelled": 1,
            "cpu_s": 1.0,
            "wall_s": 10.0,
            "lag_ms": [0.1] * 98 + [20, 30],
        },
    ]
    rows = [{"chunk_times_ns": [1, 2, 3, 4], "coalesced_chunks": 1}]
    health = summarize_health(reports, rows, expected=2)
    assert health["limited"] is True
    assert health["loop_lag_max_ms"] == 30
    assert health["coalesced_chunk_fraction"] == 0.25
    assert health["cancelled"] == 1
    assert health["client_cpu_pct"] == pytest.approx(10.0)
    assert any("never reported" in r for r in health["reasons"])
    calm_rows = [{"chunk_times_ns": [1, 2, 3, 4], "coalesced_chunks": 0}]
    calm = summarize_health([reports[0] | {"lag_ms": [0.2] * 100}], calm_rows, expected=1)
    assert calm["limited"] is False and calm["reasons"] == []


def test_master_collector_writes_sorted_records_and_health(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    rec_late, _ = _build(plan, _outcome([_chunk(" a", 1), b"data: [DONE]\n\n"]))
    rec_early, _ = _build(plan, _outcome([_chunk(" a", 1), b"data: [DONE]\n\n"]))
    rec_late.scheduled_ns, rec_early.scheduled_ns, rec_early.request_id = 90, 10, 2
    calls: list[int] = []
    col = MasterCollector(plan=plan, expected=1, on_all_done=lambda: calls.append(1))
    # a load process writes its final part file; the collector merges the parts
    RecordSpool(parts_dir(plan.records_path), worker=0).final(
        finalize_records([rec_late, rec_early], ["", ""], None)
    )
    col.add_report({"index": 0, "cpu_s": 0.1, "wall_s": 1.0, "lag_ms": []})
    assert calls == [1]
    col.write()
    table = read_records(Path(plan.records_path))
    assert table.column("scheduled_ns").to_pylist() == [10, 90]
    assert json.loads(Path(plan.health_path).read_text())["workers"][0]["index"] == 0
    assert not parts_dir(plan.records_path).exists()  # merged parts are removed


def test_token_counter_on_a_part_equals_finalize_records(tmp_path: Path) -> None:
    """Per-part tokenizer counts (bounded memory) give exactly the rows the end-of-step finalize gave."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from harness.load.tokencount import TokenCounter
    from harness.records import records_to_table

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_path = tmp_path / "tok.json"
    tok.save(str(tok_path))
    plan = _plan(tmp_path, tokenizer_path=str(tok_path))
    made = [
        _build(plan, _outcome([_chunk(" a", None), _chunk(" b a", None), b"data: [DONE]\n\n"]))
        for _ in range(3)
    ]
    made[1][0].output_tokens, made[1][0].token_source = 7, "usage"  # a server count is kept
    made[2][0].error_class = "timeout"  # failed, no text: not counted
    recs, texts = [m[0] for m in made], [m[1].text for m in made]
    texts[2] = ""
    table = TokenCounter(str(tok_path))(records_to_table(recs), texts)
    expected = finalize_records(recs, texts, str(tok_path))
    assert table.to_pylist() == expected
    assert [r["token_source"] for r in expected] == ["tokenizer", "usage", "none"]


def test_spooling_state_keeps_no_records_and_close_writes_final_parts(tmp_path: Path) -> None:
    """With a spool, a process holds at most one group: every record is on disk after ``close``."""
    from harness.load.collector import StepState
    from harness.load.spool import read_parts

    plan = _plan(tmp_path)
    spool = RecordSpool(parts_dir(plan.records_path), worker=0, row_group=4)
    state = StepState(plan=plan, spool=spool)
    for i in range(10):
        rec, res = _build(plan, _outcome([_chunk(" a", 1), b"data: [DONE]\n\n"]))
        rec.request_id = i
        state.outstanding += 1
        state.complete(rec, res.text)
    assert state.records == [] and state.completed == 10 and len(spool.pending) == 2
    spool.close()
    assert sorted(read_parts(parts_dir(plan.records_path)).column("request_id").to_pylist()) == list(
        range(10)
    )
    assert state.report()["requests"] == 10
