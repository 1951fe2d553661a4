"""`gpttui serve` (issue 12, item 7): the app in a browser through textual-serve, with real processes.

The websocket tests speak textual-serve's protocol as its front end (static/js/textual.js) does: open
``/ws?width=W&height=H``, send ``["resize", {"width": W, "height": H}]`` and keys as ``["stdin", text]``; the
server sends the app's terminal output as binary frames. The last test drives headless Chromium through
bench/check_serve_browser.py where a Chromium is installed.

Every wait polls a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from gpttui.core import paths
from gpttui.core.runs import run_status, send_command

from test_faults import TINY_FLAGS, corpus  # noqa: F401  (corpus is a fixture)
from test_runs import env, events_of, gpttui_cmd, last_step, pids, wait_for  # noqa: F401  (pids: a fixture)

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 90
WIDTH, HEIGHT = 140, 40  # wide enough that the screens' labels are not wrapped
F3 = "\x1bOR"  # what xterm.js sends for F3
DATASET_TEXT = "Built-in corpus"  # a button only the Dataset screen shows
TRAIN_TEXT = "Start F6"  # a button only the Train screen shows
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]P^_X].*?(?:\x07|\x1b\\)|\x1b[ -/]*[0-~]", re.S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """The live processes under ``pid`` (Linux /proc), children first."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode("utf-8")


class Served:
    """A running `gpttui serve`: its process, its URL, and the app processes it started (killed by the
    ``pids`` fixture if a test leaves them running)."""

    def __init__(self, proc: subprocess.Popen, url: str, pids: list[int]) -> None:
        self.proc, self.url, self.pids = proc, url, pids

    def apps(self) -> list[int]:
        """The server's app processes now (the shell textual-serve starts and the app under it)."""
        found = descendants(self.proc.pid)
        assert found, "no app process under the server"
        self.pids.extend(found)
        return found


@pytest.fixture
def server(pids):
    """`gpttui serve` on a free port, in its own process group (as under a terminal): a :class:`Served`."""
    if not Path("/proc/self/task").exists():
        pytest.skip("needs Linux /proc to find the app processes the server starts")
    port = free_port()
    proc = subprocess.Popen(gpttui_cmd("serve", "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True)
    pids.append(proc.pid)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"gpttui serve exited {proc.returncode}: {proc.stdout.read()}")
        try:
            return get(url + "/")
        except OSError:
            return None

    wait_for(up, "the server to answer", timeout=DEADLINE_S)
    yield Served(proc, url, pids)
    pids.extend(descendants(proc.pid))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=DEADLINE_S)


class Tab:
    """One browser tab's websocket session, spoken as textual-serve's textual.js does."""

    def __init__(self, url: str) -> None:
        self.ws_url = url.replace("http://", "ws://") + f"/ws?width={WIDTH}&height={HEIGHT}"
        self.text = ""  # the terminal output received, escape sequences removed
        self.session = self.ws = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.ws_url)
        await self.ws.send_str(json.dumps(["resize", {"width": WIDTH, "height": HEIGHT}]))

    async def send_keys(self, keys: str) -> None:
        await self.ws.send_str(json.dumps(["stdin", keys]))

    async def read_until(self, marker: str, since: int = 0, timeout: float = DEADLINE_S) -> str:
        """Read output until ``marker`` shows in the text received after offset ``since``."""
        end = time.monotonic() + timeout
        while marker not in self.text[since:]:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} in the app's output within {timeout} s; "
                                     f"got {self.text[since:][-600:]!r}")
            msg = await self.ws.receive(timeout=left)
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.text += ANSI.sub("", msg.data.decode("utf-8", "replace"))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise AssertionError(f"the websocket closed before {marker!r} showed")
        return self.text

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


async def _visit_dataset_then_train(served: Served) -> list[int]:
    """Open a tab, see the Dataset screen, press F3, see the Train screen; return the app's processes."""
    tab = Tab(served.url)
    try:
        await tab.open()
        await tab.read_until(DATASET_TEXT)
        apps = served.apps()
        mark = len(tab.text)
        await tab.send_keys(F3)
        await tab.read_until(TRAIN_TEXT, since=mark)
    finally:
        await tab.close()  # the tab closes
    return apps


def test_serve_shows_the_app_and_closing_the_tab_ends_its_process(server):
    proc, url = server.proc, server.url
    status, page = get(url + "/")
    assert status == 200
    assert "gpttui" in page  # the title on the page's start dialog
    assert f'data-session-websocket-url="ws://127.0.0.1:{url.rsplit(":", 1)[1]}/ws"' in page
    status, script = get(url + "/static/js/textual.js")
    assert status == 200 and '"stdin"' in script and '"resize"' in script  # the protocol spoken here

    apps = asyncio.run(_visit_dataset_then_train(server))
    wait_for(lambda: not any(alive(pid) for pid in apps), "the app process to exit after the tab closed",
             timeout=DEADLINE_S)
    assert proc.poll() is None  # the server keeps serving
    assert get(url + "/")[0] == 200


