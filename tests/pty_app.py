"""The real app on a real terminal, with an in-app training run started once it is up: the driver of
tests/test_tui_exit.py, which runs it on a pty and then closes the terminal or sends it signals.

    python tests/pty_app.py CORPUS SAVE_NAME [MAX_STEPS] [TRACE_FILE]
    python tests/pty_app.py --zygote SOCKET_FD
    python tests/pty_app.py --stuck CORPUS SAVE_NAME GRACE_S

Everything the app does is the app's own: :func:`gpttui.tui.app.create_app`, the in-app run through
``state.session.start`` (what the Train screen's Start does), the Train screen's monitor on view,
and the exit path of :func:`gpttui.tui.app.run_app`. The driver only builds a tiny model on the
bytes tokenizer (the cheap part of a Start) and hands it to the session from a helper thread once
the app's screen is mounted. Its exit status is run_app's. With TRACE_FILE, SIGUSR1 dumps every
thread's stack there (how a test shows where a process that did not leave is stuck).

Most of a start is importing torch and Textual and torch's first AdamW (seconds of CPU). For a test
that needs ten apps, ``--zygote`` pays that once: it imports and warms up, single-threaded, then for
each request on its socket (an env, the argv above, and a pty's slave fd) forks a child that makes
itself a session leader with that pty as controlling terminal, as login shells do, and runs
:func:`main`; it reports each child's pid and, when reaped, its exit status. A child ends as any
``python tests/pty_app.py`` process ends (SystemExit through the interpreter's normal shutdown,
non-daemon threads joined).
"""

from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import socket
import sys
import threading

MOUNT_DEADLINE_S = 120


def build_trainer(corpus: str, save_name: str, max_steps: int):
    """A tiny model on CORPUS, as `gpttui train --data CORPUS <tests' TINY_FLAGS>` would build it."""
    from gpttui.core.data import DataSettings, prepare_data
    from gpttui.core.runplan import plan_model
    from gpttui.core.tokenizer import ByteTokenizer
    from gpttui.core.train import TrainConfig, Trainer

    data = prepare_data(DataSettings(source=corpus, tokenizer="bytes", context_length=32, batch_size=4),
                        ByteTokenizer())
    shape = plan_model("tiny", vocab_size=257, context_length=32, emb_dim=32, n_heads=4)
    config = TrainConfig(epochs=10_000, max_steps=max_steps, eval_freq=5, eval_iter=1, sample_tokens=4, device="cpu",
                         save_name=save_name)
    return data, Trainer(data, ByteTokenizer(), config, shape.model_config)


def start_when_mounted(app, trainer, data, done: threading.Event) -> None:
    """From a helper thread: once the app is up, show the Train screen and, once every widget of
    it is mounted (the monitor a user watches), start the run on the app's thread."""
    def all_mounted(mode: str | None) -> bool:
        try:
            screen = app.screen
        except Exception:  # noqa: BLE001 - no screen yet
            return False
        if mode is not None and app.current_mode != mode:
            return False
        return screen.is_mounted and all(w.is_mounted for w in screen.query("*"))

    def start() -> None:
        app.state.prepared = data
        app.state.session.start(app, trainer, "pty")

    for step, mode in ((lambda: app.switch_mode("train"), None), (start, "train")):
        if not _poll(lambda: app.call_from_thread(all_mounted, mode), done):
            print("pty_app: the app never mounted", file=sys.stderr, flush=True)
            return
        app.call_from_thread(step)


def _poll(condition, done: threading.Event) -> bool:
    """Whether ``condition`` came true within MOUNT_DEADLINE_S (and the app was still there)."""
    for _ in range(MOUNT_DEADLINE_S * 20):
        try:
            if condition():
                return True
        except RuntimeError:  # the app's loop is not up yet (or already gone)
            pass
        if done.wait(0.05):
            return False
    return False


def main(argv: list[str]) -> int:
    corpus, save_name = argv[0], argv[1]
    max_steps = int(argv[2]) if len(argv) > 2 else 1_000_000
    if len(argv) > 3:
        faulthandler.register(signal.SIGUSR1, file=open(argv[3], "w"), all_threads=True)
    from gpttui.tui.app import create_app, run_app

    data, trainer = build_trainer(corpus, save_name, max_steps)
    app = create_app(settings=data.settings)
    done = threading.Event()
    threading.Thread(target=start_when_mounted, args=(app, trainer, data, done), daemon=True,
                     name="pty-app-start").start()
    try:
        status = run_app(app)
        if len(argv) > 3:  # the test tells the app's own way out from the watchdog's (os._exit)
            with open(argv[3] + ".returned", "w") as f:
                f.write(str(status))
        return status
    finally:
        done.set()


def stuck(corpus: str, save_name: str, grace_s: float) -> int:
    """The watchdog's own case, with no app: a run training in a (non-daemon) thread as the app's
    session runs it, an :class:`ExitGuard` installed as run_app installs it, and the main thread
    blocked for good, as the app's was on a dead terminal. Only the watchdog can end this process."""
    from gpttui.tui.exit_guard import ExitGuard
    from gpttui.tui.state import TrainingSession

    data, trainer = build_trainer(corpus, save_name, 1_000_000)
    session = TrainingSession()
    session.trainer, session.control = trainer, trainer.control
    done = session.done = threading.Event()

    def run() -> None:
        try:
            trainer.run()
        finally:
            done.set()

    threading.Thread(target=run, name="training").start()
    ExitGuard(session, hang_up=lambda sig: None, grace_s=grace_s).install()
    threading.Event().wait()  # blocked: signal handlers still run here, nothing else does
    return 0


def zygote(sock_fd: int) -> None:
    """Serve fork requests until the socket closes (see the module's docstring)."""
    import fcntl
    import termios

    from gpttui.tui.app import _warm_up_optimizer

    _warm_up_optimizer()
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    sock = socket.socket(fileno=sock_fd)
    if threading.active_count() != 1 or threads != 1:  # a fork would copy locks held by other threads
        sock.send(json.dumps({"error": f"zygote not single-threaded ({threads} threads)"}).encode())
        return
    sock.send(b'{"ready": true}')
    children: set[int] = set()
    while True:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                sock.send(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}).encode())
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
        if not msg:
            return  # the test is done
        request = json.loads(msg)
        pid = os.fork()
        if pid == 0:  # the child: the pty as its controlling terminal and stdio, then the app
            sock.close()
            os.setsid()
            fcntl.ioctl(fds[0], termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(fds[0], fd)
            os.close(fds[0])
            os.environ.clear()
            os.environ.update(request["env"])
            raise SystemExit(main(request["argv"]))
        os.close(fds[0])
        children.add(pid)
        sock.send(json.dumps({"started": pid}).encode())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--zygote"]:
        zygote(int(sys.argv[2]))
    elif sys.argv[1:2] == ["--stuck"]:
        sys.exit(stuck(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    else:
        sys.exit(main(sys.argv[1:]))
