"""Headless Chromium driven over the DevTools protocol (CDP), for the real-browser tests of the
MLflow UI: Debian's ``chromium`` (``make browser``) and the ``websockets`` package, nothing that
downloads a browser or a driver.

``with headless_chromium(profile) as page:`` starts Chromium with a fresh profile and yields a
:class:`Page`: ``goto`` a URL, ``wait_for`` a JavaScript condition (the UI is a React app that
fetches its data after load), read the ``text`` or the runs table's cells, take a ``screenshot``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Headless flags for a machine without a display, a session bus or outside network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class PageError(AssertionError):
    """What the page did not show in time (with its visible text, to see why)."""


class Page:
    """One browser tab, spoken to over its DevTools websocket."""

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; its result (events that arrive meanwhile are dropped)."""
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=120))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"].get("text", "script error"))
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        """Load ``url`` afresh (through ``about:blank``: a link that only changes the ``#`` part
        of the address would otherwise not reload the app)."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)

    def wait_for(self, condition: str, what: str, timeout: float = 90.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value, else :class:`PageError`."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # the page is still loading: no context yet
                value = self.evaluate(condition)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise PageError(
                    f"{what}: not shown within {timeout:g} s at {self.url()}; the page shows:\n{self.text()}"
                )
            time.sleep(0.5)

    def wait_for_text(self, *needles: str, timeout: float = 90.0) -> str:
        """The page's visible text once it contains every needle."""
        condition = " && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in needles)
        self.wait_for(f"document.body && ({condition})", f"text {needles}", timeout)
        return self.text()

    def text(self) -> str:
        with contextlib.suppress(RuntimeError):
            return self.evaluate("document.body ? document.body.innerText : ''") or ""
        return ""

    def url(self) -> str:
        with contextlib.suppress(RuntimeError):
            return self.evaluate("location.href") or ""
        return ""

    def table_rows(self) -> list[dict[str, str]]:
        """The rendered rows of the page's ag-grid table (MLflow's runs table), top to bottom:
        ``{column id: cell text}`` (``attributes.`Run Name```, ``metrics.`loss/total```...)."""
        script = """(() => {
          const rows = {};
          for (const row of document.querySelectorAll('.ag-row[row-index]')) {
            const i = Number(row.getAttribute('row-index'));
            rows[i] = rows[i] || {};
            for (const cell of row.querySelectorAll('[col-id]')) rows[i][cell.getAttribute('col-id')] = cell.innerText;
          }
          return JSON.stringify(Object.keys(rows).map(Number).sort((a, b) => a - b).map(i => rows[i]));
        })()"""
        return json.loads(self.evaluate(script))

    def type_into(self, selector: str, text: str) -> None:
        """Focus the first element matching a CSS ``selector`` and type ``text`` into it."""
        if not self.evaluate(f"(e => e ? (e.focus(), true) : false)(document.querySelector({json.dumps(selector)}))"):
            raise PageError(f"no {selector} at {self.url()}")
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport, in 256 colours (a UI needs no more; the file is a third)."""
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB").quantize(colors=256).save(path, optimize=True)
        return path


def _devtools_port(profile: Path, browser: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """The port Chromium chose (``--remote-debugging-port=0`` writes it to the profile)."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(port_file.read_text().split()[0])
        if browser.poll() is not None:
            raise RuntimeError(f"chromium exited with status {browser.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"chromium did not listen within {timeout:g} s")
        time.sleep(0.1)


@contextlib.contextmanager
def headless_chromium(profile: Path, width: int = 1600, height: int = 900) -> Iterator[Page]:
    """Headless Chromium with a fresh profile in ``profile``: its first tab as a :class:`Page`
    of ``width`` x ``height`` CSS pixels; the browser is stopped afterwards."""
    from websockets.sync.client import connect

    if CHROMIUM is None:
        raise RuntimeError("no chromium on PATH (make browser)")
    profile.mkdir(parents=True, exist_ok=True)
    browser = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port = _devtools_port(profile, browser)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.loads(response.read())
        tab = next(t for t in targets if t["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as socket:
            page = Page(socket)
            page.call(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
            yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
