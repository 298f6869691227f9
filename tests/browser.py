"""A real headless Chromium for tests, driven over the DevTools protocol with nothing but the standard library.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from its file descriptor 3 and
writes replies and events to descriptor 4, each message JSON ended by a NUL byte (no port, no websocket client).
A :class:`Page` records what a person would see go wrong: console errors, uncaught exceptions, log entries of
level error (a resource that failed to load) and failed requests, and every URL the page asked for.

``require_chromium()`` finds the browser; without one a test skips with how to install it, and fails under
``CI=true`` (CI must run these tests, not skip them).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
INSTALL = ("install Chromium: `sudo apt-get install chromium` (Debian/Ubuntu; it installs /usr/bin/chromium), "
           "or point CHROMIUM=/path/to/chrome at one")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"      # screenshots kept for a person (and CI) to look at


def find_chromium() -> Optional[str]:
    """``$CHROMIUM`` (or ``$CHROME_BIN``) when set, else the first Chromium or Chrome on PATH."""
    for var in ("CHROMIUM", "CHROME_BIN"):
        if os.environ.get(var):
            return shutil.which(os.environ[var]) or (os.environ[var] if os.access(os.environ[var], os.X_OK) else None)
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def require_chromium() -> str:
    """The browser's path; no browser skips the test, or fails it under CI=true."""
    path = find_chromium()
    if path is None:
        message = f"no headless browser (none of {', '.join(CANDIDATES)} on PATH): {INSTALL}"
        if on_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return path


# Puts the two pipe ends it is given on descriptors 3 (commands in) and 4 (replies out), where
# --remote-debugging-pipe wants them, then becomes the browser (moved above 10 first: either end may be 3 or 4).
_ON_FDS_3_AND_4 = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
for new, end in zip((3, 4), ends):
    os.dup2(end, new)
    os.close(end)
os.execv(sys.argv[3], sys.argv[3:])
"""


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process with a private profile; use as a context manager."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900):
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
                 "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                 "about:blank"]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", _ON_FDS_3_AND_4, str(to_chrome_r), str(from_chrome_w),
                                      executable, *flags], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict = {}
        self.events: list = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion", timeout=60)["product"]

    # ------------------------------------------------------------------------------------------ protocol
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self._cond.notify_all()

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: float = 30) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: dict = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(f"{method}: no reply ({'browser exited' if self._closed else 'timeout'}); "
                                       f"stderr: {self.stderr_text()[-2000:]}")
                self._cond.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: Optional[str], after: int, timeout: float) -> dict:
        """The first event ``method`` of ``session`` at index ``after`` or later of :attr:`events`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[after:]:
                    if event.get("method") == method and event.get("sessionId") == session:
                        return event
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(f"no {method} within {timeout:.0f} s")
                self._cond.wait(left)

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    # -------------------------------------------------------------------------------------------- pages
    def new_page(self) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate, wait for a condition, screenshot, and what went wrong on it."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session
        self._start = len(browser.events)

    def send(self, method: str, params: Optional[dict] = None, timeout: float = 30) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def goto(self, url: str, timeout: float = 60) -> None:
        """Navigate and wait for the load event (every image of a static page has loaded or failed by then);
        a change of the ``#fragment`` only (a single-page app's route) has none to wait for."""
        with self.browser._cond:
            self._start = len(self.browser.events)
        result = self.send("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        if result.get("loaderId"):        # omitted for a same-document navigation
            self.browser.wait_event("Page.loadEventFired", self.session, self._start, timeout)

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, every: float = 0.25) -> Any:
        """Poll ``expression`` until it is truthy (a single-page app renders after load); its last value. It
        must return a JSON value (``!!el``, not a DOM node)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(every)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''")

    def images(self) -> list:
        """Every ``<img>``: src (cut), complete, natural size, and whether it is broken."""
        return self.evaluate("Array.from(document.images).map(i => ({src: i.currentSrc.slice(0, 120), "
                             "alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight, "
                             "broken: !i.complete || i.naturalWidth === 0}))")

    def _events(self) -> list:
        with self.browser._cond:
            return [e for e in self.browser.events[self._start:] if e.get("sessionId") == self.session]

    def errors(self) -> list:
        """Console errors and assertions, uncaught exceptions, error log entries (e.g. failed resource loads) and
        failed requests since the last navigation, as readable lines."""
        out = []
        for event in self._events():
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console." + params["type"] + ": " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                out.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".rstrip())
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                out.append(f"request failed: {params.get('errorText')} ({params.get('type')})")
        return out

    def requests(self) -> list:
        """Every URL the page requested since the last navigation (``data:`` URIs cut short)."""
        urls = [e["params"]["request"]["url"] for e in self._events() if e["method"] == "Network.requestWillBeSent"]
        return [u[:60] if u.startswith("data:") else u for u in urls]

    def screenshot(self, *paths: Path, full_page: bool = True, max_height: int = 16000) -> bytes:
        """A PNG of the page (the whole page, up to ``max_height`` pixels), written to each of ``paths``."""
        params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                            "height": min(size["height"], max_height), "scale": 1})
        png = base64.b64decode(self.send("Page.captureScreenshot", params, timeout=120)["data"])
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(png)
        return png

