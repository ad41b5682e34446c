"""Record, beside an environment's marker, which setting values its vLLM accepts.

Why a file written at setup: asking vLLM takes seconds (it imports torch), too
slow for every ``validate``; the answer only changes when the env is rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.backends.vllm_settings import CHOICES_FILE
from harness.envs.base import BackendEnvError, Installer

DUMPER = Path(__file__).with_name("dump_vllm_choices.py")
PREFIX = "TOKENBENCH-CHOICES "


def record_vllm_choices(python: Path, inst: Installer) -> Path | None:
    """Run the dumper in the env and write ``vllm-choices.json`` next to its marker.

    Not fatal: without the file, validation uses the lists kept in code and says so.
    """
    try:
        out = inst.output("record vLLM setting choices", [str(python), str(DUMPER)])
        lines = [line for line in out.splitlines() if line.startswith(PREFIX)]
        if not lines:
            raise BackendEnvError("the dump printed no choices")
        data = json.loads(lines[-1].removeprefix(PREFIX))
    except (BackendEnvError, ValueError) as err:
        inst.progress(
            f"[{inst.env_name}] could not record vLLM's setting choices ({err}); using the built-in lists"
        )
        return None
    path = python.parent.parent / CHOICES_FILE
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    inst.progress(f"[{inst.env_name}] recorded vLLM {data.get('vllm_version')} setting choices: {path}")
    return path


def choices_missing(env_dir: Path) -> bool:
    return not (env_dir / CHOICES_FILE).is_file()
