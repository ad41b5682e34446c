"""The report in a real browser: every figure renders, no console errors, no network.

Drives headless Chromium over the DevTools protocol (websocket-client), so the
test sees exactly what a reader's browser does: console messages, uncaught
exceptions, every network request, and each SVG's laid-out size.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.report import FIGURE_IDS, write_report
from synthetic_run import SyntheticOptions, make_run

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install -y chromium)"),
]

PROBE = """JSON.stringify(Array.from(document.querySelectorAll('figure[data-figure]')).map(f => {
  const svg = f.querySelector('svg'); const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: f.dataset.figure, w: r.width, h: r.height, texts: svg ? svg.querySelectorAll('text').length : 0};
}))"""


class DevTools:
    """A minimal CDP client: send commands, collect every event."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._next = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._next:
                assert "error" not in msg, msg
                return dict(msg.get("result", {}))
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout}s"
            self.events.append(json.loads(self.ws.recv()))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    profile = tmp_path / "profile"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "--window-size=1400,5000",
        "about:blank",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client: DevTools | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [
            t for t in httpx.get(f"http://127.0.0.1:{port}/json", timeout=10).json() if t["type"] == "page"
        ]
        client = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield client
    finally:
        if client is not None:
            client.ws.close()
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue


def test_report_renders_in_chromium(browser: DevTools, tmp_path: Path) -> None:
    from PIL import Image

    run_dir = make_run(tmp_path / "runs", SyntheticOptions(failed_cell=True, gpu=True))
    report = write_report(run_dir)
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable")
    browser.call(
        "Emulation.setDeviceMetricsOverride", width=1400, height=5000, deviceScaleFactor=1, mobile=False
    )
    browser.call("Page.navigate", url=report.as_uri())
    browser.wait_for("Page.loadEventFired")

    sizes = json.loads(
        browser.call("Runtime.evaluate", expression=PROBE, returnByValue=True)["result"]["value"]
    )
    assert [s["id"] for s in sizes] == list(FIGURE_IDS)
    for s in sizes:
        assert s["w"] > 300 and s["h"] > 80 and s["texts"] > 0, s

    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "report.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.size == (1400, 5000)
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50, "screenshot looks blank"
    assert max(n for n, _ in colors) < 0.95 * image.size[0] * image.size[1]

    methods = [e.get("method") for e in browser.events]
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [
        e
        for e in browser.events
        if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"
    ]
    errors += [
        e
        for e in browser.events
        if e.get("method") == "Runtime.consoleAPICalled"
        and e["params"]["type"] in ("error", "warning", "assert")
    ]
    assert errors == []
    urls = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
    assert "Network.loadingFailed" not in methods
