"""Things a run needs before any server starts: local models, tokenizers, backend environments.

Why a separate step: model generation and backend-environment creation take
minutes the first time and must print progress, while everything after them
is timed. Doing them up front also means a missing piece fails the run before
a single server is launched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.home import models_dir
from harness.scenario import Scenario, Server

LOCAL_MODEL_PREFIX = "tokenbench:"
# local model name -> the architecture ``harness.tinyarch`` builds it with (one shared tokenizer)
TINY_MODELS = {"tiny-llama": "llama", "tiny-gpt2": "gpt2"}

Progress = Callable[[str], None]


def _is_local(server: Server) -> bool:
    """A ``tokenbench:<name>`` model that a real server loads (the simulator takes the name as is)."""
    from harness.backends.registry import get_spec

    return server.model.startswith(LOCAL_MODEL_PREFIX) and not get_spec(server.backend).simulated


def check_local_model(server: Server) -> list[str]:
    """Problems with a ``tokenbench:<name>`` model reference, found before anything starts."""
    name = server.model.removeprefix(LOCAL_MODEL_PREFIX)
    if _is_local(server) and name not in TINY_MODELS:
        known = ", ".join(LOCAL_MODEL_PREFIX + m for m in sorted(TINY_MODELS))
        return [f"server '{server.name}': model {server.model!r} is not a known local model (known: {known})"]
    return []


def _local_path(given: str | None, home: Path) -> str | None:
    """A relative model/tokenizer path that exists under the cwd or the home, made absolute (else as given:
    a hub id such as ``org/name`` is not a path here)."""
    if not given or Path(given).is_absolute():
        return given
    for base in (Path.cwd(), home):
        if (base / given).exists():
            return str((base / given).resolve())
    return given


def resolve_server(server: Server, home: Path, progress: Progress) -> Server:
    """Replace a ``tokenbench:<name>`` model by its generated folder (creating it once, cached), and a
    relative local model or tokenizer path by the absolute one (cwd first, then ``home``)."""
    if not _is_local(server):
        update = {"model": _local_path(server.model, home), "tokenizer": _local_path(server.tokenizer, home)}
        return (
            server.model_copy(update=update)
            if update != {"model": server.model, "tokenizer": server.tokenizer}
            else server
        )
    name = server.model.removeprefix(LOCAL_MODEL_PREFIX)
    from harness.tinymodel import make_tiny_model

    path = models_dir(home) / name
    progress(f"model: {server.model} -> {path}")
    make_tiny_model(path, architecture=TINY_MODELS[name])
    return server.model_copy(
        update={
            "model": str(path),
            "tokenizer": server.tokenizer or str(path),
            "served_model_name": server.served_model_name or name,
        }
    )


def resolve_scenario(scenario: Scenario, home: Path, progress: Progress) -> Scenario:
    servers = [resolve_server(s, home, progress) for s in scenario.servers]
    return scenario.model_copy(update={"servers": servers})


def tokenizer_path(server: Server) -> Path | None:
    """A local ``tokenizer.json`` for exact prompt lengths and client-side token counts, if one exists.

    Hub ids are not fetched here: with no local tokenizer the load layer falls
    back to approximate prompt lengths and to the server's ``usage`` counts, and
    the report says which source was used.
    """
    for candidate in (server.tokenizer, server.model):
        if not candidate:
            continue
        p = Path(candidate)
        if p.is_file() and p.name.endswith(".json"):
            return p
        if (p / "tokenizer.json").is_file():
            return p / "tokenizer.json"
    return None


def required_environments(scenario: Scenario, home: Path) -> list[str]:
    """The backend environments this scenario's servers run from, in first-use order, each once.

    Derived from each server's backend spec (``BackendSpec.environments``), so
    ``make bench`` builds exactly what the chosen scenario needs.
    """
    from harness.backends.registry import get_spec

    names: list[str] = []
    for server in scenario.servers:
        names += [n for n in get_spec(server.backend).environments(server, home) if n not in names]
    return names


def prepare_backends(scenario: Scenario, home: Path, progress: Progress) -> None:
    """Let each server's backend build what it needs (idempotent: a complete env costs milliseconds)."""
    from harness.backends.registry import get_spec

    seen: set[tuple[str, tuple[str, ...]]] = set()
    for server in scenario.servers:
        spec = get_spec(server.backend)
        key = (spec.name, tuple(spec.environments(server, home)))
        if key not in seen:
            seen.add(key)
            spec.prepare(server, home, progress)
