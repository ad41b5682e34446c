"""``chat``: OpenAI ``POST /v1/chat/completions``, streamed (rules in ``harness.protocols.openai``).

Prompts are message lists; the server adds its chat template on top, so the
prompt count the report uses is the server's ``usage.prompt_tokens``.
"""

from __future__ import annotations

from harness.protocols.openai import openai_spec

SPEC = openai_spec("chat", "/v1/chat/completions", chat=True)
