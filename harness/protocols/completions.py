"""``completions``: OpenAI ``POST /v1/completions``, streamed (rules in ``harness.protocols.openai``)."""

from __future__ import annotations

from harness.protocols.openai import openai_spec

SPEC = openai_spec("completions", "/v1/completions", chat=False)
