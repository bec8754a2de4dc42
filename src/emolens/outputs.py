"""Where and how commands write: the one check that an output never replaces an input, the one atomic write
(temp file beside the target, fsync, rename), file hashing, and the clean-up of the hidden temp files a killed
run leaves behind.

Every command that writes files calls :func:`check_outputs` before any work starts, so
``emolens predict DIR --save-dir DIR`` or ``emolens video a.mp4 -o a.mp4`` is refused in one line instead of
destroying the user's files, and an output folder that cannot be written is found before the first image.

Temp files are named ``.<name>.<pid>.<anything>`` beside their target (:func:`atomic_write_bytes`,
the video writer, the CSV timeline): :func:`remove_stale_temp_files` deletes those of processes that no longer
exist.

Example::

    check_outputs(inputs=["clip.mp4"], files=["clip.mp4"])   # OutputError: would overwrite the input
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 less the umask): mkstemp's 0o600 would make shipped
    weights and reports unreadable to other users."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temp file beside it, fsynced and renamed over ``path`` when
    the block ends without an error (removed when it fails), so readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # .<name>.<pid>.<random>.tmp: remove_stale_temp_files can tell a dead writer's leftovers
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(data)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class OutputError(ValueError):
    """An output that would overwrite an input (or another output), or that cannot be written."""


def _same_file(a: Path, b: Path) -> bool:
    """Same path once links and ``..`` are resolved, or the same file under another name (hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): only the resolved paths could match
        return False


def _writable_folder(folder: Path) -> None:
    """OutputError unless ``folder`` exists as a writable folder or could be created (its nearest existing
    ancestor is a writable folder)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{folder}: cannot write here, {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: cannot write here ({probe} is not writable): choose another output folder")


def check_outputs(inputs: Iterable[str | Path], files: Iterable[str | Path | None] = (),
                  folders: Iterable[str | Path | None] = ()) -> None:
    """Refuse, before any work, output ``files`` that are one of the ``inputs`` (same path, a link to it, a
    hard link) or repeat each other, and output ``files`` / ``folders`` that cannot be written. ``None`` entries
    (an output not asked for) are skipped; inputs that are not local files (URLs, camera indices) never match.

    Raises OutputError with a message that names both paths and the fix.
    """
    ins = [Path(p) for p in inputs if p is not None and str(p) and "://" not in str(p)]
    outs = [Path(p) for p in files if p is not None and str(p)]
    for i, out in enumerate(outs):
        for src in ins:
            if _same_file(out, src):
                raise OutputError(f"{out}: this is the input {src}; writing it would destroy the input: "
                                  "choose another output name or folder")
        for other in outs[:i]:
            if _same_file(out, other):
                raise OutputError(f"{out}: given for two outputs ({other}); each output needs its own name")
        if out.is_dir():
            raise OutputError(f"{out}: is a folder; give a file name")
        _writable_folder(out.parent)
    for folder in folders:
        if folder is not None and str(folder):
            folder = Path(folder)
            if folder.exists() and not folder.is_dir():
                raise OutputError(f"{folder}: is a file, not a folder")
            _writable_folder(folder)


def check_new_folder(folder: str | Path, what: str = "--out", advice: str = "give a new folder") -> Path:
    """Refuse, before any work, an output ``folder`` that holds files already (a previous run, someone's data)
    or that is a file: commands never write into such a folder, so nothing of the user's is replaced. A folder
    that does not exist yet or is empty is fine (and is returned); ``advice`` ends the message.

    >>> check_new_folder("runs/evaluate/old")     # doctest: +SKIP
    OutputError: --out runs/evaluate/old: folder exists and is not empty; ...
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: exists and is not a folder; {advice}")
    if path.is_dir() and any(path.iterdir()):
        raise OutputError(f"{what} {path}: folder exists and is not empty; nothing in it is overwritten: {advice}")
    _writable_folder(path)
    return path


def check_new_files(files: Iterable[str | Path | None], advice: str = "give another name or delete it first") -> None:
    """Refuse, before any work, output ``files`` that exist already: a file the user named (``-o out.mp4``) or
    one a command would put beside its input is never replaced. ``None`` entries are skipped."""
    for f in files:
        if f is not None and str(f) and (Path(f).exists() or Path(f).is_symlink()):
            raise OutputError(f"{f}: exists already and is never overwritten: {advice}")


def fresh_folder(path: str | Path) -> Path:
    """``path`` when it does not exist or is an empty folder, else ``path-2``, ``path-3``...: a default output
    folder (``runs/video/<name>``) that a re-run never writes over. Not created here (see
    :func:`new_run_folder` for a folder claimed at once)."""
    path = Path(path)
    for k in range(1, 100_000):
        cand = path if k == 1 else path.with_name(f"{path.name}-{k}")
        if not cand.exists() or (cand.is_dir() and not any(cand.iterdir())):
            return cand
    raise OutputError(f"{path}: 100000 folders of this name exist; clean some up")


def new_run_folder(path: str | Path) -> Path:
    """Create and return a new, empty folder ``path``, or ``path-2``, ``path-3``... when it exists: each
    candidate is claimed by an exclusive ``mkdir``, so two runs started in the same second never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        cand = path if k == 1 else path.with_name(f"{path.name}-{k}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise OutputError(f"{path}: 10000 run folders of this name exist; clean some up")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def temp_name(path: str | Path, tag: str) -> Path:
    """The hidden temp file beside ``path`` for this process: ``.<name>.<pid>.<tag>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{tag}")


def remove_stale_temp_files(path: str | Path, min_age_s: float = 60.0) -> list[Path]:
    """Delete the temp files ``.<name of path>.<pid>.*`` beside ``path`` whose process is gone (killed runs)
    and that are older than ``min_age_s``; returns what was deleted. Files of live processes are kept."""
    path = Path(path)
    prefix = f".{path.name}."
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            if not entry.is_file() or now - entry.stat().st_mtime < min_age_s:
                continue
            entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    return removed


class sigterm_as_interrupt:  # noqa: N801 - used as a context manager, like contextlib's
    """Within the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so the same clean-up runs (temp
    files removed or kept as a finished partial output) when a run is stopped by ``kill`` or a supervisor.
    A no-op outside the main thread, where Python cannot set signal handlers."""

    def __enter__(self) -> sigterm_as_interrupt:
        import signal
        import threading

        self._previous = None
        if threading.current_thread() is threading.main_thread():
            def _raise(signum, frame):
                raise KeyboardInterrupt(f"signal {signum}")

            self._previous = signal.signal(signal.SIGTERM, _raise)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
