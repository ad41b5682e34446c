"""Print, as JSON, the values the installed vLLM accepts for the settings tokenbench checks.

Run by ``tokenbench setup`` with the *backend environment's* interpreter (so it
imports vLLM, never the harness): ``python dump_vllm_choices.py``. The output
is written beside the environment's completion marker as ``vllm-choices.json``
and read by ``harness/backends/vllm_settings.py`` at ``validate`` time.
Standard library and vLLM only; works with vLLM 0.12 (TGIS adapter env) and 0.32.
"""

import importlib.metadata
import json


def parser_choices() -> dict:
    from vllm.engine.arg_utils import AsyncEngineArgs

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser()
    AsyncEngineArgs.add_cli_args(parser)
    found = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option in ("--dtype", "--kv-cache-dtype", "--quantization") and action.choices:
                found[option[2:].replace("-", "_")] = [str(c) for c in action.choices]
    return found


def main() -> None:
    choices = parser_choices()
    if "quantization" not in choices:  # vLLM checks it after parsing, against this list
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

        choices["quantization"] = [str(m) for m in QUANTIZATION_METHODS]
    out = {"vllm_version": importlib.metadata.version("vllm"), "choices": choices}
    print("TOKENBENCH-CHOICES " + json.dumps(out))


if __name__ == "__main__":
    main()
