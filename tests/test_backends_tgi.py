"""``backend: tgi`` without a server: settings -> flags, validation messages, the launcher and
container command lines, and the fake launcher's flag handling (the double the runs use)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_runner import REPO, tokenbench
from harness.backends.container import gpu_flags
from harness.backends.registry import get_spec
from harness.backends.tgi import container_run, launcher_command, settings_to_flags, weight_format
from harness.backends.tgi_settings import (
    DEFAULT_IMAGE,
    DTYPE_CHOICES,
    FLAG_SETTINGS,
    KV_CACHE_DTYPE_CHOICES,
    QUANTIZE_CHOICES,
)
from harness.matrix import expand_cells
from harness.scenario import parse_scenario

FAKE_LAUNCHER = REPO / "tests" / "doubles" / "text-generation-launcher"
# One legal value per flag setting (each flag must appear exactly as TGI's launcher spells it).
EVERY_FLAG = {
    "quantize": "bitsandbytes-nf4",
    "dtype": "bfloat16",
    "kv_cache_dtype": "fp8_e5m2",
    "max_concurrent_requests": 64,
    "max_input_tokens": 1000,
    "max_total_tokens": 2000,
    "max_batch_prefill_tokens": 4096,
    "max_batch_total_tokens": 16000,
    "max_batch_size": 32,
    "max_waiting_tokens": 20,
    "waiting_served_ratio": 1.2,
    "num_shard": 1,
    "speculate": 2,
    "cuda_memory_fraction": 0.9,
}


def scenario(settings: dict, **server: object) -> dict:
    return {
        "name": "tgi-unit",
        "servers": [
            {"name": "t", "backend": "tgi", "model": "org/m", "api": "tgi", "settings": settings, **server}
        ],
        "workload": {"prompt_tokens": 8, "output_tokens": 8, "steps": {"concurrency": [1]}, "requests": 4},
    }


def cells(settings: dict, **server: object):
    return expand_cells(parse_scenario(scenario(settings, **server), "s.yaml"))


def test_every_flag_setting_maps_to_its_launcher_flag_in_table_order() -> None:
    assert set(EVERY_FLAG) == set(FLAG_SETTINGS)
    flags = settings_to_flags(EVERY_FLAG)
    expected: list[str] = []
    for key, flag in FLAG_SETTINGS.items():
        assert flag == "--" + key.replace("_", "-")
        expected += [flag, str(EVERY_FLAG[key])]
    assert flags == expected
    assert settings_to_flags({"dtype": None, "speculate": 0}) == ["--speculate", "0"]


def test_every_generated_flag_is_accepted_by_the_fake_launcher() -> None:
    """The double's table comes from main.rs independently of the settings table: they must agree."""
    env = {**os.environ, "TOKENBENCH_FAKE_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    # --max-total-tokens 2000 with --port 0: the double validates, then we stop it before it serves.
    proc = subprocess.Popen(
        [str(FAKE_LAUNCHER), *settings_to_flags(EVERY_FLAG), "--port", "0", "--hostname", "127.0.0.1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "fake text-generation-launcher 3.3.7" in first, first
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (["--quantize", "awq4"], 2, "error: invalid value 'awq4' for '--quantize <QUANTIZE>'"),
        (["--dtype", "float32"], 2, "[possible values: float16, bfloat16]"),
        (["--max-batch-size"], 2, "a value is required for '--max-batch-size <MAX_BATCH_SIZE>'"),
        (["--max-batch-size", "x"], 2, "invalid digit found in string"),
        (["--port", "70000"], 2, "number too large to fit in target type"),
        (["--ignore-eos"], 2, "error: unexpected argument '--ignore-eos' found"),
        (["--trust-remote-code=yes"], 2, "unexpected value 'yes' for '--trust-remote-code'"),
        (["--max-input-tokens", "9", "--max-total-tokens", "9"], 1, "must be < `max_total_tokens`(9)"),
        (
            ["--max-total-tokens", "9", "--max-batch-total-tokens", "8"],
            1,
            "must be <= `max_batch_total_tokens`",
        ),
        (["--num-shard", "2", "--quantize", "exl2"], 1, "not supported with `exl2`"),
    ],
)
def test_fake_launcher_refuses_like_tgi(argv: list[str], code: int, text: str) -> None:
    out = subprocess.run([str(FAKE_LAUNCHER), *argv], capture_output=True, text=True, timeout=30)
    assert out.returncode == code, out
    assert text in out.stderr
    if code == 2:  # clap's shape: an error paragraph, the usage line, the --help hint
        assert out.stderr.startswith("error: ") and "Usage: text-generation-launcher [OPTIONS]" in out.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"quantize": "awq4"}, f"settings.quantize: 'awq4' is not one of {', '.join(QUANTIZE_CHOICES)}"),
        ({"dtype": "float32"}, f"settings.dtype: 'float32' is not one of {', '.join(DTYPE_CHOICES)}"),
        ({"kv_cache_dtype": "fp8"}, f"'fp8' is not one of {', '.join(KV_CACHE_DTYPE_CHOICES)}"),
        ({"max_batch_size": [8, 0]}, "settings.max_batch_size: must be >= 1, got 0"),
        ({"max_batch_total_tokens": 2**32}, "settings.max_batch_total_tokens: must be <= 4294967295"),
        ({"cuda_memory_fraction": 1.5}, "settings.cuda_memory_fraction: must be <= 1, got 1.5"),
        (
            {"waiting_served_ratio": "high"},
            "settings.waiting_served_ratio: expected int or float, got 'high'",
        ),
        ({"max_num_seqs": 8}, "settings.max_num_seqs: unknown TGI setting 'max_num_seqs'"),
        ({"container": "kubectl"}, "settings.container: 'kubectl' is not a container runtime"),
        ({"container": "podman", "gpus": "two"}, "settings.gpus: 'two': expected 'all', 'none'"),
        (
            {"max_input_tokens": 100, "max_total_tokens": 100},
            "settings.max_input_tokens: must be < max_total_tokens",
        ),
        ({"max_total_tokens": 100, "max_batch_total_tokens": 50}, "settings.max_total_tokens: must be <="),
        ({"dtype": "float16", "quantize": "awq"}, "TGI takes dtype or quantize, not both"),
        ({"launcher": "/x/tgl", "container": "podman"}, "give launcher (run TGI on this host) or container"),
        ({"image": "ghcr.io/x:1"}, "settings.image: a container setting; add 'container: podman'"),
    ],
)
def test_bad_settings_fail_validate_naming_file_field_and_value(
    tmp_path: Path, settings: dict, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(scenario(settings)))
    out = tokenbench("validate", path)
    assert out.returncode == 2, out.stdout
    text = " ".join(out.stdout.split())
    assert str(path) in text and "server 't'" in text
    assert " ".join(message.split()) in text, text
    assert "Traceback" not in out.stdout + out.stderr


