"""A real headless Chromium (Debian's `chromium` package) driven over the Chrome DevTools
Protocol: load a page, type into it, click, read what it rendered, take a screenshot."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

BINARY = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    BINARY is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)
# headless, and nothing that reaches the internet or depends on a desktop
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1200,900",
]


class Browser:
    def __init__(self, profile: Path) -> None:
        """Start Chromium with a fresh profile in `profile` and attach to its one tab."""
        import websocket

        self._log = (profile.parent / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BINARY), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        port = self._devtools_port(profile / "DevToolsActivePort")
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        tab = next(t for t in targets if t["type"] == "page")
        # no Origin header: Chromium refuses DevTools connections from an origin it was not told to allow
        self.ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._id = 0

    def _devtools_port(self, path: Path, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"chromium did not start:\n{(path.parent.parent / 'chromium.log').read_text()[-3000:]}")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; the events that arrive meanwhile are not needed here."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def open(self, url: str) -> None:
        """Load `url` and wait until its script says the page is ready (data-ready on the body)."""
        self.send("Page.navigate", url=url)
        ready = f"location.href === {json.dumps(url)} && document.body !== null && document.body.dataset.ready"
        assert self.wait_for(ready), f"{url} did not get ready: {self.evaluate('document.body.innerText')}"

    def type_into(self, selector: str, text: str) -> None:
        """Replace the text of an input as a person does: focus, select all, type."""
        self.evaluate(f"(e => {{ e.focus(); e.select(); }})(document.querySelector({json.dumps(selector)}))")
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A mouse click in the middle of the element."""
        box = self.evaluate(
            f"(r => [r.x + r.width / 2, r.y + r.height / 2])"
            f"(document.querySelector({json.dumps(selector)}).getBoundingClientRect())"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page, however long."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        png = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        path.write_bytes(base64.b64decode(png))
        return path

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
