"""Safe outputs: checked before any work, built under a temporary name, moved into place whole.

* :func:`check_output` / :func:`check_output_file`: one-line
  :class:`~sparsekit.errors.UsageError` before hours of work when the output cannot or must not
  be written: it exists without ``overwrite``; ``overwrite`` would replace something sparsekit
  did not write; it is the current directory (or contains it); its location is not writable.
* :func:`atomic_directory`: the result is built in a hidden temporary
  beside the target and renamed into place at the end. On any error, Ctrl-C or SIGTERM (after
  :func:`sparsekit.signals.install_signal_handlers`) the temporary is
  removed and an existing output is left untouched: the old output is moved aside only once
  the new one is complete, and moved back if the final rename fails. (Signals become exceptions
  in :mod:`sparsekit.signals`.)
* Temporaries are named ``.<name>.sparsekit-<label>-<pid>-<host>-<random>``; a later run for
  the same output removes those whose process is gone (same host, pid not running), so a
  ``kill -9`` or power cut does not leave hundreds of MB behind for good. A temporary of a
  running process (or of another host) is never touched.
* Finished outputs get the usual modes: directories ``0o777 & ~umask`` (0755), files
  ``0o666 & ~umask`` (0644); temporaries start as 0700/0600.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sparsekit.errors import UsageError
from sparsekit.files.layout import STATS_FORMAT, sparsekit_metadata
from sparsekit.files.meta import META_FILE

SPARSEKIT_MARKER = META_FILE  # every directory sparsekit writes holds it
_LIVE: set[str] = set()  # temporaries of this process (its own pid may be a reused one)


# --- names of temporaries and stale ones -----------------------------------------------------

def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _prefix(target: Path, label: str) -> str:
    return f".{target.name}.sparsekit-{label}-{os.getpid()}-{_host_tag()}-"


def temporary_path(target: str | Path, label: str, suffix: str = ".tmp") -> Path:
    """A fresh name for a temporary of ``target`` beside it, that `clean_stale` recognises once its
    process is gone (for writers that create the file themselves)."""
    target = _absolute(target)
    return target.parent / f"{_prefix(target, label)}{os.urandom(4).hex()}{suffix}"


def _pattern(target: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(target.name)}\.sparsekit-(?P<label>[a-z]+)-(?P<pid>\d+)"
                      r"-(?P<host>[0-9a-f]{8})-[A-Za-z0-9_]+(\.tmp)?")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to another user
        return True
    except (OSError, OverflowError):
        return False
    return True


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def stale_temporaries(target: str | Path) -> list[tuple[Path, int]]:
    """Temporaries of ``target`` left by processes that no longer run on this host (a ``kill -9``,
    a power cut), with their sizes in bytes; nothing is removed. A holder of the previous output
    (label ``old``) counts only once ``target`` exists again, so an interrupted swap never loses
    both."""
    target = _absolute(target)
    if not target.parent.is_dir():
        return []
    pattern, host, found = _pattern(target), _host_tag(), []
    for entry in sorted(target.parent.iterdir()):
        m = pattern.fullmatch(entry.name)
        if m is None or m["host"] != host or str(entry) in _LIVE:
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if m["label"] == "old" and not target.exists():
            continue
        found.append((entry, _size(entry)))
    return found


def stale_in(directory: str | Path) -> list[tuple[Path, int]]:
    """Every stale sparsekit temporary in ``directory`` (of any output), with its size."""
    directory = _absolute(directory)
    if not directory.is_dir():
        return []
    names = {m.group(1) for e in directory.iterdir()
             if (m := re.fullmatch(r"\.(.+?)\.sparsekit-[a-z]+-\d+-[0-9a-f]{8}-[A-Za-z0-9_]+(\.tmp)?", e.name))}
    return [item for name in sorted(names) for item in stale_temporaries(directory / name)]


def clean_stale(target: str | Path) -> list[Path]:
    """Remove the `stale_temporaries` of ``target``; return what was removed."""
    removed = []
    for entry, _ in stale_temporaries(target):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# --- modes ---------------------------------------------------------------------------------

def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and restore at once)
    os.umask(mask)
    return mask


def publish_modes(path: str | Path) -> None:
    """Give ``path`` (a file, or a directory tree) the modes of an ordinary new file:
    directories ``0o777 & ~umask``, files ``0o666 & ~umask``; symlinks are left alone."""
    mask = _umask()
    path = Path(path)
    if path.is_file():
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, (0o777 if name in dirs else 0o666) & ~mask)


# --- checks --------------------------------------------------------------------------------

def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


def _refuse_cwd(out: Path, given) -> None:
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or cwd.is_relative_to(resolved):
        what = "the current directory" if resolved == cwd else "a parent of the current directory"
        raise UsageError(f"output {given} is {what}: give a new directory, e.g. -o {given}/out "
                         "(sparsekit replaces its output directory as a whole)")


def _check_writable(target: Path, given) -> None:
    """The nearest existing ancestor of ``target``'s parent must be a writable directory
    (probed by creating and removing a directory in it)."""
    where = target.parent
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise UsageError(f"cannot create output {given}: {where} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".sparsekit-probe-", dir=where)
        os.rmdir(probe)
    except OSError as exc:
        raise UsageError(f"cannot write output {given}: {where} is not writable "
                         f"({exc.strerror or exc}): choose another location") from None


def check_output(out: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Fail fast if directory ``out`` cannot or may not be written; return it as a Path.

    Refused: ``out`` is a file; ``out`` is the current directory or a parent of it; ``out``
    overlaps one of ``inputs`` (equal, inside, or containing it); ``out`` is a non-empty
    directory and ``overwrite`` is false; ``overwrite`` is true but ``out`` is not a sparsekit
    output (no ``sparsekit.json``: pruned models and exports have one); the location is not
    writable. An empty directory is fine without ``overwrite``.
    """
    given, out = out, _absolute(out)
    _refuse_cwd(out, given)
    resolved = out.resolve()
    for src in inputs:
        s = Path(src).resolve()
        if resolved == s or s.is_relative_to(resolved) or resolved.is_relative_to(s):
            raise UsageError(f"output {given} overlaps the input {src}: choose another output "
                             "directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {given} is a file: give a directory path for -o")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"output {given} already exists: choose another -o or pass "
                             "--overwrite")
        if not (out / SPARSEKIT_MARKER).is_file():
            raise UsageError(f"output {given} is not a sparsekit output (no {SPARSEKIT_MARKER}), "
                             "so --overwrite will not replace it: choose another -o or remove "
                             "it yourself")
    _check_writable(out, given)
    return Path(given)