def test_dtype_with_bitsandbytes_is_allowed_and_tgi_serves_tgi_and_chat_only() -> None:
    (cell,) = cells({"dtype": "bfloat16", "quantize": "bitsandbytes-nf4"})
    assert get_spec("tgi").validate_cell(cell) == []
    spec = get_spec("tgi")
    assert spec.serves("tgi") and spec.serves("chat") and not spec.serves("completions")
    with pytest.raises(Exception, match="does not serve api 'tgis'"):
        parse_scenario(scenario({}, api="tgis"), "s.yaml")


def test_launcher_command_maps_model_port_and_settings_then_args(tmp_path: Path) -> None:
    (cell,) = cells({"max_batch_size": 16}, max_model_len=4096, args=["--revision", "abc123"])
    cmd = launcher_command(
        cell, launcher="/opt/tgi/text-generation-launcher", port=8080, prometheus_port=9100,
        uds_path=tmp_path / "uds", home=tmp_path,
    )  # fmt: skip
    assert cmd == [
        "/opt/tgi/text-generation-launcher", "--model-id", "org/m", "--hostname", "127.0.0.1",
        "--port", "8080", "--prometheus-port", "9100", "--shard-uds-path", str(tmp_path / "uds"),
        "--max-total-tokens", "4096", "--max-batch-size", "16", "--revision", "abc123",
    ]  # fmt: skip


