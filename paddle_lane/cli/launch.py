"""Multi-process and multi-card runs: which cards, and the launcher that runs one process per card
or CPU slot, passes stop signals on to every rank, and dies with this process."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from paddle_lane.core.errors import UserError

MAIN_SCRIPT = Path(__file__).resolve().with_name("main.py")  # what each rank runs: the same command line

LAUNCH_STOP_GRACE_S = 600  # after a stop signal, how long the ranks may take to checkpoint


def launch_distributed(args, argv: list[str], log_dir: str | None = None, resume_hint: str | None = None,
                       run_dir: str | None = None) -> int:
    """Re-run this command under paddle.distributed.launch (one process per card/CPU slot).

    The launcher runs in its own session and its ranks in theirs (Paddle's choice), so a signal
    to this process group (SLURM, systemd, Ctrl-C) reaches this process only: it passes SIGTERM
    or SIGINT on to every rank, which agree on the iteration, checkpoint and exit, and then
    prints the one line to continue. Paddle's launcher is not signalled (a second signal makes
    it kill the ranks after 10 s). The launcher dies with this process, and each rank with the
    launcher (PR_SET_PDEATHSIG), so nothing outlives a kill -9."""
    import subprocess

    import psutil
    from paddle_lane.core.procs import die_with_parent, stop_child
    training = run_dir is not None  # a training run: its folder holds the logs and the stop line's checkpoint
    out = Path(run_dir) if training else None
    if log_dir is None:
        log_dir = str(out / "launch_logs")
    cmd = launch_command(args, argv, log_dir)
    env = dict(os.environ, PADDLE_LANE_LAUNCHED="1")
    if resume_hint:
        env["PADDLE_LANE_RESUME_CMD"] = resume_hint
    received: list[int] = []
    first_at: list[float] = []  # when the first stop signal came

    def ranks() -> list:
        try:
            return psutil.Process(proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def pass_on(signum, _frame):
        received.append(signum)
        first_at[:] = first_at or [time.monotonic()]
        for rank in ranks():
            try:
                rank.send_signal(signum)
            except psutil.NoSuchProcess:
                pass

    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent, start_new_session=True)
    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        rc = _wait_for_ranks(proc, received, first_at)
    finally:
        stop_child(proc, grace=10)
    if received and training:
        from paddle_lane.runs.run_dir import stopped_line
        print(stopped_line(out, signal.Signals(received[0]).name, resume_hint or ""), file=sys.stderr)
    return 128 + received[0] if received else rc


def launch_command(args, argv: list[str], log_dir: str) -> list[str]:
    """paddle.distributed.launch running this command line, less the flags the launcher consumes."""
    ips = getattr(args, "ips", None)
    launch = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", log_dir]
    if args.gpus:
        launch += ["--devices", args.gpus]
    else:
        launch += ["--nproc_per_node", str(args.nproc)]
    if ips:
        launch += ["--ips", ips]
    inner = [a for a in argv if a not in ("--gpus", "--nproc", "--ips") and a not in (args.gpus, str(args.nproc), ips)]
    return launch + [str(MAIN_SCRIPT)] + inner


def _wait_for_ranks(proc, received: list[int], first_at: list[float]) -> int:
    """The launcher's exit code; once a stop signal came, the ranks get LAUNCH_STOP_GRACE_S to
    checkpoint and are then killed (one line says so)."""
    import subprocess
    while True:
        try:
            return proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        if first_at and time.monotonic() - first_at[0] > LAUNCH_STOP_GRACE_S:
            print(f"error: the ranks did not stop within {LAUNCH_STOP_GRACE_S} s of "
                  f"{signal.Signals(received[0]).name}; killed", file=sys.stderr)
            proc.kill()
            return proc.wait()


def parse_gpus(text: str | None) -> list[int]:
    """'3' -> [3], '0,1,2,3' -> [0, 1, 2, 3], None -> []; anything else is a UserError."""
    if text is None:
        return []
    parts = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() for t in parts):
        raise UserError(f"--gpus: expected card ids like 3 or 0,1,2,3, got {text!r}")
    ids = [int(t) for t in parts]
    if len(set(ids)) != len(ids):
        raise UserError(f"--gpus: card id repeated in {text!r}")
    return ids


def check_gpus(gpus: list[int], device: str | None) -> None:
    """--gpus needs a CUDA build that sees every requested card, and no --device cpu beside it."""
    from paddle_lane.device import require_cuda
    text = ",".join(map(str, gpus))
    if device == "cpu":
        raise UserError(f"--gpus {text} contradicts --device cpu; give one of them")
    count = require_cuda(f"--gpus {text}")
    missing = [i for i in gpus if i >= count]
    if missing:
        raise UserError(f"--gpus {text}: no card {missing}, only {count} CUDA device(s) visible (ids 0-{count - 1})")
