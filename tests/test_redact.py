"""Secret redaction: whole-word names, so batch settings are never mistaken for secrets."""

from __future__ import annotations

import pytest

from harness.redact import REDACTED, is_secret_name, redact_command, redact_mapping


@pytest.mark.parametrize(
    "name",
    ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "api_key", "--api-key", "--hf-token", "password"],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_num_batched_tokens",
        "--max-num-batched-tokens",
        "kv_cache_dtype",
        "TOKENIZERS_PARALLELISM",
        "monkey",
    ],
)
def test_not_secret_names(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_command_hides_values_not_batch_settings() -> None:
    argv = ["vllm", "serve", "m", "--api-key", "s3", "--hf-token=s4", "--max-num-batched-tokens", "8192"]
    assert redact_command(argv) == [
        "vllm", "serve", "m", "--api-key", REDACTED, f"--hf-token={REDACTED}", "--max-num-batched-tokens", "8192"
    ]  # fmt: skip


def test_redact_mapping_recurses() -> None:
    data = {"HF_TOKEN": "x", "nested": {"auth": "y", "max_num_batched_tokens": 4}, "n": 1}
    assert redact_mapping(data) == {
        "HF_TOKEN": REDACTED,
        "nested": {"auth": REDACTED, "max_num_batched_tokens": 4},
        "n": 1,
    }
