"""SIGTERM ends a run as an exception, so the atomic writers remove their temporaries; the handlers are
only installed over the default ones (the atomic writers themselves: tests/files/test_atomic.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from conftest import REPO

from sparsekit import signals

SRC = REPO / "src"


def test_sigterm_removes_the_temporary(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(SRC)!r})
        from sparsekit.files.atomic import atomic_directory
        from sparsekit.signals import install_signal_handlers
        install_signal_handlers()
        try:
            with atomic_directory({str(out)!r}) as tmp:
                (tmp / "model.safetensors").write_bytes(b"0" * 100000)
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(30)
                except Exception:
                    print("an except Exception block must not catch it")
        except BaseException as exc:
            print(type(exc).__name__, isinstance(exc, SystemExit), exc)
            raise
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout.strip() == "Terminated True SIGTERM"
    assert list(tmp_path.iterdir()) == []


def test_signal_handler_is_only_installed_over_the_default(monkeypatch):
    installed = {}
    monkeypatch.setattr(signals.signal, "getsignal",
                        lambda s: signal.SIG_IGN if s == signal.SIGHUP else signal.SIG_DFL)
    monkeypatch.setattr(signals.signal, "signal", lambda s, h: installed.__setitem__(s, h))
    signals.install_signal_handlers()
    assert list(installed) == [signal.SIGTERM]  # SIGHUP ignored (nohup): left alone
