"""`gpttui serve` in a real browser: headless Chromium loads the served page, sees the app's Dataset screen,
presses F3, sees the Train screen, saves a screenshot, closes the tab and sees the app process end.

It speaks the Chrome DevTools Protocol over a websocket (aiohttp, which textual-serve brings): no playwright or
selenium. The terminal's text is read from xterm.js's own screen buffer (textual-serve's front end draws on a
canvas, so the DOM holds no text): a script added before the page loads keeps a reference to each xterm
Terminal as it is built. The key goes in through ``Input.dispatchKeyEvent``, as a keyboard's would.

    python bench/check_serve_browser.py [--screenshot serve.png] [--chromium PATH] [--timeout 90]

Prints one ``ok:`` or ``FAIL:`` line per check; exits 0 when all pass, 1 when one fails, 2 when it cannot run
(no Chromium: it says so). The app runs with a temporary GPTTUI_HOME unless ``--home`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DATASET_TEXT = "Built-in corpus"  # a button only the Dataset screen shows
TRAIN_TEXT = "Start F6"  # a button only the Train screen shows
F3_KEY = {"key": "F3", "code": "F3", "windowsVirtualKeyCode": 114, "nativeVirtualKeyCode": 114}

# Added before the page's own scripts: xterm's Terminal sets `this._core` in its constructor; a setter on
# Object.prototype catches that first assignment and keeps the Terminal (then steps aside for that object).
CATCH_TERMINALS = """
(() => {
  const found = [];
  window.__gpttuiTerminals = found;
  Object.defineProperty(Object.prototype, "_core", {
    configurable: true,
    set(value) {
      Object.defineProperty(this, "_core", {value, writable: true, configurable: true, enumerable: true});
      if (typeof this.write === "function" && "buffer" in this && "rows" in this) found.push(this);
    },
  });
})();
"""

# The terminal's visible rows, as text ('' while no terminal exists yet).
SCREEN_TEXT = """
(() => {
  const term = (window.__gpttuiTerminals || [])[0];
  if (!term) return "";
  const buffer = term.buffer.active, rows = [];
  for (let i = 0; i < term.rows; i++) {
    const line = buffer.getLine(buffer.viewportY + i);
    rows.push(line ? line.translateToString(true) : "");
  }
  return rows.join("\\n");
})()
"""


class Checks:
    """One line per check; remembers whether any failed."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, passed: bool, what: str, detail: str = "") -> bool:
        print(f"{'ok' if passed else 'FAIL'}: {what}" + (f" ({detail})" if detail else ""), flush=True)
        self.failed |= not passed
        return passed


class CDP:
    """A minimal Chrome DevTools Protocol client on one target's websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params):
        call_id = next(self.ids)
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events arriving meanwhile are not needed here
            reply = json.loads((await self.ws.receive(timeout=60)).data)
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")


def find_browser(given: str | None) -> str | None:
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, step: float = 0.1):
    """Poll ``condition`` until it returns something truthy (returned), or None after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return None


