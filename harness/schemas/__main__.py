"""``python -m harness.schemas [--check]``: write (or check) the committed ``summary.schema.json``."""

from __future__ import annotations

import sys

from harness.atomic import write_text
from harness.schemas import SUMMARY_SCHEMA_PATH, schema_text


def main(argv: list[str]) -> int:
    text = schema_text()
    if "--check" in argv:
        current = SUMMARY_SCHEMA_PATH.read_text(encoding="utf-8") if SUMMARY_SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SUMMARY_SCHEMA_PATH}: stale; run `python -m harness.schemas`", file=sys.stderr)
            return 1
        print(f"{SUMMARY_SCHEMA_PATH}: up to date")
        return 0
    write_text(SUMMARY_SCHEMA_PATH, text)
    print(f"wrote {SUMMARY_SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
