"""Backend environments: one venv per server build under ``.cache/venvs``, made by ``tokenbench setup NAME``.

Adding one is a module with an :class:`~harness.envs.base.Environment`
subclass plus one line in ``ENVIRONMENTS``. Backend specs name the
environments a server needs (``BackendSpec.environments``); nothing else
decides which ones get built.
"""

from __future__ import annotations

from pathlib import Path

from harness.envs.base import BackendEnvError, Environment, Progress
from harness.envs.caikit import CaikitEnv
from harness.envs.tgis import TgisEnv
from harness.envs.vllm_cpu import VllmCpuEnv
from harness.envs.vllm_gpu import VllmGpuEnv

# One line per environment.
ENVIRONMENTS: dict[str, type[Environment]] = {
    "vllm-cpu": VllmCpuEnv,
    "vllm-gpu": VllmGpuEnv,
    "tgis": TgisEnv,
    "caikit": CaikitEnv,
}

__all__ = ["BackendEnvError", "Environment", "ENVIRONMENTS", "env_names", "get_env", "ensure_env"]


def env_names() -> tuple[str, ...]:
    return tuple(ENVIRONMENTS)


def get_env(name: str) -> Environment:
    try:
        return ENVIRONMENTS[name]()
    except KeyError:
        raise BackendEnvError(
            f"unknown backend environment {name!r} (known: {', '.join(env_names())})"
        ) from None


def ensure_env(name: str, repo_root: Path, progress: Progress = print, *, force: bool = False) -> Path:
    """Build environment ``name`` if it is not complete; its interpreter."""
    return get_env(name).ensure(repo_root, progress, force=force)