def _is_stats_file(path: Path) -> bool:
    meta = sparsekit_metadata(path)
    return meta is not None and meta.get("format") == STATS_FORMAT


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Like :func:`check_output` for a single output file (a ``sparsekit calibrate``
    statistics file): an existing file needs ``overwrite`` and, to be replaced, must be a
    sparsekit statistics file; a directory is refused; the location must be writable."""
    given, path = path, _absolute(path)
    if path.is_dir():
        raise UsageError(f"output {given} is a directory: give a file path, e.g. "
                         f"-o {Path(given) / 'stats.safetensors'}")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise UsageError(f"output {given} already exists: choose another -o or pass "
                             "--overwrite")
        if not _is_stats_file(path):
            raise UsageError(f"output {given} is not a sparsekit statistics file, so --overwrite "
                             "will not replace it: choose another -o or remove it yourself")
    _check_writable(path, given)
    return Path(given)


# --- one writer per output ----------------------------------------------------------------

def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.sparsekit-lock"


@contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold ``.<name>.sparsekit-lock`` beside ``out`` for a whole run, so that a second run to the
    same output fails at once with one line naming the first (instead of both finishing and the
    second silently replacing the first). A lock left by a process that no longer runs on this
    host is taken over. The output's parent directory is created if needed."""
    target = _absolute(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(target)
    mine = f"{os.getpid()} {_host_tag()} {int(time.time())}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid, host, started = lock.read_text().split()
                pid, started = int(pid), int(started)
            except (OSError, ValueError):
                pid, host, started = -1, _host_tag(), 0  # unreadable: another run is writing it right now
                time.sleep(0.05)
                continue
            if host == _host_tag() and not _pid_alive(pid):
                lock.unlink(missing_ok=True)  # its process is gone: take it over
                continue
            where = "" if host == _host_tag() else " on another host"
            since = time.strftime("%H:%M:%S", time.localtime(started))
            raise UsageError(f"output {out} is being written by another sparsekit run (process {pid}{where}, "
                             f"since {since}): wait for it to finish or choose another -o") from None
        with os.fdopen(fd, "w") as f:
            f.write(mine)
        break
    else:
        raise UsageError(f"output {out}: cannot take its lock {lock}: remove it if no sparsekit run is writing {out}")
    try:
        yield lock
    finally:
        try:
            if lock.read_text() == mine:
                lock.unlink()
        except OSError:
            pass


# --- atomic outputs ------------------------------------------------------------------------

def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed only
    after the rename succeeded (moved back if it failed)."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    holder = Path(tempfile.mkdtemp(prefix=_prefix(out, "old"), dir=out.parent))
    _LIVE.add(str(holder))
    aside = holder / "previous"
    try:
        os.replace(out, aside)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(aside, out)  # put the previous output back
            raise
    finally:
        if not aside.exists() or out.exists():
            shutil.rmtree(holder, ignore_errors=True)
        _LIVE.discard(str(holder))


@contextmanager
def atomic_directory(out: str | Path, label: str = "partial") -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out``; when the block ends normally it gets
    published modes and replaces ``out``; on any exception (KeyboardInterrupt included) it is
    removed and ``out`` is untouched. Stale temporaries of ``out`` are removed first."""
    if not re.fullmatch(r"[a-z]+", label):
        raise ValueError(f"label must be lowercase letters, got {label!r}")
    given, out = out, _absolute(out)
    _refuse_cwd(out, given)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(out, label), dir=out.parent))
    _LIVE.add(str(tmp))
    try:
        yield tmp
        publish_modes(tmp)
        _swap_in(tmp, out)
    finally:
        _LIVE.discard(str(tmp))
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


