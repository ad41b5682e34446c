"""Backend environments: one venv per server build under ``TOKENBENCH_HOME/venvs``, made by ``tokenbench setup NAME``.

Adding one is a module with an :class:`~harness.envs.base.Environment`
subclass plus one line in ``ENVIRONMENTS``. Backend specs name the
environments a server needs (``BackendSpec.environments``); nothing else
decides which ones get built.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.envs.base import (
    BackendEnvError,
    Environment,
    Installer,
    InstallerFactory,
    Progress,
    check_disk,
    venv_dir,
    venv_python,
)
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
    "ensure_envs",
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


def ensure_env(
    name: str,
    home: Path,
    progress: Progress = print,
    *,
    force: bool = False,
    installer: InstallerFactory = Installer,
) -> Path:
    """Build environment ``name`` if it is not complete (``check_disk`` first); its interpreter."""
    return ensure_envs([name], home, progress, force=force, installer=installer)[name]


def ensure_envs(
    names: list[str],
    home: Path,
    progress: Progress = print,
    *,
    force: bool = False,
    installer: InstallerFactory = Installer,
) -> dict[str, Path]:
    """Build every named environment that is not complete, all at once; their interpreters by name.

    Why at once: an install is mostly one process unpacking wheels, so two or
    three side by side use the cores a lone one leaves idle (each env has its
    own venv and log; pip's download cache is safe to share). Every build runs
    to its end even when another fails, and the failures are raised together.
    """
    if not names:
        return {}
    envs = {name: get_env(name) for name in names}
    check_disk([env for env in envs.values() if force or not env.is_complete(home)], home)  # all together
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="setup") as pool:
        futures = {
            name: pool.submit(env.ensure, home, progress, force=force, installer=installer)
            for name, env in envs.items()
        }
    done: dict[str, Path] = {}
    failed: list[str] = []
    for name, future in futures.items():
        try:
            done[name] = future.result()
        except BackendEnvError as err:
            failed.append(str(err))
    if failed:
        raise BackendEnvError("\n\n".join(failed))
    return done


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
