"""``gpttui serve``: the app in a web browser, through textual-serve.

Every browser tab that opens the page gets its own app process (``python -m gpttui.cli_serve``: gpttui's app,
with this interpreter and environment, so the same GPTTUI_HOME), driven over a websocket by textual-serve.

What textual-serve (1.1.x) does when a tab closes: it sends no signal. It writes a "quit" packet on the app's
stdin, which textual's WebDriver turns into ExitApp, and then waits for the app's stdout to close, with no
timeout and no kill. ExitApp alone would skip the app's stop-and-save while an in-app run trains (the process
would go on until the whole run ends), so the app runs on :func:`_served_web_driver`'s driver, which takes
"quit" (and a Ctrl+C reaching the app) as a hang-up, SIGHUP: the run stops after its step and saves, the app
exits. If the server dies without a word (kill -9), textual's WebDriver ignores the end of its stdin;
:func:`watch_server` hangs the app up then. A run started with ``gpttui train --detach`` lives in its own
session and is no child of the app, so it keeps training through all of this. tests/test_serve.py checks each
case with real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import os
import shlex
import signal
import socket
import sys
import threading
import time

from gpttui.cli_output import EXIT_ERROR, Out

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
SERVER_PID_ENV = "GPTTUI_SERVE_PID"
SERVER_POLL_S = 1.0

SERVE_HELP = """\
Serve the app to a web browser (textual-serve): each tab that opens the page gets its own gpttui app.

Anyone who can reach the port gets the app, with your files and your permissions: there is no password.
The default binds to this machine only (127.0.0.1). To use it on a remote box, keep that default and tunnel:
    ssh -L 8000:localhost:8000 box      # then, on the box: gpttui serve
and open http://localhost:8000 on your laptop. Closing the tab ends that app (an in-app run stops after
its step and saves); a run started with `gpttui train --detach` keeps training. Ctrl+C stops the server."""


def textual_serve_server():
    """textual-serve's Server class, or None when textual-serve is not installed."""
    try:
        from textual_serve.server import Server
    except ImportError:
        return None
    return Server


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``localhost``, 127.x, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port`` (in use, no such address, not allowed), or None.

    Binds the way aiohttp does (SO_REUSEADDR, so a port in TIME_WAIT is fine) and lets go at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host!r}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return bind_error_message(host, port, exc)
    return None


def bind_error_message(host: str, port: int, exc: OSError) -> str:
    """A message for a failed bind that says what to change."""
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another `gpttui serve`?): "
                f"pick another with --port, e.g. --port {port + 1}")
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port}: ports below 1024 need root; use --port 8000"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def app_command() -> str:
    """The shell command each tab runs: gpttui's app (run_served_app), with this server's interpreter."""
    return shlex.join([sys.executable, "-m", "gpttui.cli_serve"])


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie, not yet reaped by its parent, counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def watch_server(server_pid: int, poll_s: float = SERVER_POLL_S) -> None:
    """Hang the app up once the server is gone (killed, crashed): textual's WebDriver ignores the end of its
    stdin, so without this an app whose server died would idle on forever, holding its run and memory.

    Its output goes to /dev/null from then on (nobody reads the pipe), and SIGHUP takes the app's own way
    out for a closed terminal: an in-app run stops after its step and saves."""
    while not process_gone(server_pid):
        time.sleep(poll_s)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno())
    os.dup2(devnull, sys.__stderr__.fileno())
    os.kill(os.getpid(), signal.SIGHUP)


def hang_up() -> None:
    """Send this process SIGHUP: the app's way out for a closed terminal (an in-app run stops after its
    step and saves, then the app exits)."""
    os.kill(os.getpid(), signal.SIGHUP)


def _served_web_driver():
    """textual's WebDriver, with the end of a tab taken as a hang-up (SIGHUP) instead of ExitApp.

    textual-serve ends a tab's app with a "quit" packet, which the WebDriver turns into ExitApp, and the
    WebDriver answers SIGINT (Ctrl+C in the server's terminal reaches its apps too) the same way. ExitApp
    skips the app's stop-and-save: Textual cancels the training worker as it shuts down, the session then
    no longer counts as running, nothing asks the trainer thread to stop, and the process waits for the
    whole run to end. SIGHUP is the app's tested path; until the app installs its handler (on mount) a
    provisional one here exits as the WebDriver would."""
    from textual import messages
    from textual.drivers.web_driver import WebDriver

    class ServedWebDriver(WebDriver):
        def start_application_mode(self) -> None:
            super().start_application_mode()
            loop = asyncio.get_running_loop()
            app = self._app

            def exit_app() -> None:  # before the app's own SIGHUP handler exists: nothing to save yet
                asyncio.run_coroutine_threadsafe(app._post_message(messages.ExitApp()), loop=loop)

            loop.add_signal_handler(signal.SIGHUP, exit_app)
            loop.add_signal_handler(signal.SIGINT, hang_up)

        def on_meta(self, packet_type: str, payload: dict) -> None:
            if packet_type == "quit":
                hang_up()
            else:
                super().on_meta(packet_type, payload)

    return ServedWebDriver


