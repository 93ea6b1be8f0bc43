"""SIGTERM and SIGHUP as exceptions, so that ``finally`` blocks run and temporary outputs are
removed, as for Ctrl-C (the CLI installs the handlers once, in ``main()``)."""

from __future__ import annotations

import signal
import threading

__all__ = ["Terminated", "install_signal_handlers"]


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM or SIGHUP arrives (after
    :func:`install_signal_handlers`). A ``SystemExit`` with code 128 + signal number (143 for
    SIGTERM): ``finally`` blocks and context managers run, ``except Exception`` does not catch
    it, and Typer/Click pass it through (they turn ``KeyboardInterrupt`` into exit code 130
    without a message). ``str()`` is the signal name, e.g. "SIGTERM"."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name

    def __str__(self) -> str:
        return self.signal_name


def _raise_terminated(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Make SIGTERM (and SIGHUP, unless ignored, e.g. under nohup) raise :class:`Terminated` in
    the main thread, so ``finally`` blocks run and temporaries are removed, as for Ctrl-C.
    Only replaces the default disposition; a second signal of the same kind terminates at
    once. Call once, early in the CLI's ``main()``; a no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)
