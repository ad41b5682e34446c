"""Turn a backend ``Settings`` model's verdict into messages that name the field and the value.

Why its own module: every backend validates ``servers[].settings`` the same
way (value by value, so a sweep list is checked before cells are expanded)
and every message must read the same, ``settings.max_num_seqs: must be >= 1,
got -4``, whichever backend produced it. Pydantic's own wording ("Input should
be greater than or equal to 1") names neither, so it is re-worded here.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from harness.yamlfile import shown

# pydantic error type -> how to say it (``{bound}`` is the constraint's limit).
_BOUNDS = {
    "greater_than": ("gt", "must be > {bound}"),
    "greater_than_equal": ("ge", "must be >= {bound}"),
    "less_than": ("lt", "must be < {bound}"),
    "less_than_equal": ("le", "must be <= {bound}"),
}
_TYPE_ERRORS = ("_type", "_parsing")


def _type_names(model: type[BaseModel], key: str) -> str:
    """``int or float`` for a field annotated ``float | None`` (strict ``float`` takes ints too)."""
    annotation = model.model_fields[key].annotation
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    names: list[str] = []
    for arg in typing.get_args(annotation) if union else (annotation,):
        if typing.get_origin(arg) is typing.Annotated:
            arg = typing.get_args(arg)[0]
        if arg is type(None):
            continue
        names += ["int", "float"] if arg is float else [getattr(arg, "__name__", str(arg))]
    return " or ".join(dict.fromkeys(names))


def _message(model: type[BaseModel] | None, error: Any) -> str:
    """One pydantic error as ``settings.KEY: what is wrong, got VALUE``."""
    loc = [str(p) for p in error["loc"]]
    key = loc[0] if loc else ""
    value = error.get("input")
    kind = error["type"]
    prefix = f"settings.{key}: " if key else ""
    if kind in _BOUNDS:
        name, text = _BOUNDS[kind]
        bound = (error.get("ctx") or {}).get(name)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"{prefix}{text.format(bound=bound)}, got {shown(value)}"
    if model is not None and key in model.model_fields and kind.endswith(_TYPE_ERRORS):
        return f"{prefix}expected {_type_names(model, key)}, got {shown(value)}"
    if kind == "value_error":
        return prefix + str(error["msg"]).removeprefix("Value error, ")
    return f"{prefix}{error['msg']} (got {shown(value)})"


def format_settings_errors(err: ValueError, model: type[BaseModel] | None = None) -> list[str]:
    """Messages for a failed ``Settings.model_validate`` (any other ``ValueError``: its text)."""
    if isinstance(err, ValidationError):
        return [_message(model, e) for e in err.errors()]
    return [str(err)]


def settings_value_errors(
    model: type[BaseModel], settings: dict[str, Any], label: str, context: dict[str, Any]
) -> list[str]:
    """Check each setting's value (each value of a sweep list) on its own against ``model``.

    Unknown keys get one message listing the known ones; rules that need
    several settings together are the model's validators, checked per cell.
    """
    known = sorted(model.model_fields)
    errors: list[str] = []
    for key, raw in settings.items():
        if key not in model.model_fields:
            errors.append(
                f"settings.{key}: unknown {label} setting '{key}'; known settings: {', '.join(known)}"
            )
            continue
        for value in raw if isinstance(raw, list) else [raw]:
            if value is None:
                continue
            try:
                model.__pydantic_validator__.validate_assignment(
                    model.model_construct(), key, value, context=context
                )
            except ValidationError as err:
                # Only this field's own errors: rules across fields are judged per cell, on whole sets.
                errors += [_message(model, e) for e in err.errors() if tuple(e["loc"])[:1] == (key,)]
    return errors
