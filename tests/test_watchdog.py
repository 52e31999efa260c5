"""The stall watchdog's signal pipe: closing it never lets its thread read another file."""
from __future__ import annotations

import select
import threading

from paddle_lane.core import procs
from paddle_lane.core.procs import StallWatchdog


def test_close_ends_the_watch_thread_before_its_pipe_fds_can_be_reused(tmp_path, monkeypatch):
    """The thread is held just before its select() until close() has returned and a file has
    taken the lowest free fd. Closing the pipe under a live thread gave that file's number to
    the select/read, which took the file's first 512 bytes (a config then failed to parse)."""
    content = bytes(range(256)) * 8
    path = tmp_path / "next_file.bin"
    path.write_bytes(content)
    real_select = select.select
    in_select, close_returned = threading.Event(), threading.Event()

    def held_select(rlist, wlist, xlist, timeout):
        in_select.set()
        close_returned.wait(1.0)
        return real_select(rlist, wlist, xlist, timeout)

    monkeypatch.setattr(procs.select, "select", held_select)
    watchdog = StallWatchdog(0, on_signal=lambda signum: None)
    assert in_select.wait(5.0)
    watchdog.close()
    thread_alive_after_close = watchdog._thread.is_alive()
    with open(path, "rb") as reopened:
        close_returned.set()
        watchdog._thread.join(5.0)
        assert reopened.read() == content
    assert not thread_alive_after_close


def test_close_restores_the_previous_wakeup_fd():
    import os
    import signal
    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w)
    try:
        watchdog = StallWatchdog(0, on_signal=lambda signum: None)
        assert signal.set_wakeup_fd(w) not in (w, -1)  # its own pipe was installed
        signal.set_wakeup_fd(watchdog._pipe[1])
        watchdog.close()
        assert signal.set_wakeup_fd(previous) == w
    finally:
        os.close(r)
        os.close(w)
