"""Process hygiene shared by every command that starts workers: children die with their
parent (whatever killed it), and a wait that makes no progress becomes one clear error."""
from __future__ import annotations

import ctypes
import itertools
import math
import os
import select
import signal
import sys
import threading
import time
from typing import Callable, Iterable, Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_STALLED = 4


_forked_from: int | None = None  # in a forked child: the PID of the process that forked it


def _note_forking_process() -> None:
    global _forked_from
    _forked_from = os.getpid()  # runs in the parent just before fork; the child keeps the value


os.register_at_fork(before=_note_forking_process)


def die_with_parent(_worker_id: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (SIGKILL of the parent
    included, which no handler sees). Use as a worker initialiser; a no-op off Linux. A parent
    that died before the request took effect is noticed by comparing with the PID that forked
    this process (recorded at fork: asking getppid() here would already name the new parent)."""
    parent = _forked_from if _forked_from is not None else os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def loader_worker(worker_id: int | None = None) -> None:
    """Initialiser of a DataLoader worker: it dies with its parent and ignores SIGTERM/SIGINT.
    A signal to the whole process group (SLURM, systemd, Ctrl-C) then reaches only the parent,
    which owns shutdown (checkpoint, then it ends its workers), instead of killing the workers
    under it. Workers start with both signals held (start_loader), released once ignored."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
    die_with_parent(worker_id)


def start_loader(loader: Iterable) -> Iterator:
    """iter(loader) with SIGTERM/SIGINT held while its worker processes are forked, so a group
    signal in that window waits in the parent instead of killing a worker before loader_worker ran."""
    if threading.current_thread() is not threading.main_thread():
        return iter(loader)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StallWatchdog:
    """Ends the process with one line and exit code 4 when an armed wait outlasts `timeout`.

    A data loader worker that deadlocks blocks the main thread inside Paddle's C++ queue, where
    no exception can reach it; this thread sees the wait is too long, says what was awaited,
    and exits (loader workers follow through die_with_parent). timeout <= 0 disables it.

    With `on_signal`, a SIGTERM/SIGINT that arrives during an armed wait and is still unanswered
    `signal_grace` s later (the main thread is blocked, so its Python handler cannot run) is
    passed to `on_signal(signum)` on this thread, which is expected to end the process. Python
    writes each caught signal's number to a wakeup fd at once, from C: that is how it is seen."""

    def __init__(self, timeout: float, hint: str = "", on_signal: Callable[[int], None] | None = None,
                 signal_grace: float = 3.0):
        self.timeout, self.hint = float(timeout), hint
        self.on_signal, self.signal_grace = on_signal, signal_grace
        self._deadline: float | None = None
        self._armed_at, self._arm_count = 0.0, 0
        self._context = ""
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = None
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1
        if on_signal is not None and threading.current_thread() is threading.main_thread():
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self._pipe = (r, w)
        if self.timeout > 0 or self._pipe is not None:
            self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
            self._thread.start()

    def arm(self, context: str) -> None:
        """A wait starts; `context` says what is awaited (stage, iteration, files)."""
        with self._lock:
            self._deadline = time.monotonic() + self.timeout if self.timeout > 0 else math.inf
            self._context, self._armed_at = context, time.monotonic()
            self._arm_count += 1

    def disarm(self) -> None:
        with self._lock:
            self._deadline = None

    def close(self) -> None:
        self._closed.set()
        if self._pipe is None:
            return
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._previous_fd)
        # The thread must be gone before the fds close: a recycled fd number would let its
        # select/read take bytes from whatever file the process opens next.
        try:
            os.write(self._pipe[1], b"\0")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                return  # keep the fds open rather than hand their numbers to another file
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None

    def _signals_arrived(self, wait: float) -> list[int]:
        """Stop signals written to the wakeup fd within `wait` s (sleeps `wait` s without a pipe)."""
        pipe = self._pipe
        if pipe is None:
            self._closed.wait(wait)
            return []
        try:
            ready, _, _ = select.select([pipe[0]], [], [], wait)
            data = os.read(pipe[0], 512) if ready else b""
        except (OSError, ValueError):  # closed meanwhile
            return []
        return [b for b in data if b in STOP_SIGNALS]

    def _watch(self) -> None:
        tick = min(1.0, self.timeout / 4) if self.timeout > 0 else 0.5
        pending: tuple[int, int, float] | None = None  # (signum, arm count, seen at)
        while not self._closed.is_set():
            arrived = self._signals_arrived(tick)
            if self._closed.is_set():
                return
            now = time.monotonic()
            with self._lock:
                armed, count = self._deadline is not None, self._arm_count
                late = armed and now > self._deadline
                context = self._context
            if arrived and armed and pending is None:
                pending = (arrived[0], count, now)
            if pending is not None and (not armed or pending[1] != count):
                pending = None  # the main thread got past that wait: its own handler acts
            if pending is not None and now - pending[2] >= self.signal_grace:
                self.on_signal(pending[0])
                os._exit(128 + pending[0])  # on_signal is expected to end the process itself
            if late:
                print(f"\nerror: {context}: nothing arrived for {self.timeout:.0f} s (a data loader worker stalled)"
                      f"{'; ' + self.hint if self.hint else ''}", file=sys.stderr, flush=True)
                os._exit(EXIT_STALLED)


def watched(items: Iterable, timeout: float, awaited: Callable[[int], str], hint: str = "",
            on_signal: Callable[[int], None] | None = None) -> Iterator:
    """The items of an iterator (a DataLoader's batches), each awaited under a StallWatchdog:
    `awaited(k)` says what item k is (called once per item, in order) for the one-line error.
    `on_signal`: see StallWatchdog (a stop signal during a stalled wait)."""
    watchdog = StallWatchdog(timeout, hint, on_signal)
    it = start_loader(items)
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
