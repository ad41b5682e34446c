"""Scrape a server's Prometheus ``/metrics`` and keep the few series that explain latency.

Why a short keep-list instead of everything: vLLM 0.32 exposes ~50 KB of text
per scrape, mostly histograms whose percentiles are bucket estimates we do not
use (our latencies come from raw records). The gauges that matter for
reading a benchmark are queue depth, running batch size, KV-cache usage and
preemptions; they are stored raw, one row per sample, with their real names
so a vLLM, TGI and simulated run read the same way.
"""

from __future__ import annotations

import logging
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.telemetry import Sample

log = logging.getLogger(__name__)

KEEP_NAMES: frozenset[str] = frozenset(
    {
        # vLLM (v1 engine; 0.32 CPU verified against tests/data/vllm_cpu_0.32_metrics.txt)
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:num_requests_swapped",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",  # older vLLM
        "vllm:cpu_cache_usage_perc",  # older vLLM
        "vllm:num_preemptions_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        # TGI
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_batch_current_max_tokens",
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_failure",
        "tgi_request_input_length_sum",
        "tgi_request_generated_tokens_sum",
    }
)
KEEP_PREFIXES: tuple[str, ...] = ("tokenbench_sim_",)
KV_CACHE_NAMES: tuple[str, ...] = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:cpu_cache_usage_perc",
)


class PrometheusParseError(ValueError):
    """The scraped text is not Prometheus exposition format."""


def wanted(name: str, keep: frozenset[str] = KEEP_NAMES) -> bool:
    """Keep-list membership; any gauge with 'vram' in its name is kept too (modelled GPU memory)."""
    return name in keep or name.startswith(KEEP_PREFIXES) or "vram" in name.lower()


def format_labels(labels: dict[str, str]) -> str:
    """Labels as a compact, stable string: ``k1=v1,k2=v2`` sorted by key ('' when none)."""
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def exposed_names(text: str) -> set[str]:
    """The sample names written in an exposition text (comment lines skipped)."""
    names: set[str] = set()
    for line in text.splitlines():
        line = line.lstrip()
        if line and not line.startswith("#"):
            end = len(line)
            for sep in ("{", " ", "\t"):
                i = line.find(sep)
                if 0 <= i < end:
                    end = i
            names.add(line[:end])
    return names


def as_exposed(name: str, family_type: str, exposed: set[str]) -> str:
    """The sample name the server wrote, where prometheus_client's parser renamed it.

    The parser appends ``_total`` to the samples of a ``counter`` family that
    lacks it (TGI writes ``tgi_request_count``, the parser yields
    ``tgi_request_count_total``). We store what the server exposed, so the
    keep-list and the report match the names in the server's own docs.
    """
    if family_type == "counter" and name.endswith("_total") and name not in exposed:
        bare = name[: -len("_total")]
        if bare in exposed:
            return bare
    return name


def parse_metrics(text: str, keep: frozenset[str] = KEEP_NAMES) -> list[Sample]:
    """The kept samples of one exposition text, names as the server wrote them (see ``as_exposed``)."""
    out: list[Sample] = []
    exposed: set[str] | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name
                if family.type == "counter" and name.endswith("_total"):
                    if exposed is None:
                        exposed = exposed_names(text)
                    name = as_exposed(name, family.type, exposed)
                if wanted(name, keep):
                    out.append(Sample(name, float(sample.value), format_labels(dict(sample.labels))))
    except (ValueError, TypeError, IndexError, KeyError) as err:
        raise PrometheusParseError(f"not Prometheus text format: {err}") from None
    return out


class _ScrapeFailed(Exception):
    """A non-200 answer."""


class PrometheusScraper:
    """One HTTP client for one ``/metrics`` URL; failures are counted, never raised.

    Why tolerant: a server busy at saturation may answer slowly, and a backend
    without metrics answers 404. Neither must disturb the benchmark. The first
    failure is logged once at INFO (URL and error kind only; headers hold API
    keys and are never logged); later ones only increment ``failures``.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 0.5,
        keep: frozenset[str] = KEEP_NAMES,
    ) -> None:
        self.url = url
        self.keep = keep
        self.successes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._client = httpx.Client(headers=headers or {}, timeout=timeout_s, follow_redirects=True)

    def scrape(self) -> tuple[int, list[Sample]]:
        """(t_ns at the middle of the request, kept samples); samples empty on failure."""
        t0 = time.monotonic_ns()
        try:
            resp = self._client.get(self.url)
            t1 = time.monotonic_ns()
            if resp.status_code != 200:
                raise _ScrapeFailed(f"HTTP {resp.status_code}")
            samples = parse_metrics(resp.text, self.keep)
        except httpx.HTTPError as err:  # the message may quote the request; the class name is enough
            self._fail(type(err).__name__)
            return time.monotonic_ns(), []
        except (_ScrapeFailed, PrometheusParseError) as err:
            self._fail(str(err))
            return time.monotonic_ns(), []
        self.successes += 1
        return (t0 + t1) // 2, samples

    def _fail(self, reason: str) -> None:
        if self.failures == 0:
            log.info(
                "metrics scrape of %s failed (%s); further failures are counted silently", self.url, reason
            )
        self.failures += 1
        self.last_error = reason

    def close(self) -> None:
        self._client.close()
