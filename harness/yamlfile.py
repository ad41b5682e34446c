"""Reading a user's YAML file with errors that name the file.

Scenarios, gate policies and stored run scenarios are all read this way; each
caller raises its own error type so the CLI maps it to the right exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path, error: type[Exception], what: str) -> Any:
    """The parsed document; ``error("<path>: no such <what>")`` or ``error("<path>: not valid YAML: ...")``."""
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
