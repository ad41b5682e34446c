"""Published JSON Schemas of the files a run writes, generated from the pydantic models.

Why generated and committed: tools outside Python (dashboards, CI scripts,
other languages) validate ``summary.json`` without importing tokenbench, so
the schema must be a file; generating it from ``harness.results`` means it
cannot drift from what the harness writes and reads, and
``tests/test_exports.py`` fails when the committed file is stale.

Regenerate after changing ``harness/results.py``::

    python -m harness.schemas          # rewrites harness/schemas/summary.schema.json
    python -m harness.schemas --check  # exit 1 when it is stale
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.results import SCHEMA_VERSION, RunSummary

SUMMARY_SCHEMA_PATH = Path(__file__).with_name("summary.schema.json")


def summary_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``summary.json`` at this ``SCHEMA_VERSION``."""
    schema = RunSummary.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": f"tokenbench summary.json, schema_version {SCHEMA_VERSION} (generated from "
        "harness.results.RunSummary by `python -m harness.schemas`).",
        **{k: v for k, v in schema.items() if k != "description"},
    }


def schema_text() -> str:
    return json.dumps(summary_schema(), indent=2, sort_keys=True) + "\n"
