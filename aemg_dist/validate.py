"""The checks every command makes on its paths before it starts Ray or writes anything, and the lock that
keeps two commands out of one output folder.

A command that fails half-way leaves half an output behind and hides the cause under a traceback. So the
inputs are checked first, each in one line that names it: a URI scheme no filesystem knows, an input
that is missing or a file where a folder is expected, an output whose place is taken by a file, or that
sits on a read-only disk. Whether an existing output may be continued (a run, a corpus, a token folder)
is the business of the stage that owns its format; it is asked before anything is written too.

Object stores are checked for the scheme only: a write permission cannot be probed there without
writing, and they cannot lock, so two commands on one URI are the user's to avoid.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from aemg_dist import storage
from aemg_dist.storage import StorageError

LOCK_FILE = ".aemg-lock"


def require_input(path: str | Path, what: str, kind: str = "folder") -> None:
    """Refuse an input that cannot be read as a `kind` ("folder" or "file"): an unknown URI scheme, a path
    that does not exist (FileNotFoundError), or one of the other kind (StorageError)."""
    if not str(path):
        raise StorageError(f"give {what}")
    storage.check_scheme(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if storage.isdir(path) != (kind == "folder"):
        raise StorageError(f"{what} {path} is a {'file' if kind == 'folder' else 'folder'}; expected a {kind}")


def require_output(path: str | Path, what: str, kind: str = "folder") -> None:
    """Refuse an output `kind` ("folder" or "file") that cannot be made or written: an unknown URI scheme, a path
    of the other kind, a file at one of its parents, or a read-only (or not permitted) place: a folder itself
    and the folders directly in it, or, for a new output, the nearest existing parent."""
    if not str(path):
        raise StorageError(f"give {what}")
    storage.check_scheme(path)
    if storage.is_uri(path):
        return
    folder = Path(path).absolute()
    if kind == "file":
        if folder.is_dir():
            raise StorageError(f"{what} {path} is a folder; expected a file")
        folder = folder.parent
    for place in (folder, *folder.parents):
        if place.exists():
            break
    if not place.is_dir():
        shown = "it" if place == folder and kind == "folder" else str(place)
        raise StorageError(f"{what} {path}: {shown} is a file; expected a folder (choose another path)")
    places = [place, *(p for p in place.iterdir() if p.is_dir() and not p.is_symlink())] if place == folder \
        else [place]
    for place in places:
        if not os.access(place, os.W_OK | os.X_OK):
            raise StorageError(f"{what} {path}: cannot write in {place} (a read-only disk or no permission)")


@contextmanager
def claim(path: str | Path, what: str) -> Iterator[None]:
    """Hold `path` (a local output folder, made here) for this command: a second command on the same folder is
    refused while the first runs (StorageError naming the holder).

    The lock is an flock on OUT/.aemg-lock, which the kernel releases when the holder dies however it dies, so
    a killed command never leaves the folder locked; the file is removed when the command ends, and so is the
    folder when this call made it and the command left it empty (refused before writing). URIs are not locked
    (see the module docstring)."""
    if storage.is_uri(path):
        yield
        return
    folder = Path(path)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StorageError(f"{what} {path} is in use by another aemg command ({holder}); wait for it to end or "
                               "choose another folder") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        if made and not any(folder.iterdir()):
            folder.rmdir()
