"""Whether a measured step is fit to report, or its failures mean the cell must stop.

Why: a step whose every request got 401 finished "successfully" at 11k
requests/s, 34,138 failures, exit code 0 and a cell marked "ok": a benchmark
that measures its own error path. A step whose error rate reaches the
scenario's ``workload.abort_error_rate`` fails its cell, with the top error
classes, the HTTP statuses and a sample message, and the run exits non-zero.
Authentication failures (401/403) are named as such, since the fix is a key,
not a server setting.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from harness.results import StepMetrics

AUTH_STATUSES = {401: "401 Unauthorized", 403: "403 Forbidden"}


class StepFailed(RuntimeError):
    """A step failed too many requests to be a measurement; the message says how and why."""


def check_step(frame: pd.DataFrame, metrics: StepMetrics, abort_error_rate: float) -> None:
    """Raise ``StepFailed`` if the step's error rate is at or above ``abort_error_rate``."""
    measured = frame[~frame["warmup"]] if "warmup" in frame else frame
    total = len(measured)
    if total == 0:
        raise StepFailed(f"step {metrics.step_id}: no request was measured")
    failed = measured[measured["error_class"].notna()]
    if len(failed) / total < abort_error_rate:
        return
    classes = Counter(failed["error_class"]).most_common(3)
    statuses = Counter(int(s) for s in failed["status"].dropna() if int(s) >= 400).most_common(3)
    parts = [
        f"step {metrics.step_id}: {len(failed)} of {total} requests failed "
        f"({100 * len(failed) / total:.0f}% >= abort_error_rate {100 * abort_error_rate:g}%)",
        "top errors: " + ", ".join(f"{name} {count}" for name, count in classes),
    ]
    if statuses:
        parts.append("HTTP statuses: " + ", ".join(f"{code} x{count}" for code, count in statuses))
    auth = [AUTH_STATUSES[code] for code, _ in statuses if code in AUTH_STATUSES]
    if auth:
        parts.append(
            f"authentication failed ({', '.join(auth)}): check the server's API key "
            "(servers[].api_key_env) or token"
        )
    sample = next((m for m in failed["error_message"] if isinstance(m, str) and m), None)
    if sample:
        parts.append(f"sample: {sample[:300]}")
    raise StepFailed("; ".join(parts))