def __getattr__(name: str):
    """``ServedWebDriver`` is built on first use, so that ``gpttui --help`` does not import Textual."""
    if name == "ServedWebDriver":
        return _served_web_driver()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_served_app() -> int:
    """One tab's app: gpttui's app, as ``python -m gpttui`` runs it, on :func:`_served_web_driver`'s driver
    and watched by :func:`watch_server`."""
    served = os.environ.get("TEXTUAL_DRIVER", "").endswith(":WebDriver")  # set by textual-serve
    if served and hasattr(signal, "SIGHUP"):  # not on Windows: there the WebDriver's own ExitApp stays
        os.environ["TEXTUAL_DRIVER"] = "gpttui.cli_serve:ServedWebDriver"
    server_pid = os.environ.get(SERVER_PID_ENV, "")
    if server_pid.isdigit():
        threading.Thread(target=watch_server, args=(int(server_pid),), name="gpttui-serve-watch",
                         daemon=True).start()
    from gpttui.cli import main

    return main([])


def make_server(server_class, host: str, port: int, public_url: str | None):
    """A textual-serve Server for gpttui. Without ``public_url`` the page's links follow the address the
    browser used (its Host header), so an SSH tunnel on any local port, or a box reached by name, works."""

    class GpttuiServer(server_class):
        async def on_startup(self, app) -> None:  # our own lines instead of textual-serve's logo
            out = Out()
            out(f"gpttui serve: open {self.shown_url} in a browser (Ctrl+C stops the server).")
            if not is_loopback(self.host):
                out(f"warning: listening on {self.host}: anyone who can reach port {self.port} gets the app, "
                    "with your files. The safer way: the default host and `ssh -L "
                    f"{self.port}:localhost:{self.port} box`.", err=True)

        async def on_shutdown(self, app) -> None:
            """Ctrl+C / SIGTERM: close every tab's websocket now, so each app gets its "quit" at once
            (aiohttp would otherwise wait up to 60 s for the open websockets before cancelling them)."""
            from aiohttp import WSCloseCode

            for websocket in list(self.open_sockets):
                await websocket.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")

        async def _process_messages(self, websocket, app_service) -> None:
            self.open_sockets.add(websocket)
            try:
                await super()._process_messages(websocket, app_service)
            finally:
                self.open_sockets.discard(websocket)

        async def handle_index(self, request):
            if not self.fixed_public_url:
                self.public_url = f"{request.scheme}://{request.host}"  # read before the next await
            return await super().handle_index(request)

    server = GpttuiServer(app_command(), host=host, port=port, title="gpttui", public_url=public_url)
    server.fixed_public_url = public_url is not None
    server.open_sockets = set()
    shown_host = socket.gethostname() if host in ("0.0.0.0", "::", "") else host  # every address: its name
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
    server.shown_url = public_url or f"http://{shown_host}:{port}"
    return server


def cmd_serve(args: argparse.Namespace) -> int:
    out = Out()
    server_class = textual_serve_server()
    if server_class is None:
        out("error: `gpttui serve` needs textual-serve, which is not installed here: "
            "pip install textual-serve (or reinstall gpttui: pip install -e .)", err=True)
        return EXIT_ERROR
    if not 0 < args.port < 65536:
        out(f"error: --port {args.port} is not a port number (1-65535)", err=True)
        return EXIT_ERROR
    problem = port_problem(args.host, args.port)
    if problem:
        out(f"error: {problem}", err=True)
        return EXIT_ERROR
    server = make_server(server_class, args.host, args.port, args.public_url)
    os.environ[SERVER_PID_ENV] = str(os.getpid())  # each tab's app watches this server (watch_server)
    try:
        server.serve()
    except OSError as exc:  # the port was taken between the check and the bind
        out(f"error: {bind_error_message(args.host, args.port, exc)}", err=True)
        return EXIT_ERROR
    out("gpttui serve: stopped.")
    return 0


def add_serve_parser(sub) -> None:
    """`gpttui serve`."""
    p = sub.add_parser("serve", help="the app in a web browser (textual-serve); see `gpttui serve -h`",
                       description=SERVE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 opens it "
                        "to every network the machine is on)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--public-url", metavar="URL",
                   help="the address browsers use, e.g. behind a reverse proxy (https://… gives wss://); "
                        "default: the address in the browser's request")
    p.set_defaults(func=cmd_serve)


if __name__ == "__main__":
    raise SystemExit(run_served_app())
