"""One command per output folder: an OS file lock held for the life of the process.

Two `train`, `infer` or `prepare` commands on one folder interleaved their checkpoints, logs
and lists. The lock is fcntl.flock on `<parent>/.<name>.lock` (beside the folder, so moving
the folder aside with --force does not move the lock): the kernel drops it when the holding
process ends, however it ends, so a crash never leaves a stale lock. fcntl rather than the
`filelock` package because the loser must name the holder, which filelock does not record."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from paddle_lane.core.errors import UserError

_held: dict[Path, int] = {}  # lock path -> fd, for the life of the process


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.lock")


def hold_folder(folder: str | os.PathLike, what: str) -> Path:
    """Lock `folder` for this process (again in the same process: a no-op). Another live process
    holding it is a UserError naming its PID and command. Returns the lock file's path."""
    path = lock_path(folder)
    if path in _held:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process that has not written its PID yet"
        os.close(fd)
        raise UserError(f"{Path(folder)} is in use by another {what} ({holder}); wait for it to end, "
                        "or choose another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()}, {what} started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    _held[path] = fd
    return path


def release_folder(folder: str | os.PathLike) -> None:
    """Give the lock up before the process ends (tests; a command that hands the folder over)."""
    fd = _held.pop(lock_path(folder), None)
    if fd is not None:
        os.close(fd)
