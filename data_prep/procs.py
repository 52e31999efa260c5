"""Process hygiene shared by every command that starts workers: children die with their
parent (whatever killed it), and a wait that makes no progress becomes one clear error."""
from __future__ import annotations

import ctypes
import itertools
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

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


def watched(items: Iterable, timeout: float, awaited: Callable[[int], str], hint: str = "") -> Iterator:
    """The items of an iterator (a DataLoader's batches), each awaited under a StallWatchdog:
    `awaited(k)` says what item k is (called once per item, in order) for the one-line error."""
    watchdog = StallWatchdog(timeout, hint)
    it = iter(items)
    try:
        for k in itertools.count():
            watchdog.arm(awaited(k))
            item = next(it, _END)
            watchdog.disarm()
            if item is _END:
                return
            yield item
    finally:
        watchdog.close()


_END = object()


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (a bind there fails)."""
    import socket
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _listening(host: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def run_server(cmd: list[str], name: str, host: str, port: int, start_timeout: float = 120) -> int:
    """Run a server child until it exits; never wait on one that cannot start. A port already
    in use, a child that dies before listening, or one that does not listen within
    `start_timeout` s is one line (RuntimeError) and the child is gone. The child dies with us."""
    import subprocess
    if port_in_use(host, port):
        raise OSError(f"{name}: port {port} on {host} is already in use; pick another with --port")
    proc = subprocess.Popen(cmd, preexec_fn=die_with_parent)
    deadline = time.monotonic() + start_timeout
    try:
        while not _listening(host, port):
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"{name} exited with code {code} before listening on {host}:{port}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on {host}:{port} within {start_timeout:.0f} s")
            time.sleep(0.2)
        return proc.wait()
    finally:
        stop_child(proc, grace=10)


def stop_child(proc, grace: float) -> None:
    """SIGTERM a child that is still running, SIGKILL it if it has not ended after `grace` s."""
    import subprocess
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http_ready(url: str, proc, timeout: float, what: str = "server") -> None:
    """Poll url until it answers 200; RuntimeError (one line) when `proc` exits first or
    `timeout` s pass. For a service started as a child, e.g. `paddle-lane serve` and /readyz."""
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(f"{what} exited with code {code} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {url} not ready within {timeout:.0f} s")
        time.sleep(0.3)