def test_page_links_follow_the_address_the_browser_used(server):
    url = server.url
    port = url.rsplit(":", 1)[1]
    request = urllib.request.Request(url + "/", headers={"Host": "localhost:9000"})  # an SSH tunnel's port
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode("utf-8")
    assert 'data-session-websocket-url="ws://localhost:9000/ws"' in page
    assert "http://localhost:9000/static/js/textual.js" in page
    assert f":{port}/" not in page


def test_a_port_in_use_is_refused_with_a_clear_message(server):
    port = server.url.rsplit(":", 1)[1]
    second = subprocess.run(gpttui_cmd("serve", "--port", port), capture_output=True, text=True, env=env(),
                            timeout=DEADLINE_S)
    assert second.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in second.stderr and "--port" in second.stderr


async def _stop_server_with_a_tab_open(served: Served, stop) -> tuple[list[int], int]:
    """Open a tab, see the app, call ``stop()``; once the app is gone, return its processes and the server's
    exit status. The tab keeps reading meanwhile, as a browser does (it answers the server's close)."""
    tab = Tab(served.url)
    try:
        await tab.open()
        await tab.read_until(DATASET_TEXT)
        apps = served.apps()
        reading = asyncio.create_task(tab.read_until("never shown", timeout=DEADLINE_S * 2))
        stop()
        await asyncio.to_thread(wait_for, lambda: not any(alive(pid) for pid in apps), "the app to exit",
                                timeout=DEADLINE_S)
        reading.cancel()
        return apps, await asyncio.to_thread(served.proc.wait, DEADLINE_S)
    finally:
        await tab.close()


def test_ctrl_c_stops_the_server_and_the_open_tabs_app(server):
    def ctrl_c():
        os.killpg(server.proc.pid, signal.SIGINT)  # what the terminal sends its foreground process group

    _, returncode = asyncio.run(_stop_server_with_a_tab_open(server, ctrl_c))
    assert returncode == 0
    assert "gpttui serve: stopped." in server.proc.stdout.read()


def test_an_app_whose_server_was_killed_hangs_up_and_exits(server):
    def kill_9():
        server.proc.kill()  # the server only: its apps lose their stdin/stdout pipes and nothing else
        server.proc.wait(timeout=DEADLINE_S)

    asyncio.run(_stop_server_with_a_tab_open(server, kill_9))  # fails unless the apps exit


def test_a_detached_run_outlives_the_tab_and_the_server(server, corpus, pids):
    proc = server.proc
    launched = subprocess.run(gpttui_cmd("train", "--data", str(corpus), *TINY_FLAGS, "--detach", "--json"),
                              capture_output=True, text=True, env=env(), timeout=DEADLINE_S)
    assert launched.returncode == 0, launched.stderr
    run = json.loads(launched.stdout)
    pids.append(run["pid"])
    run_dir = paths.runs_dir() / run["run_id"]
    wait_for(lambda: last_step(run_dir) > 0, "the detached run to train")

    apps = asyncio.run(_visit_dataset_then_train(server))  # the app, in a tab that then closes
    wait_for(lambda: not any(alive(pid) for pid in apps), "the app process to exit", timeout=DEADLINE_S)
    after_tab = last_step(run_dir)
    wait_for(lambda: last_step(run_dir) > after_tab + 5, "steps after the tab closed")

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C in the server's terminal
    assert proc.wait(timeout=DEADLINE_S) == 0
    assert "gpttui serve: stopped." in proc.stdout.read()
    after_server = last_step(run_dir)
    wait_for(lambda: last_step(run_dir) > after_server + 5, "steps after the server stopped")
    assert alive(run["pid"]) and run_status(run_dir).state == "running"

    send_command(run_dir, "stop")
    finished = wait_for(lambda: events_of(run_dir, "finished"), "the finished event")[0]
    assert finished["reason"] == "stopped"


@pytest.mark.skipif(not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")),
                    reason="chromium not installed (no chromium, chromium-browser or google-chrome on PATH)")
def test_a_real_browser_sees_the_app_and_switches_screens(tmp_path):
    shot = tmp_path / "serve.png"
    check = subprocess.run([sys.executable, str(REPO / "bench" / "check_serve_browser.py"), "--screenshot",
                            str(shot)], capture_output=True, text=True, env=env(), timeout=240)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok: the Train screen" in check.stdout
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
