"""The report at 1400 px in headless Chromium: the default table fits, and nothing overflows its box.

Measured, not eyeballed: every table cell of the headline, the default
summary table and the harness table must hold its content (scrollWidth ≤
clientWidth), the default table must fit its wrapper without a scrollbar,
the page must not scroll sideways, and every SVG label must lie inside its
figure (a clipped label is one whose box leaves the SVG). Screenshots are
written next to the run for a human to look at.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from test_report_browser import CHROMIUM, DevTools, browser  # noqa: F401 - the fixture is used by name

from harness.report import write_report
from synthetic_run import SyntheticOptions, make_run

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]

WIDTH = 1400

PROBE = """(() => {
  const over = [];
  for (const sel of ['#headline_table', '#summary_compact', '#harness_table']) {
    const t = document.querySelector(sel);
    if (!t) { over.push({where: sel, what: 'missing'}); continue; }
    for (const el of t.querySelectorAll('td, th')) {
      if (el.scrollWidth > el.clientWidth + 1)
        over.push({where: sel, what: el.textContent.slice(0, 60), sw: el.scrollWidth, cw: el.clientWidth});
    }
  }
  const wraps = {};
  for (const sel of ['#headline_table', '#summary_compact', '#harness_table']) {
    const w = document.querySelector(sel).closest('.table-wrap');
    wraps[sel] = {sw: w.scrollWidth, cw: w.clientWidth};
  }
  const labels = [];
  let checked = 0;
  for (const svg of document.querySelectorAll('figure svg')) {
    const box = svg.getBoundingClientRect();
    for (const t of svg.querySelectorAll('text')) {
      const r = t.getBoundingClientRect();
      if (r.width === 0 || !t.textContent.trim()) continue;
      checked += 1;
      if (r.left < box.left - 2 || r.right > box.right + 2 || r.top < box.top - 2 || r.bottom > box.bottom + 2)
        labels.push({fig: svg.closest('figure').id, text: t.textContent.slice(0, 40)});
    }
  }
  return JSON.stringify({
    over, labels, wraps, checked,
    page: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
  });
})()"""


def _run(tmp_path: Path, opts: SyntheticOptions) -> Path:
    run_dir = make_run(tmp_path, opts)
    summary = json.loads((run_dir / "summary.json").read_text())
    for cell in summary["cells"]:
        for step in cell["steps"]:
            if step["harness"]["limited"]:  # the reasons a real run writes are long; they must wrap
                step["harness"]["reasons"] = [
                    "event-loop lag p99 212 ms above 50 ms",
                    "client CPU 97 % of one core (the Locust worker was saturated)",
                    "41 % of chunks coalesced: token timestamps are the client's, not the server's",
                ]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return write_report(run_dir)


@pytest.mark.parametrize(
    "opts",
    [
        SyntheticOptions(failed_cell=True, gpu=True, concurrencies=(1, 2, 4, 8, 16)),
        SyntheticOptions(gpu=True, concurrencies=(16,), requests_per_step=400),
    ],
    ids=["sweep", "single-step"],
)
def test_nothing_overflows_at_1400_px(browser: DevTools, tmp_path: Path, opts: SyntheticOptions) -> None:  # noqa: F811
    report = _run(tmp_path / "runs", opts)
    for domain in ("Page", "Runtime"):
        browser.call(f"{domain}.enable")
    browser.call(
        "Emulation.setDeviceMetricsOverride", width=WIDTH, height=1200, deviceScaleFactor=1, mobile=False
    )
    browser.call("Page.navigate", url=report.as_uri())
    browser.wait_for("Page.loadEventFired")
    found = json.loads(
        browser.call("Runtime.evaluate", expression=PROBE, returnByValue=True)["result"]["value"]
    )

    shot = browser.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": WIDTH, "height": min(found["height"], 16000), "scale": 1},
    )
    (report.parent / "report-1400.png").write_bytes(base64.b64decode(shot["data"]))

    assert found["over"] == [], "table cells whose content overflows their box"
    scrolled = [sel for sel, w in found["wraps"].items() if w["sw"] > w["cw"] + 1]
    assert scrolled == [], "tables that need a sideways scrollbar (content cut off at the right edge)"
    assert found["page"] <= WIDTH, "the page scrolls sideways at 1400 px"
    assert found["checked"] > 100, "the probe measured no SVG labels"
    assert found["labels"] == [], "SVG labels outside their figure (clipped)"
