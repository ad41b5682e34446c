"""vLLM backend: settings → flags, validation, CPU defaults, redaction, and launch/teardown
against a fake interpreter (a script that answers like ``vllm serve`` without loading vLLM)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from harness.backends.base import BackendStartError
from harness.backends.registry import launch, validate_server, validate_settings
from harness.backends.vllm import (
    CPU_DEFAULT_ENV,
    FLAG_SETTINGS,
    REDACTED,
    SPEC,
    VersionCache,
    build_command,
    recorded_env,
    redact_command,
    settings_to_flags,
)
from harness.matrix import Cell
from harness.scenario import Server

vllm_validate = SPEC.validate

FAKE_VLLM = r"""
import json, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
if sys.argv[1] == "-c":
    print(os.environ.get("FAKE_VLLM_VERSION", "9.9.9+cpu"))
    sys.exit(0)
args = sys.argv[1:]
with open("fake_argv.json", "w") as fh:
    json.dump({"argv": args, "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "HF_", "TB_"))}}, fh)
print("fake vllm starting", flush=True)
if os.environ.get("FAKE_VLLM_CRASH"):
    for i in range(60):
        print(f"engine line {i}")
    print("ValueError: unsupported setting", flush=True)
    sys.exit(2)
child = subprocess.Popen(["sleep", "300"])
with open("fake_child.pid", "w") as fh:
    fh.write(str(child.pid))
port = int(args[args.index("--port") + 1])
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"data": [{"id": "m"}]}' if self.path == "/v1/models" else b"ok"
        self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _server(**kw: object) -> Server:
    base: dict[str, object] = {"name": "v", "backend": "vllm", "model": "some/model"}
    base.update(kw)
    return Server.model_validate(base)


def _cell(server: Server) -> Cell:
    return Cell("v__x", server, {k: v for k, v in server.settings.items() if not isinstance(v, list)})


def test_every_setting_maps_to_its_flag() -> None:
    settings = {
        "quantization": "fp8",
        "kv_cache_dtype": "fp8_e4m3",
        "dtype": "bfloat16",
        "max_num_seqs": 8,
        "max_num_batched_tokens": 4096,
        "enable_chunked_prefill": True,
        "enable_prefix_caching": False,
        "max_model_len": 1024,
        "gpu_memory_utilization": 0.85,
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "enforce_eager": True,
        "seed": 7,
        "block_size": 32,
        "distributed_executor_backend": "mp",
    }
    assert set(settings) == set(FLAG_SETTINGS)
    flags = settings_to_flags(settings)
    assert flags == [
        "--quantization", "fp8", "--kv-cache-dtype", "fp8_e4m3", "--dtype", "bfloat16",
        "--max-num-seqs", "8", "--max-num-batched-tokens", "4096", "--enable-chunked-prefill",
        "--no-enable-prefix-caching", "--max-model-len", "1024", "--gpu-memory-utilization", "0.85",
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1", "--enforce-eager", "--seed", "7",
        "--block-size", "32", "--distributed-executor-backend", "mp",
    ]  # fmt: skip


def test_none_omits_flag_and_false_bool_negates() -> None:
    assert settings_to_flags({"max_num_seqs": None, "enforce_eager": None}) == []
    assert settings_to_flags({"enable_chunked_prefill": False}) == ["--no-enable-chunked-prefill"]
    assert settings_to_flags({"enforce_eager": False}) == ["--no-enforce-eager"]


def test_unknown_setting_names_server_cell_and_key() -> None:
    server = _server(settings={"max_num_seqz": 4, "max_num_seqs": 4})
    errors = vllm_validate(server, "v__max")
    assert len(errors) == 1
    assert "server 'v'" in errors[0] and "cell 'v__max'" in errors[0] and "'max_num_seqz'" in errors[0]


def test_wrong_types_are_reported_per_sweep_value() -> None:
    server = _server(
        settings={"max_num_seqs": [4, "eight"], "enforce_eager": 1, "gpu_memory_utilization": 0.9}
    )
    errors = vllm_validate(server)
    assert len(errors) == 2
    assert any("settings.max_num_seqs" in e and "'eight'" in e for e in errors)
    assert any("settings.enforce_eager" in e and "bool" in e for e in errors)
    assert vllm_validate(_server(settings={"max_num_seqs": [4, None]})) == []


def test_registry_validate_dispatches_on_cell() -> None:
    assert validate_settings(_cell(_server(settings={"bogus": 1}))) != []
    assert validate_settings(_cell(_server(settings={"seed": 1}))) == []
    external = Server(name="e", backend="external", model="m", base_url="http://x", settings={"seed": 1})
    assert validate_server(external) != []


def test_cpu_defaults_added_unless_overridden(tmp_path: Path) -> None:
    cell = _cell(_server())
    cmd, env = build_command(cell, python=Path("/py"), port=1234, home=tmp_path, cpu=True)
    assert cmd[:5] == ["/py", "-m", "vllm.entrypoints.cli.main", "serve", "some/model"]
    assert cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--served-model-name") + 1] == "some/model"
    assert "--enforce-eager" in cmd
    assert cmd[cmd.index("--distributed-executor-backend") + 1] == "uni"
    assert env == CPU_DEFAULT_ENV

    over = _cell(
        _server(
            settings={"enforce_eager": False},
            args=["--distributed-executor-backend=mp", "--swap-space", "1"],
            env={"VLLM_CPU_KVCACHE_SPACE": "4"},
            served_model_name="tiny",
        )
    )
    cmd, env = build_command(over, python=Path("/py"), port=1, home=tmp_path, cpu=True)
    assert "--enforce-eager" not in cmd and "--no-enforce-eager" in cmd
    assert cmd.count("--distributed-executor-backend") == 0
    assert cmd[-3:] == ["--distributed-executor-backend=mp", "--swap-space", "1"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny"

    cmd, env = build_command(cell, python=Path("/py"), port=1, home=tmp_path, cpu=False)
    assert "--enforce-eager" not in cmd and "--distributed-executor-backend" not in cmd
    assert env == {}


def test_server_max_model_len_and_env_settings(tmp_path: Path) -> None:
    cell = _cell(_server(max_model_len=512, settings={"cpu_kvcache_space_gib": 2}))
    cmd, env = build_command(cell, python=Path("/py"), port=1, home=tmp_path, cpu=True)
    assert cmd[cmd.index("--max-model-len") + 1] == "512"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_local_model_path_is_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    cell = _cell(_server(model="models/tiny"))
    cmd, _ = build_command(cell, python=Path("/py"), port=1, home=tmp_path, cpu=False)
    assert cmd[4] == str((tmp_path / "models" / "tiny").resolve())
    assert cmd[cmd.index("--served-model-name") + 1] == "models/tiny"


def test_secrets_are_redacted() -> None:
    env = {"HF_TOKEN": "hf_secret", "VLLM_API_KEY": "k1", "VLLM_CPU_KVCACHE_SPACE": "1", "HOME": "/root",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}  # fmt: skip
    rec = recorded_env(env)
    assert rec == {"HF_TOKEN": REDACTED, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false",
                   "VLLM_API_KEY": REDACTED, "VLLM_CPU_KVCACHE_SPACE": "1"}  # fmt: skip
    cmd = redact_command(["x", "--api-key", "s3cret", "--api-key=s3cret", "--port", "1"])
    assert "s3cret" not in " ".join(cmd)
    assert cmd == ["x", "--api-key", REDACTED, f"--api-key={REDACTED}", "--port", "1"]


@pytest.fixture()
def fake_python(tmp_path: Path) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    script.chmod(0o755)
    return script


def test_launch_records_handle_and_tears_down_tree(tmp_path: Path, fake_python: Path) -> None:
    server = _server(
        python=str(fake_python), settings={"max_num_seqs": 4}, env={"TB_X": "1"}, startup_timeout_s=30
    )
    workdir = tmp_path / "cells" / "v"
    with launch(_cell(server), workdir, home=tmp_path) as handle:
        assert handle.version == "9.9.9+cpu"
        assert handle.base_url.startswith("http://127.0.0.1:") and not handle.base_url.endswith("/")
        assert handle.metrics_url == handle.base_url + "/metrics"
        assert handle.log_path == workdir / "server.log"
        assert handle.launch_s is not None and handle.launch_s > 0
        assert handle.served_model == "some/model"
        assert handle.headers == {} and handle.simulated is False
        assert "--max-num-seqs" in handle.command and "--enforce-eager" in handle.command
        assert handle.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert httpx.get(handle.base_url + "/v1/models").status_code == 200
        seen = json.loads((workdir / "fake_argv.json").read_text())
        assert seen["env"]["TB_X"] == "1" and seen["env"]["HF_HUB_OFFLINE"] == "1"
        child = int((workdir / "fake_child.pid").read_text())
        root = handle.pid
        assert root is not None and psutil.pid_exists(child)
    assert "fake vllm starting" in (workdir / "server.log").read_text()
    for pid in (root, child):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_launch_crash_raises_with_log_tail_fast(
    tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_CRASH", "1")
    server = _server(python=str(fake_python), startup_timeout_s=300)
    started = time.monotonic()
    with pytest.raises(BackendStartError) as info:
        with launch(_cell(server), tmp_path / "c", home=tmp_path):
            pytest.fail("should not become ready")
    assert time.monotonic() - started < 60
    assert "cell 'v__x'" in str(info.value) and "exited with code 2" in str(info.value)
    assert info.value.log_tail[-1] == "ValueError: unsupported setting"
    assert len(info.value.log_tail) == 50


def test_missing_interpreter_and_bad_settings_fail_before_launch(tmp_path: Path) -> None:
    with pytest.raises(BackendStartError, match="does not exist"):
        with launch(_cell(_server(python=str(tmp_path / "nope"))), tmp_path / "c", home=tmp_path):
            pass
    with pytest.raises(BackendStartError, match="unknown vLLM setting 'nope'"):
        with launch(_cell(_server(settings={"nope": 1})), tmp_path / "c", home=tmp_path):
            pass


def test_version_cache_probes_once(
    tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = VersionCache()
    monkeypatch.setenv("FAKE_VLLM_VERSION", "1.0.0")
    assert cache.get(fake_python) == "1.0.0"
    monkeypatch.setenv("FAKE_VLLM_VERSION", "2.0.0")
    assert cache.get(fake_python) == "1.0.0"
    assert VersionCache().get(tmp_path / "missing") is None


def test_relative_python_resolves_against_cwd_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented rule (harness.home): cwd's if it exists, else the home's; an environment not
    built yet is still recognised as the home's (so `setup --for` builds it)."""
    from harness.backends.vllm import VllmBackend

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    backend = VllmBackend(home=home)
    assert (
        backend.python_for(_server(python="venvs/vllm-gpu/bin/python")) == home / "venvs/vllm-gpu/bin/python"
    )
    assert backend.python_for(_server(python="bin/python")) == work / "bin/python"  # neither exists
    (home / "bin").mkdir(parents=True)
    (home / "bin/python").touch()
    assert backend.python_for(_server(python="bin/python")) == home / "bin/python"
    (work / "bin").mkdir()
    (work / "bin/python").touch()
    assert backend.python_for(_server(python="bin/python")) == work / "bin/python"  # cwd first
    assert backend.python_for(_server(python="/abs/python")) == Path("/abs/python")
    assert backend.python_for(_server()) == home / "venvs/vllm-cpu/bin/python"


def test_ctrl_c_inside_launch_stops_server(tmp_path: Path, fake_python: Path) -> None:
    server = _server(python=str(fake_python), startup_timeout_s=30)
    workdir = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        with launch(_cell(server), workdir, home=tmp_path) as handle:
            root = handle.pid
            raise KeyboardInterrupt
    child = int((workdir / "fake_child.pid").read_text())
    for pid in (root, child):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_ctrl_c_during_health_wait_stops_server(
    tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.backends.process as process_mod

    def interrupted(*args: object, **kwargs: object) -> float:
        deadline = time.monotonic() + 10
        while not (tmp_path / "c" / "fake_child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        raise KeyboardInterrupt

    monkeypatch.setattr(process_mod, "wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with launch(_cell(_server(python=str(fake_python))), tmp_path / "c", home=tmp_path):
            pytest.fail("should not get here")
    child = int((tmp_path / "c" / "fake_child.pid").read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
