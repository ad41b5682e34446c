"""Backend environments: one venv per server build under ``TOKENBENCH_HOME/venvs``, made by ``tokenbench setup NAME``.

Adding one is a module with an :class:`~harness.envs.base.Environment`
subclass plus one line in ``ENVIRONMENTS``. Backend specs name the
environments a server needs (``BackendSpec.environments``); nothing else
decides which ones get built.
"""

from __future__ import annotations

from pathlib import Path

from harness.envs.base import BackendEnvError, Environment, Progress, venv_dir, venv_python
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

__all__ = [
    "BackendEnvError",
    "Environment",
    "ENVIRONMENTS",
    "env_names",
    "get_env",
    "ensure_env",
    "resolve_python",
]


def env_names() -> tuple[str, ...]:
    return tuple(ENVIRONMENTS)


def get_env(name: str) -> Environment:
    try:
        return ENVIRONMENTS[name]()
    except KeyError:
        raise BackendEnvError(
            f"unknown backend environment {name!r} (known: {', '.join(env_names())})"
        ) from None


def ensure_env(name: str, home: Path, progress: Progress = print, *, force: bool = False) -> Path:
    """Build environment ``name`` if it is not complete; its interpreter."""
    return get_env(name).ensure(home, progress, force=force)


def resolve_python(given: str, home: Path) -> Path:
    """A ``servers[].python`` as the interpreter path it means (``harness.home`` states the rule).

    Absolute: as is. Relative: the current directory's if it exists, else the
    home's; when neither exists yet, the one that is a tokenbench environment's
    interpreter (so ``tokenbench setup --for`` builds it), else the current
    directory's (the launch then fails naming that path).
    """
    path = Path(given).expanduser()
    if path.is_absolute():
        return path
    candidates = [path.absolute(), home / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    ours = {venv_python(venv_dir(home, name)).absolute() for name in env_names()}
    return next((c for c in candidates if c.absolute() in ours), candidates[0])
