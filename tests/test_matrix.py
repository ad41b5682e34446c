"""Matrix expansion: servers × sweep settings → cells, identified by configuration, not position."""

from __future__ import annotations

from harness.matrix import expand_cells, expand_steps
from harness.scenario import parse_scenario


def scenario(servers: list[dict], steps: dict | None = None) -> dict:
    return {
        "name": "m",
        "servers": servers,
        "workload": {
            "prompt_tokens": 8,
            "output_tokens": 8,
            "steps": steps or {"concurrency": [1, 4], "rate": [0.5, 2]},
            "duration_s": 2,
        },
    }


def test_cartesian_product_in_file_order() -> None:
    sc = parse_scenario(
        scenario(
            [
                {
                    "name": "a",
                    "backend": "vllm",
                    "model": "m",
                    "settings": {"quantization": [None, "fp8"], "max_num_seqs": [4, 16], "dtype": "bfloat16"},
                },
                {"name": "b", "backend": "sim", "model": "m"},
            ]
        )
    )
    cells = expand_cells(sc)
    assert [c.cell_id for c in cells] == [
        "a__quantization-none__max_num_seqs-4",
        "a__quantization-none__max_num_seqs-16",
        "a__quantization-fp8__max_num_seqs-4",
        "a__quantization-fp8__max_num_seqs-16",
        "b",
    ]
    assert all(c.settings["dtype"] == "bfloat16" for c in cells[:4])
    assert cells[2].settings == {"dtype": "bfloat16", "quantization": "fp8", "max_num_seqs": 4}
    assert len({c.identity for c in cells}) == 5


def test_identity_is_independent_of_order_and_name() -> None:
    one = parse_scenario(
        scenario(
            [
                {"name": "a", "backend": "vllm", "model": "m", "settings": {"max_num_seqs": [4, 16]}},
                {"name": "z", "backend": "sim", "model": "q"},
            ]
        )
    )
    two = parse_scenario(
        scenario(
            [
                {"name": "z", "backend": "sim", "model": "q"},
                {"name": "a", "backend": "vllm", "model": "m", "settings": {"max_num_seqs": [16, 4]}},
            ]
        )
    )
    ids_one = {c.settings.get("max_num_seqs"): c.identity for c in expand_cells(one)}
    ids_two = {c.settings.get("max_num_seqs"): c.identity for c in expand_cells(two)}
    assert ids_one == ids_two


def test_identity_changes_with_workload() -> None:
    a = parse_scenario(scenario([{"name": "a", "backend": "sim", "model": "m"}]))
    data = scenario([{"name": "a", "backend": "sim", "model": "m"}])
    data["workload"]["output_tokens"] = 9
    b = parse_scenario(data)
    assert expand_cells(a)[0].identity != expand_cells(b)[0].identity


def test_steps_concurrency_then_rate() -> None:
    sc = parse_scenario(scenario([{"name": "a", "backend": "sim", "model": "m"}]))
    steps = expand_steps(sc)
    assert [(s.step_id, s.kind, s.target) for s in steps] == [
        ("c1", "concurrency", 1.0),
        ("c4", "concurrency", 4.0),
        ("r0.5", "rate", 0.5),
        ("r2", "rate", 2.0),
    ]


def test_repeats_share_identity_and_differ_in_id() -> None:
    data = scenario([{"name": "a", "backend": "sim", "model": "m", "settings": {"itl_ms": [5, 10]}}])
    data["repeats"] = 3
    cells = expand_cells(parse_scenario(data))
    assert [c.cell_id for c in cells] == [
        "a__itl_ms-5__rep-1",
        "a__itl_ms-5__rep-2",
        "a__itl_ms-5__rep-3",
        "a__itl_ms-10__rep-1",
        "a__itl_ms-10__rep-2",
        "a__itl_ms-10__rep-3",
    ]
    assert [c.repeat for c in cells[:3]] == [0, 1, 2]
    assert len({c.identity for c in cells[:3]}) == 1 and cells[0].identity != cells[3].identity


def test_per_server_api_changes_identity() -> None:
    data = scenario(
        [
            {"name": "a", "backend": "sim", "model": "m"},
            {"name": "b", "backend": "sim", "model": "m", "api": "tgi"},
        ]
    )
    a, b = expand_cells(parse_scenario(data))
    assert a.identity != b.identity


def test_identities_of_the_committed_ci_baseline_stay_stable() -> None:
    """A field added to the scenario model must not change existing identities: a baseline saved
    before it would then match nothing (the gate's "configuration not in the baseline")."""
    import json
    from pathlib import Path

    from harness.scenario import load_scenario

    repo = Path(__file__).resolve().parents[1]
    baseline = json.loads((repo / "reports" / "baselines" / "ci-sim.json").read_text())
    saved = {c["identity"] for c in baseline["summary"]["cells"]}
    now = {c.identity for c in expand_cells(load_scenario(repo / "scenarios" / "ci-sim.yaml"))}
    assert now == saved


def test_connections_prewarm_is_identity_neutral_and_cold_is_not() -> None:
    """The default (prewarm) leaves identities as they were; cold measures the connect burst, another thing."""
    server = [{"name": "a", "backend": "sim", "model": "m"}]
    plain = parse_scenario(scenario(server))
    identities = {}
    for mode in ("prewarm", "cold"):
        data = scenario(server)
        data["workload"]["connections"] = mode
        identities[mode] = expand_cells(parse_scenario(data))[0].identity
    assert identities["prewarm"] == expand_cells(plain)[0].identity
    assert identities["cold"] != identities["prewarm"]
