"""`gpttui serve` (issue 12, item 7): the app in a browser through textual-serve, with real processes.

The websocket tests speak textual-serve's protocol as its front end (static/js/textual.js) does: open
``/ws?width=W&height=H``, send ``["resize", {"width": W, "height": H}]`` and keys as ``["stdin", text]``; the
server sends the app's terminal output as binary frames. The last test drives headless Chromium through
bench/check_serve_browser.py where a Chromium is installed.

Every wait polls a condition with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
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
F3, F6, CTRL_B = "\x1bOR", "\x1b[17~", "\x02"  # what xterm.js sends for these keys
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

    async def open_on_the_dataset_screen(self, served: "Served", known: list[int] = ()) -> list[int]:
        """Open the tab and wait for the app's Dataset screen; return the app processes this tab started
        (the server's processes not in ``known``)."""
        await self.open()
        await self.read_until(DATASET_TEXT)
        return [pid for pid in served.apps() if pid not in known]

    async def press(self, keys: str, then_see: str) -> None:
        """Send ``keys`` and wait until ``then_see`` shows in the output that follows."""
        mark = len(self.text)
        await self.send_keys(keys)
        await self.read_until(then_see, since=mark)

    def keep_reading(self) -> asyncio.Task:
        """Read in the background, as a browser does (it answers the server's close), until cancelled."""
        async def drain():
            with contextlib.suppress(AssertionError):
                await self.read_until("never shown", timeout=DEADLINE_S * 3)
        return asyncio.create_task(drain())

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


def gone(pids_: list[int]) -> bool:
    return not any(alive(pid) for pid in pids_)


async def until(condition, what: str) -> None:
    """:func:`wait_for` off the event loop, so that the tabs keep reading meanwhile."""
    await asyncio.to_thread(wait_for, condition, what, DEADLINE_S)


def start_detached_run(corpus, pids: list[int]) -> tuple[dict, Path]:
    """A detached run that trains until it is told to stop (10 epochs of the tiny corpus take ~20 s, less
    than two tabs and a server's shutdown may take on a loaded machine)."""
    launched = subprocess.run(gpttui_cmd("train", "--data", str(corpus), *TINY_FLAGS, "--epochs", "100000", "--detach",
                                         "--json"),
                              capture_output=True, text=True, env=env(), timeout=DEADLINE_S)
    assert launched.returncode == 0, launched.stderr
    run = json.loads(launched.stdout)
    pids.append(run["pid"])
    return run, paths.runs_dir() / run["run_id"]


def test_page_links_follow_the_address_the_browser_used(server):
    port = server.url.rsplit(":", 1)[1]
    status, page = get(server.url + "/")
    assert status == 200 and "gpttui" in page  # the title on the page's start dialog
    assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in page
    request = urllib.request.Request(server.url + "/", headers={"Host": "localhost:9000"})  # an SSH tunnel
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode("utf-8")
    assert 'data-session-websocket-url="ws://localhost:9000/ws"' in page
    assert "http://localhost:9000/static/js/textual.js" in page
    assert f":{port}/" not in page
    status, script = get(server.url + "/static/js/textual.js")
    assert status == 200 and '"stdin"' in script and '"resize"' in script  # the protocol spoken here


def test_a_port_in_use_is_refused_with_a_clear_message(server):
    port = server.url.rsplit(":", 1)[1]
    second = subprocess.run(gpttui_cmd("serve", "--port", port), capture_output=True, text=True, env=env(),
                            timeout=DEADLINE_S)
    assert second.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in second.stderr and "--port" in second.stderr


async def _two_tabs_then_ctrl_c(served: Served, run_dir: Path) -> None:
    """Tab 1: Dataset screen, F3, Train screen, closed: its app ends, the server and tab 2 go on, and so
    does the detached run. Then Ctrl+C with tab 2 open: the server stops, tab 2's app ends."""
    first, second = Tab(served.url), Tab(served.url)
    try:
        first_apps = await first.open_on_the_dataset_screen(served)
        opening = asyncio.create_task(second.open_on_the_dataset_screen(served, known=first_apps))
        await first.press(F3, then_see=TRAIN_TEXT)
        await first.close()  # the tab closes
        second_apps = await opening
        draining = second.keep_reading()
        await until(lambda: gone(first_apps), "the closed tab's app to exit")
        assert served.proc.poll() is None and not gone(second_apps)
        after_tab = last_step(run_dir)
        await until(lambda: last_step(run_dir) > after_tab + 5, "the detached run's steps after the tab closed")

        os.killpg(served.proc.pid, signal.SIGINT)  # Ctrl+C: the terminal signals its foreground group
        await until(lambda: gone(second_apps), "the open tab's app to exit on Ctrl+C")
        assert await asyncio.to_thread(served.proc.wait, DEADLINE_S) == 0
        draining.cancel()
    finally:
        await first.close()
        await second.close()


def test_tabs_get_the_app_and_a_detached_run_outlives_them_and_the_server(server, corpus, pids):
    run, run_dir = start_detached_run(corpus, pids)
    wait_for(lambda: last_step(run_dir) > 0, "the detached run to train")

    asyncio.run(_two_tabs_then_ctrl_c(server, run_dir))
    assert "gpttui serve: stopped." in server.proc.stdout.read()
    after_server = last_step(run_dir)
    wait_for(lambda: last_step(run_dir) > after_server + 5, "the detached run's steps after the server stopped")
    assert alive(run["pid"]) and run_status(run_dir).state == "running"

    send_command(run_dir, "stop")
    finished = wait_for(lambda: events_of(run_dir, "finished"), "the finished event")[0]
    assert finished["reason"] == "stopped"


def _in_app_run_dirs() -> list[Path]:
    return [d for d in paths.runs_dir().glob("*") if last_step(d) > 0] if paths.runs_dir().exists() else []


async def _train_in_a_tab_close_it_then_kill_the_server(served: Served) -> list[int]:
    """Tab 1: built-in corpus (Ctrl+B), Train screen (F3), Start (F6): the app's own trainer thread; after
    its first step the tab closes. Tab 2 stays open while the server is killed (kill -9). Returns tab 1's
    app processes; waits until tab 2's have exited."""
    first, second = Tab(served.url), Tab(served.url)
    try:
        first_apps = await first.open_on_the_dataset_screen(served)
        opening = asyncio.create_task(second.open_on_the_dataset_screen(served, known=first_apps))
        await first.press(CTRL_B, then_see="tok/epoch")  # the corpus' statistics
        await first.press(F3, then_see=TRAIN_TEXT)
        await first.send_keys(F6)
        draining = first.keep_reading()
        await until(_in_app_run_dirs, "the in-app run's first step")
        draining.cancel()
        await first.close()  # the tab closes mid-run

        second_apps = await opening
        served.proc.kill()  # the server only: its apps lose their stdin/stdout pipes and nothing else
        await asyncio.to_thread(served.proc.wait, DEADLINE_S)
        await until(lambda: gone(second_apps), "the app of a killed server to hang up and exit")
        await until(lambda: gone(first_apps), "the closed tab's app to stop its run, save and exit")
    finally:
        await first.close()
        await second.close()
    return first_apps


def test_closing_a_tab_stops_and_saves_its_run_and_apps_outlive_no_server(server, bpe_dir):
    asyncio.run(_train_in_a_tab_close_it_then_kill_the_server(server))
    [run_dir] = _in_app_run_dirs()
    [finished] = events_of(run_dir, "finished")
    assert finished["reason"] == "interrupted" and finished["checkpoint"]
    assert [e["name"] for e in events_of(run_dir, "checkpoint")] == [finished["checkpoint"]]
    assert (paths.checkpoints_dir() / finished["checkpoint"] / "meta.json").exists()
    assert run_status(run_dir).state == "stopped"


@pytest.mark.skipif(not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")),
                    reason="chromium not installed (no chromium, chromium-browser or google-chrome on PATH)")
def test_a_real_browser_sees_the_app_and_switches_screens(tmp_path):
    shot = tmp_path / "serve.png"
    check = subprocess.run([sys.executable, str(REPO / "bench" / "check_serve_browser.py"), "--screenshot",
                            str(shot)], capture_output=True, text=True, env=env(), timeout=240)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok: F3 switched to the Train screen" in check.stdout and "FAIL" not in check.stdout
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