async def wait_until_async(condition, timeout: float, step: float = 0.2):
    """The async form of :func:`wait_until`: ``condition`` is a coroutine function."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(step)
    return None


def descendants(pid: int) -> list[int]:
    """The live processes under ``pid`` (Linux /proc)."""
    found, frontier = [], [pid]
    while frontier:
        for task in Path(f"/proc/{frontier.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            frontier += children
    return found


REPO = Path(__file__).resolve().parent.parent


def start_server(port: int, home: str) -> subprocess.Popen:
    """`gpttui serve` from this checkout, in its own process group (as under a terminal)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, GPTTUI_HOME=home, OMP_NUM_THREADS="1", PYTHONPATH=path)
    return subprocess.Popen([sys.executable, "-m", "gpttui", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def start_browser(binary: str, profile: str) -> subprocess.Popen:
    args = [binary, "--headless=new", "--disable-gpu", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "--window-size=1400,900", "--no-first-run", "--no-default-browser-check",
            # the page links Google's fonts; offline, fail at once rather than wait on DNS
            "--host-resolver-rules=MAP fonts.googleapis.com ~NOTFOUND, MAP fonts.gstatic.com ~NOTFOUND"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.Popen([*args, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def devtools_port(profile: str, browser: subprocess.Popen, timeout: float) -> int | None:
    """The port Chromium chose, from the DevToolsActivePort file it writes in its profile."""
    active = Path(profile) / "DevToolsActivePort"

    def ready():
        if browser.poll() is not None:
            raise RuntimeError(f"chromium exited with status {browser.returncode}")
        lines = active.read_text().split() if active.exists() else []
        return int(lines[0]) if lines else None

    return wait_until(ready, timeout)


def page_target(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
        targets = json.load(response)
    return next(t for t in targets if t.get("type") == "page")


def show_lines(screen: str, words: tuple[str, ...]) -> None:
    """Print the screen's rows that hold any of ``words`` (what the check saw)."""
    for line in screen.splitlines():
        if any(word in line for word in words):
            print("  | " + line.strip(), flush=True)


async def drive(args, check: Checks, server: subprocess.Popen, url: str, debug_port: int) -> None:
    """Load the page, see the Dataset screen, press F3, see the Train screen, screenshot, close the tab."""
    import aiohttp

    target = page_target(debug_port)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = CDP(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=CATCH_TERMINALS)
            nav = await cdp.call("Page.navigate", url=url)
            if not check(not nav.get("errorText"), f"Chromium loaded {url}", nav.get("errorText", "")):
                return

            async def screen_has(text):
                screen = await cdp.evaluate(SCREEN_TEXT) or ""
                return text in screen and screen

            connected = await wait_until_async(
                lambda: cdp.evaluate("document.body.classList.contains('-first-byte')"), args.timeout)
            check(bool(connected), "the page's terminal received the app's output (body.-first-byte)")
            caught = await cdp.evaluate("(window.__gpttuiTerminals || []).length")
            if not check(bool(caught), "found xterm's Terminal in the page, to read its screen"):
                return
            dataset = await wait_until_async(lambda: screen_has(DATASET_TEXT), args.timeout)
            if not check(bool(dataset), f"the Dataset screen shows ({DATASET_TEXT!r} on screen)",
                         "" if dataset else repr((await cdp.evaluate(SCREEN_TEXT) or "")[-400:])):
                return
            show_lines(dataset, ("gpttui", DATASET_TEXT))

            await cdp.evaluate("document.querySelector('.xterm-helper-textarea').focus()")
            for kind in ("keyDown", "keyUp"):
                await cdp.call("Input.dispatchKeyEvent", type=kind, **F3_KEY)
            train = await wait_until_async(lambda: screen_has(TRAIN_TEXT), args.timeout)
            if check(bool(train), f"F3 switched to the Train screen ({TRAIN_TEXT!r} on screen)",
                     "" if train else repr((await cdp.evaluate(SCREEN_TEXT) or "")[-400:])):
                show_lines(train, ("gpttui", TRAIN_TEXT))

            shot = await cdp.call("Page.captureScreenshot", format="png")
            data = base64.b64decode(shot["data"])
            Path(args.screenshot).write_bytes(data)
            check(data[:8] == b"\x89PNG\r\n\x1a\n", f"screenshot saved to {args.screenshot}", f"{len(data):,} bytes")

    apps = descendants(server.pid)
    with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/close/{target['id']}", timeout=10):
        pass  # the tab closes: its websocket to gpttui serve goes with it
    gone = wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in apps), args.timeout)
    check(bool(apps) and bool(gone), "closing the tab ended the app's process",
          f"pids {apps}" if apps else "no app process found")


def run(args) -> int:
    binary = find_browser(args.chromium)
    if binary is None:
        where = f"no browser at {args.chromium!r}" if args.chromium else f"none of {', '.join(BROWSERS)} on PATH"
        print(f"cannot check: chromium not installed ({where}); on Debian/Ubuntu: apt-get install -y chromium",
              flush=True)
        return 2
    check = Checks()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="gpttui-serve-check-") as tmp:
        server = start_server(port, args.home or str(Path(tmp) / "home"))
        browser = None
        try:
            up = wait_until(lambda: server.poll() is None and _answers(url), args.timeout)
            if not check(bool(up), f"gpttui serve answers on {url}"):
                return 1
            print(f"  browser: {binary} ({_version(binary)})", flush=True)
            browser = start_browser(binary, str(Path(tmp) / "profile"))
            debug_port = devtools_port(str(Path(tmp) / "profile"), browser, args.timeout)
            if not check(bool(debug_port), "Chromium started with its DevTools port"):
                return 1
            asyncio.run(drive(args, check, server, url, debug_port))
        finally:
            if browser is not None:
                _stop(browser, signal.SIGTERM)
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGINT)  # Ctrl+C
                check(_wait(server, args.timeout) == 0, "gpttui serve stopped cleanly on Ctrl+C")
    return 1 if check.failed else 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "version unknown"


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _stop(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    if _wait(proc, 30) is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", default="serve.png", help="where to save the PNG (default serve.png)")
    parser.add_argument("--chromium", help="the browser binary (default: chromium, chromium-browser or "
                                           "google-chrome on PATH)")
    parser.add_argument("--home", help="GPTTUI_HOME for the app (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for each step (default 90)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