def test_container_run_maps_gpu_port_model_volume_cache_and_env_by_name(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    (cell,) = cells(
        {"container": "podman", "hf_cache": str(tmp_path / "hf"), "shm_size": "2g", "max_batch_size": 8},
        env={"HF_TOKEN": "hf_secret_value", "LOG_LEVEL": "info"},
    )
    cell = dataclasses.replace(cell, server=cell.server.model_copy(update={"model": str(model)}))
    run = container_run(cell, runtime="/usr/bin/podman", name="tb-1", port=43000, home=tmp_path, env={})
    cmd = run.command()
    assert cmd[:5] == ["/usr/bin/podman", "run", "--rm", "--name", "tb-1"]
    assert ["-p", "127.0.0.1:43000:80"] == cmd[cmd.index("-p") : cmd.index("-p") + 2]
    assert ["--shm-size", "2g"] == cmd[cmd.index("--shm-size") : cmd.index("--shm-size") + 2]
    assert ["--device", "nvidia.com/gpu=all"] == cmd[cmd.index("--device") : cmd.index("--device") + 2]
    assert f"{tmp_path / 'hf'}:/data" in cmd and f"{model}:/models/tiny:ro" in cmd
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "-e"] == ["HF_TOKEN", "LOG_LEVEL"]
    assert "hf_secret_value" not in " ".join(cmd)  # env goes by name; the value stays in the environment
    image = cmd.index(DEFAULT_IMAGE)
    assert cmd[image + 1 :] == [
        "--model-id", "/models/tiny", "--hostname", "0.0.0.0", "--port", "80", "--max-batch-size", "8",
    ]  # fmt: skip
    assert any(a.startswith("tokenbench.owner=") for a in cmd)


def test_gpu_flags_per_runtime() -> None:
    assert gpu_flags("docker", "all") == ["--gpus", "all"]
    assert gpu_flags("docker", "0,1") == ["--gpus", "device=0,1"]
    assert gpu_flags("podman", "all") == ["--device", "nvidia.com/gpu=all"]
    assert gpu_flags("podman", "0,1") == ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"]
    assert gpu_flags("podman", "none") == gpu_flags("docker", "none") == []


def test_concurrency_cap_and_kv_fit_inputs() -> None:
    spec = get_spec("tgi")
    assert spec.concurrency_cap({}) == (128, "max_concurrent_requests")
    assert spec.concurrency_cap({"max_concurrent_requests": 8}).limit == 8
    (cell,) = cells({"max_batch_size": 48, "quantize": "awq", "cuda_memory_fraction": 0.5})
    inputs = spec.kv_fit(dict(cell.settings), cell.server)
    assert (inputs.max_seqs, inputs.seqs_setting, inputs.quantization) == (48, "max_batch_size", "awq")
    assert inputs.memory_fraction == pytest.approx(0.45)  # fraction x TGI's 0.90 wiggle room
    assert weight_format("", "solidrust/Mistral-7B-Instruct-v0.3-AWQ") == "awq"
    assert weight_format("eetq", "m") == "fp8" and weight_format("", "m") == "none"


def test_tgi_is_registered_and_documented() -> None:
    assert get_spec("tgi").label == "TGI"
    readme = (REPO / "servers" / "README.md").read_text()
    assert "| `tgi`" in readme and "## `backend: tgi`" in readme
    for key in FLAG_SETTINGS:
        assert f"`{key}`" in readme, key
