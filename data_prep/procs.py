"""Process hygiene shared by every command that starts workers: children die with their
parent (whatever killed it), and a wait that makes no progress becomes one clear error."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_STALLED = 4


def die_with_parent(_worker_id: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (SIGKILL of the parent
    included, which no handler sees). Use as a worker initialiser; a no-op off Linux."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class StallWatchdog:
    """Ends the process with one line and exit code 4 when an armed wait outlasts `timeout`.

    A data loader worker that deadlocks blocks the main thread inside Paddle's C++ queue, where
    no exception can reach it; this thread sees the wait is too long, says what was awaited,
    and exits (loader workers follow through die_with_parent). timeout <= 0 disables it."""

    def __init__(self, timeout: float, hint: str = ""):
        self.timeout, self.hint = float(timeout), hint
        self._deadline: float | None = None
        self._context = ""
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = None
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
            self._thread.start()

    def arm(self, context: str) -> None:
        """A wait starts; `context` says what is awaited (stage, iteration, files)."""
        with self._lock:
            self._deadline, self._context = time.monotonic() + self.timeout, context

    def disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def close(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(min(1.0, self.timeout / 4)):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                context = self._context
            if late:
                print(f"\nerror: {context}: nothing arrived for {self.timeout:.0f} s (a data loader worker stalled)"
                      f"{'; ' + self.hint if self.hint else ''}", file=sys.stderr, flush=True)
                os._exit(EXIT_STALLED)
