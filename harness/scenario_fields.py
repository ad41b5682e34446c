"""The strict base model and the constrained field types that every block of a scenario is built from.

Why a module of its own: the scenario's blocks (``scenario`` for servers and the
whole file, ``workload`` for the load) judge the same kinds of value the same
way: unknown keys rejected, ``.inf``/``.nan`` refused, seconds and token counts
inside ``harness.bounds``, names fit for folder names, protocols only from the
registry. Defined once here, a bound cannot drift between the blocks.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from harness.bounds import MAX_NAME, MAX_SECONDS, MAX_TOKENS

Scalar = str | int | float | bool | None


class StrictModel(BaseModel):
    # allow_inf_nan=False: YAML's .inf/.nan in a duration or rate fails here, not as an
    # OverflowError after the server started.
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
Tokens = Annotated[int, Field(gt=0, le=MAX_TOKENS)]
Name = Annotated[str, Field(max_length=MAX_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


def _known_protocol(name: str) -> str:
    """A protocol name from the registry (``harness.protocols``); the error lists the known ones."""
    from harness.protocols.base import ProtocolError
    from harness.protocols.registry import get_protocol

    try:
        get_protocol(name)
    except ProtocolError as err:
        raise ValueError(str(err)) from None
    return name


Api = Annotated[str, AfterValidator(_known_protocol)]
