"""Interrupt a 2-process, 2-stage training run at random moments, the way clusters do, and check
that nothing is lost: a signal to the whole process group (SIGTERM, as SLURM/systemd/timeout send)
or SIGKILL of the launching command, then `--resume` until the run is finished.

For every interruption it checks: the exit code (143 for SIGTERM; a SIGKILLed command has none to
check), that no process of the run is alive 5 s later, that a SIGTERM left a checkpoint of the
iteration it names in its last line, and finally that the resumed run's metrics.jsonl (stage,
iteration, val and train mIoU of every validation) equals the unbroken run's.

    .venv/bin/python bench/chaos_train.py [--trials 10] [--seed 0] [--work /tmp/chaos]

Synthetic frames, the demo's lite model, 2 loader workers per rank (the shipped setting)."""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "configs" / "demo_tiny.yml"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
STAGES = ("[{width: 128, height: 48, batch_size: 2, iters: 30, lr: 0.01}, "
          "{width: 160, height: 64, batch_size: 2, iters: 20, lr: 0.005}]")
RUN_TIMEOUT_S = 900


def prepare(work: Path) -> Path:
    from paddle_lane.config import load_config
    from paddle_lane.prepare.pipeline import prepare as run_prepare
    from paddle_lane.prepare.synth import make_dataset
    lists = work / "prepare"
    if (lists / "train.csv").exists():
        return lists
    make_dataset(work / "raw", roads=("Road02", "Road03"), records_per_road=3, frames_per_record=2,
                 width=384, height=192, seed=3, test_frames=2)
    cfg = load_config(CONFIG, [f"data.lists_dir={lists}", "data.crop_offset=76", "data.frame_height=192",
                               "prepare.val_fraction=0.34"])
    run_prepare(work / "raw", lists, cfg, workers=1)
    return lists


def opts(lists: Path, out: Path) -> list[str]:
    return [f"data.lists_dir={lists}", f"train.output_dir={out}", "data.crop_offset=76", "data.frame_height=192",
            "data.num_workers=2", "data.use_cache=false", f"stages={STAGES}", "train.val_interval=10",
            "train.log_interval=5", "train.vis_images=1", "train.keep_last=2", "train.train_eval_images=2",
            "schedule.warmup_iters=5", "model.width=8"]


def train_cmd(lists: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "paddle_lane.cli.main", "train", "--config", str(CONFIG), "--device", "cpu",
            "--nproc", "2", *extra, "--opts", *opts(lists, out)]


def metrics(out: Path) -> list[tuple]:
    path = out / "metrics.jsonl"
    return [(r["stage"], r["iter"], round(r["miou"], 6), round(r["train_miou"], 6))
            for r in map(json.loads, path.read_text().splitlines())] if path.exists() else []


def steps_logged(out: Path) -> int:
    """Global training steps logged so far (train_log.jsonl, every 5 steps)."""
    log = out / "train_log.jsonl"
    if not log.exists():
        return 0
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return max((r["global_iter"] for r in lines), default=0)


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def interrupt_once(lists: Path, out: Path, rng: random.Random, resume: bool) -> dict:
    """Start (or resume) the run, interrupt it at a random step, check what the interruption left."""
    kind = rng.choice(["group-sigterm", "sigkill-command"])
    at_step = rng.randint(3, 48)
    cmd = train_cmd(lists, out, *(["--resume"] if resume else []))
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    start_steps = steps_logged(out)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and steps_logged(out) < max(at_step, start_steps + 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:  # finished before the moment came
        _, err = proc.communicate()
        return {"kind": "none (run finished)", "at": steps_logged(out), "exit": proc.returncode, "ok": proc.returncode == 0,
                "finished": proc.returncode == 0, "why": err.strip().splitlines()[-1:] if proc.returncode else []}
    family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    at = steps_logged(out)
    if kind == "group-sigterm":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    time.sleep(5)
    left = alive(family)
    result = {"kind": kind, "at": at, "exit": proc.returncode, "left": len(left), "finished": False}
    problems = []
    if left:
        problems.append(f"{len(left)} process(es) alive after 5 s")
        for pid in left:
            psutil.Process(pid).kill()
    if kind == "group-sigterm":
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if proc.returncode == 0:
            result["finished"] = True  # the signal came as the run ended
        elif proc.returncode != 143:
            problems.append(f"exit {proc.returncode}, not 143: {last}")
        elif "before training began" not in last:
            stopped = [p for p in out.glob("stage*/iter_*")
                       if json.loads((p / "state.json").read_text()).get("stopped_by") == "SIGTERM"
                       and f"checkpoint {p};" in last]
            if not stopped:
                problems.append(f"no checkpoint of the iteration the last line names: {last}")
    result["ok"], result["why"] = not problems, problems
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="work folder (default: a new temp folder)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="chaos_train_"))
    work.mkdir(parents=True, exist_ok=True)
    lists = prepare(work)
    rng = random.Random(args.seed)

    t0 = time.monotonic()
    unbroken = work / f"unbroken_{int(time.time())}"
    res = subprocess.run(train_cmd(lists, unbroken), env=ENV, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if res.returncode != 0:
        print(res.stderr[-3000:])
        return 1
    reference = metrics(unbroken)
    print(f"unbroken run: {len(reference)} validations in {time.monotonic() - t0:.0f} s")

    runs, interruptions, equal = 0, [], 0
    while len(interruptions) < args.trials:
        runs += 1
        out = work / f"interrupted_{runs}_{int(time.time())}"
        finished, resume = False, False
        while not finished and len(interruptions) < args.trials:
            r = interrupt_once(lists, out, rng, resume)
            resume = True
            finished = r["finished"]
            if r["kind"].startswith("none"):
                r["kind"] = "none"
            else:
                interruptions.append(r)
            print(f"  run {runs}: {r['kind']:16s} at step {r['at']:3d}: exit {r['exit']}, "
                  f"{'ok' if r['ok'] else 'FAILED: ' + '; '.join(r['why'])}", flush=True)
        while not finished:  # resume to the end
            res = subprocess.run(train_cmd(lists, out, "--resume"), env=ENV, capture_output=True, text=True,
                                 timeout=RUN_TIMEOUT_S)
            if res.returncode != 0:
                print(f"  run {runs}: resume failed ({res.returncode}): {res.stderr[-1500:]}")
                return 1
            finished = True
        same = metrics(out) == reference
        equal += same
        print(f"run {runs}: resumed to the end; metrics.jsonl {'equals' if same else 'DIFFERS FROM'} the unbroken run's")
        if not same:
            print(f"    unbroken: {reference}\n    resumed:  {metrics(out)}")
    failed = [r for r in interruptions if not r["ok"]]
    kinds = {k: sum(r["kind"] == k for r in interruptions) for k in ("group-sigterm", "sigkill-command")}
    print(f"\nsignals sent: {len(interruptions)} ({kinds['group-sigterm']} group SIGTERM, "
          f"{kinds['sigkill-command']} SIGKILL of the command); failed checks: {len(failed)}; "
          f"runs resumed to the end: {runs}, metrics equal to the unbroken run: {equal} of {runs}; "
          f"{time.monotonic() - t0:.0f} s")
    return 0 if not failed and equal == runs else 1


if __name__ == "__main__":
    sys.exit(main())
