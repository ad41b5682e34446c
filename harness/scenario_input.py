"""A user's scenario text as data, and its failures as messages that name file, field and value.

Why apart from the scenario model: the model says what a scenario *is*;
this module owns the edge around it: ``--set`` overrides, strings no
process may receive (NUL), and the rewording of pydantic's errors so every
line reads ``FILE: invalid scenario`` then ``  FIELD.PATH: what is wrong (got
VALUE)``, with values cut short (a document is never echoed whole).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from harness.bounds import FieldProblem
from harness.yamlfile import brief, parse_yaml, shown


class ScenarioError(ValueError):
    """A scenario that cannot run. The message starts with the file and names field and value."""


def format_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid scenario"]
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = ""
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        value = e.get("input")
        problem = (e.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):  # a rule judged by the model, blamed on one field
            value = problem.value
            if problem.path:
                sep = "" if not path or problem.path.startswith("[") else "."
                path += sep + problem.path
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if e["type"] == "finite_number":
            msg = "must be a finite number (.inf and .nan are refused)"
        lines.append(f"  {brief(path, 200) or '<top>'}: {brief(msg)} (got {shown(value)})")
    return "\n".join(lines)


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "") -> dict[str, Any]:
    """Apply ``path=value`` overrides (``workload.duration_s=5``, ``servers.0.settings.max_num_seqs=[4,8]``).

    Values are parsed as YAML, so lists and numbers work as they would in the file.
    Errors start with ``source`` (the scenario file) when given.
    """
    data = copy.deepcopy(data)
    where = f"{source}: " if source else ""
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(f"{where}--set {shown(item)}: expected path=value")
        path, raw = item.split("=", 1)
        value = parse_yaml(raw, f"{where}--set {shown(item)}", ScenarioError, "value")
        keys = path.strip().split(".")
        node: Any = data
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ScenarioError(
                        f"{where}--set {shown(item)}: {'.'.join(keys[: i + 1])} is not a valid list index"
                    )
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise ScenarioError(
                    f"{where}--set {shown(item)}: {'.'.join(keys[:i])} is not a mapping or list"
                )
    return data


def first_nul(node: Any, path: str) -> tuple[str, str] | None:
    """The path and value of the first string (key or value) holding a NUL character."""
    if isinstance(node, str):
        return (path, node) if "\0" in node else None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        if isinstance(key, str) and "\0" in key:
            return sub, key
        found = first_nul(value, sub)
        if found:
            return found
    return None
