"""CPU placement: CPU-list parsing, the auto split, resolving against this host, and real pinning
of a started process group (the supervisor sets the affinity before the command starts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harness.backends.process import ManagedProcess, ProcessRegistry
from harness.placement import (
    LOAD,
    SERVER,
    CpuSets,
    Placement,
    PlacementError,
    auto_split,
    format_cpu_list,
    parse_cpu_list,
    resolve_placement,
)


def test_cpu_lists_parse_and_format_both_ways() -> None:
    assert parse_cpu_list("0-3,6") == frozenset({0, 1, 2, 3, 6})
    assert parse_cpu_list(" 5 ") == frozenset({5})
    assert format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    for bad in ("", "0,", "a", "3-1", "1-2-3", "99999"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_auto_split_gives_the_load_the_last_quarter_and_never_overlaps() -> None:
    assert auto_split(frozenset({0, 1})) == (frozenset({0}), frozenset({1}))
    server, load = auto_split(frozenset(range(16)))  # type: ignore[misc]
    assert load == frozenset({12, 13, 14, 15}) and server == frozenset(range(12))
    assert auto_split(frozenset({3})) is None


def test_resolve_none_auto_explicit_and_one_cpu() -> None:
    have = frozenset({0, 1, 2, 3})
    assert resolve_placement("none", have).cpus == {}
    auto = resolve_placement("auto", have)
    assert auto.cpus == {SERVER: frozenset({0, 1, 2}), LOAD: frozenset({3})}
    lone = resolve_placement("auto", frozenset({2}))
    assert lone.cpus == {} and lone.note and "nothing pinned" in lone.note
    explicit = resolve_placement(CpuSets(server_cpus="0-1", load_cpus="3"), have)
    assert explicit.to_env()["server_cpus"] == "0-1" and explicit.to_env()["load_cpus"] == "3"
    with pytest.raises(PlacementError, match="placement.load_cpus: CPU\\(s\\) 7"):
        resolve_placement(CpuSets(server_cpus="0", load_cpus="7"), have)


def test_overlapping_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="disjoint"):
        CpuSets(server_cpus="0-2", load_cpus="2")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one of them")
def test_a_started_group_runs_on_its_kinds_cpus_and_is_recorded(tmp_path: Path) -> None:
    """The command and a child it forks both report the pinned set; env.json's record says so too."""
    have = sorted(os.sched_getaffinity(0))
    placement = Placement(
        "test", frozenset(have), {SERVER: frozenset({have[0]}), LOAD: frozenset({have[-1]})}
    )
    script = (
        "import os, subprocess, sys;"
        "print('self', sorted(os.sched_getaffinity(0)));"
        "subprocess.run([sys.executable, '-c', 'import os; print(\"child\", sorted(os.sched_getaffinity(0)))'])"
    )
    with ProcessRegistry(placement=placement) as registry:
        for kind in (SERVER, LOAD):
            log = tmp_path / f"{kind}.log"
            proc = ManagedProcess([sys.executable, "-c", script], log_path=log, registry=registry, kind=kind)
            assert proc.wait(timeout=30) == 0
            proc.terminate()
            want = [have[0]] if kind == SERVER else [have[-1]]
            text = log.read_text()
            assert f"self {want}" in text and f"child {want}" in text, text
    env = placement.to_env()
    assert [row["cpus"] for row in env["applied"][SERVER]] in ([str(have[0])], [None])
    assert len(env["applied"][LOAD]) == 1


def test_without_placement_nothing_is_pinned(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    proc = ManagedProcess(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], log_path=log
    )
    assert proc.wait(timeout=30) == 0
    proc.terminate()
    assert str(sorted(os.sched_getaffinity(0))) in log.read_text()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to split")
def test_a_run_pins_the_sim_server_and_locust_and_writes_env_json(tmp_path: Path) -> None:
    """The real CLI on the simulator with ``placement: auto``: env.json says which CPUs each got."""
    import json
    import subprocess

    import yaml

    from leftovers import new_marker, processes_with_marker

    data = {
        "name": "placed",
        "seed": 1,
        "placement": "auto",
        "servers": [{"name": "s", "backend": "sim", "model": "m", "settings": {"ttft_ms": 5, "itl_ms": 1}}],
        "workload": {"prompt_tokens": 8, "output_tokens": 4, "steps": {"concurrency": [1]}, "requests": 4},
    }
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    key, marker = new_marker()
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", str(path), "--out", str(tmp_path / "out"), "-q"],
        cwd=Path(__file__).resolve().parents[1], env={**os.environ, key: marker},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = (tmp_path / "out").glob("*-placed")
    env = json.loads((run / "env.json").read_text())["placement"]
    server, load = auto_split(frozenset(os.sched_getaffinity(0)))  # type: ignore[misc]
    assert env["server_cpus"] == format_cpu_list(server) and env["load_cpus"] == format_cpu_list(load)
    assert [r["cpus"] for r in env["applied"]["server"]] == [format_cpu_list(server)]
    assert [r["cpus"] for r in env["applied"]["load"]] == [format_cpu_list(load)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cells"][0]["steps"][0]["server_clock"] is None  # the sim names no histograms
    assert processes_with_marker(marker) == []
