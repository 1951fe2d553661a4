"""Leaving on SIGHUP or SIGTERM, every time, within a bound, without losing the in-app run.

What goes wrong without it (a tmux session killed mid-run: 1 try in 3 with `python -m gpttui`, 2 in 3
with tests/pty_app.py on the Train screen):
closing the terminal sends SIGHUP (from the shell) and then SIGHUP + SIGCONT (from the kernel, when
the shell exits). Textual's SIGCONT handler "resumes" application mode on the dead terminal (there
``isatty`` is already false, so its own check is skipped): a second output thread starts, dies on
its first write (EIO), its queue fills, and the app's thread blocks forever in ``driver.close()``.
The run had been told to stop and had saved; the process stayed, idle, and SIGTERM only reached
asyncio's handler, which needs the (blocked) loop to act on it.

So the handlers here are plain ``signal.signal`` handlers, not the loop's: Python runs them in the
main thread even while it waits on a lock. A handler does only lock-free things:

* it arms the watchdog (a daemon thread started with the guard, woken through a pipe), which tells
  the in-app run to stop and save, waits for that save (``session.done``, up to ``SAVE_CAP_S``),
  gives Textual ``GRACE_S`` more to restore the terminal and the interpreter to end, and then ends
  the process with ``os._exit(128 + signal)``;
* when the terminal is gone it points stdout/stderr at /dev/null (every later write succeeds, so no
  output thread can die or fill up) and puts SIGCONT back to its default (nothing to resume);
* it asks the app's loop, if one is running, to call ``app._hang_up`` (stop the run, exit).

A second SIGHUP/SIGTERM while the run saves changes nothing: the save finishes, then the process
ends (within the same bound). SIGKILL is the escape, and it loses the save. Once ``run_app`` is done
the previous handlers (the defaults) come back, so a later SIGTERM is never ignored. The app takes
SIGHUP even when it started with SIGHUP ignored (``nohup``): an app without its terminal cannot go on
(``gpttui train``, which can, keeps an ignored SIGHUP ignored).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from typing import Callable

from gpttui.tui.state import TrainingSession

SAVE_CAP_S = 600.0
"""How long the watchdog waits for the run's final save: the current step, then weights and AdamW
state of the largest model this app trains, written to a slow disk. Generous on purpose: cutting it
short loses the save."""

GRACE_S = 10.0
"""After the save: Textual restoring the terminal, ``run_app`` returning, the interpreter ending."""

EXIT_SIGNALS = tuple(s for s in (getattr(signal, "SIGHUP", None), signal.SIGTERM) if s is not None)


def stop_for_exit(session: TrainingSession, reason: str = "interrupted") -> None:
    """Tell the in-app run, if one is going, to stop after its step and save.

    Judged by ``session.done`` (set by the training thread itself), never by the Textual worker's
    state: once the app stops, Textual cancels its workers while the thread still trains."""
    control = session.control
    if control is not None and not session.done.is_set():
        control.stop(save=True, reason=reason)


class ExitGuard:
    """SIGHUP/SIGTERM handlers and the watchdog that bounds the exit (see the module's docstring)."""

    def __init__(self, session: TrainingSession, hang_up: Callable[[int], None], *,
                 save_cap_s: float = SAVE_CAP_S, grace_s: float = GRACE_S) -> None:
        self.session = session
        self.hang_up = hang_up  # called on the app's loop: stop the run, exit the app
        self.save_cap_s, self.grace_s = save_cap_s, grace_s
        self.signum: int | None = None  # the first exit signal received
        self._previous: dict[int, object] = {}
        self._ttys: list[int] = []
        self._devnull = -1
        self._wake_r = self._wake_w = -1

    # -- installing
    def install(self) -> "ExitGuard":
        """From the main thread, before the app runs: the handlers and the (idle) watchdog."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a handler never blocks, however many signals come
        self._devnull = os.open(os.devnull, os.O_WRONLY)
        self._ttys = [fd for fd in (1, 2) if _isatty(fd)]
        threading.Thread(target=self._watch, name="gpttui-exit-watchdog", daemon=True).start()
        for sig in EXIT_SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        return self

    def reclaim(self) -> None:
        """From the app's loop, once it runs: the exit signals back to this guard, should anything
        (a Textual driver, say) have given them to the loop since :meth:`install`. A loop's handler
        needs a loop that runs; these work while the app's thread is stuck."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for sig in self._previous:
            if loop is not None:
                loop.remove_signal_handler(sig)  # False when the loop had none
            signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        """The handlers that were there before (the defaults): with the app gone, a signal acts at
        once. An armed watchdog stays armed, bounding the interpreter's own exit; an idle one ends."""
        for sig, previous in self._previous.items():
            try:
                signal.signal(sig, previous)
            except (TypeError, ValueError, OSError):
                signal.signal(sig, signal.SIG_DFL)
        self._previous.clear()
        if self.signum is None and self._wake_w >= 0:
            os.close(self._wake_w)  # the watchdog reads end-of-file and returns
            os.close(self._devnull)
            self._wake_w = self._devnull = -1

    @property
    def signalled(self) -> bool:
        return self.signum is not None

    # -- in the signal handler: lock-free work only
    def _on_signal(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        try:
            os.write(self._wake_w, bytes([signum]))
        except OSError:
            pass  # the pipe is full: the watchdog is armed already
        self._let_go_of_the_terminal()  # a SIGHUP's, usually; a SIGTERM may come after one
        try:
            loop = asyncio.get_running_loop()  # the app's, when the signal lands while it runs
        except RuntimeError:
            return  # before or after the app: run_app's own path stops the run
        if not loop.is_closed():
            loop.call_soon_threadsafe(self.hang_up, signum)

    def _let_go_of_the_terminal(self) -> None:
        """A terminal that is gone (``isatty`` false on an fd that was one): writes to it go to
        /dev/null, and a SIGCONT no longer makes Textual take it over again."""
        gone = [fd for fd in self._ttys if not _isatty(fd)]
        for fd in gone:
            try:
                os.dup2(self._devnull, fd)
            except OSError:
                pass
        if gone and hasattr(signal, "SIGCONT"):
            signal.signal(signal.SIGCONT, signal.SIG_DFL)

    # -- the watchdog's thread
    def _watch(self) -> None:
        try:
            first = os.read(self._wake_r, 1)
        except OSError:
            return
        if not first:
            os.close(self._wake_r)  # run_app ended without a signal
            return
        signum = first[0]
        stop_for_exit(self.session)  # also when the app's loop is blocked and never runs hang_up
        self.session.wait_done(self.save_cap_s)  # the save is never cut short, up to the cap
        threading.Event().wait(self.grace_s)  # a deadline, not a synchronisation
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(128 + signum)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


__all__ = ["EXIT_SIGNALS", "ExitGuard", "GRACE_S", "SAVE_CAP_S", "stop_for_exit"]
