"""Secrets scrubbed by value and by shape, wherever a string came from."""

from __future__ import annotations

from harness.redact import REDACTED, scrub, scrub_text, secret_values_in_args


def test_known_values_are_replaced_longest_first() -> None:
    text = "server said: key tb-KEY-123 and tb-KEY-123-long"
    out = scrub_text(text, frozenset({"tb-KEY-123", "tb-KEY-123-long"}))
    assert "tb-KEY" not in out and out.count(REDACTED) == 2


def test_secret_shapes_are_replaced_without_being_known() -> None:
    out = scrub_text(
        "Authorization: Bearer eyJhbGciOi.x-y_z hf_abcdefghijkl sk-proj-abcdefgh authorization: Basic dXNlcjpwYXNz"
    )
    assert "eyJ" not in out and "hf_abc" not in out and "sk-proj" not in out and "dXNlc" not in out
    assert out.startswith("Authorization: Bearer REDACTED")


def test_url_userinfo_is_replaced_but_host_kept() -> None:
    assert scrub_text("http://user:p4ss@127.0.0.1:8000/v1") == f"http://{REDACTED}@127.0.0.1:8000/v1"


def test_ordinary_text_and_short_values_are_untouched() -> None:
    text = "max_num_batched_tokens=2048 basic tokens x"
    assert scrub_text(text, frozenset({"x"})) == text


def test_scrub_walks_nested_data_keys_included() -> None:
    data = {"a": ["Bearer abcdef", {"secret-value-1": 3}], "n": 5}
    assert scrub(data, frozenset({"secret-value-1"})) == {"a": [f"Bearer {REDACTED}", {REDACTED: 3}], "n": 5}


def test_secret_values_in_args() -> None:
    argv = ["serve", "--api-key", "k1k1", "--hf-token=t2t2", "--max-num-seqs", "4"]
    assert secret_values_in_args(argv) == {"k1k1", "t2t2"}
