"""Staged training: each stage (size, batch, iterations, LR) starts from the previous
stage's best weights. One loop per stage that reads top to bottom: fetch a batch,
forward, loss, backward, step, log; validate every N iterations; checkpoint."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist
from tqdm import tqdm

from paddle_lane.config import CONFIG_FILE, Config, save_config, to_dict
from paddle_lane.core.labels import load_scheme
from paddle_lane.data.dataset import (LaneDataset, StageBatchSampler, loader_worker_init, rare_class_weights,
                                      read_list)
from paddle_lane.core.io_utils import atomic_write_text
from paddle_lane.core.procs import start_loader, watched
from paddle_lane.data.transforms import FrameSource
from paddle_lane.device import is_gpu, select_device
from paddle_lane.runs.checkpoint import (checkpoint_damage, list_checkpoints, load_optimizer_state, load_weights,
                                           newest_intact_checkpoint, prune, read_state, reconcile_best,
                                           save_checkpoint)
from paddle_lane.engine.monitor import Monitor
from paddle_lane.engine.plan import INIT, checkpoint_due, resume_point, start_weights, validates_at
from paddle_lane.runs.run_dir import (check_fresh_start, check_resume_config, clear_stale_temps, holds_run,
                                        move_aside, stop_message)
from paddle_lane.core.errors import UserError
from paddle_lane.core.metrics import metric_to_jsonable
from paddle_lane.engine.schedules import IterLR, build_optimizer
from paddle_lane.engine.validation import sample_val_rows, validate_frames
from paddle_lane.losses import build_loss, multi_output_loss, output_coef
from paddle_lane.models import build_model, set_backbone_trainable
from paddle_lane.models.builder import AllOutputs


class TrainingStopped(RuntimeError):
    """Raised for a NaN or exploding loss; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Raised after SIGTERM/SIGINT once a resumable checkpoint of the current iteration is written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class StageResult:
    stage: int
    best_miou: float
    best_iter: int
    last_iter: int
    stopped_early: bool
    best_dir: str
    validated: bool = True  # False: no val frames, "best" is the last iteration


@dataclass
class StageParts:
    """What one stage trains: the model, the network stepped (all outputs, data-parallel across
    ranks), its loss, LR schedule, optimiser and fp16 loss scaler."""
    model: object
    net: object
    loss_fn: object
    lr: IterLR
    optimizer: object
    scaler: object | None


@dataclass
class StageProgress:
    """Where a stage stands: its iteration and its record so far, as a checkpoint's state holds them."""
    stage: int
    iters: int
    size: list
    it: int = 0
    best: float = -math.inf
    best_iter: int = -1
    bad_vals: int = 0  # validations since the last gain (train.patience)
    # (loss, terms) since the last train_log.jsonl line; kept in checkpoints, so the first line
    # after a resume averages the same iterations as the unbroken run's
    window: list = field(default_factory=list)
    stopped_early: bool = False

    @classmethod
    def resumed(cls, stage_idx: int, st, resume_state: dict | None) -> "StageProgress":
        """A stage from its start, or from a checkpoint's state."""
        progress = cls(stage_idx, st.iters, [st.width, st.height])
        if resume_state is not None:
            progress.it, progress.best = resume_state["iter"], resume_state["best_miou"]
            progress.best_iter, progress.bad_vals = resume_state["best_iter"], resume_state["bad_vals"]
            progress.window = [tuple(x) for x in resume_state.get("log_window", [])]
        return progress

    def state(self, lr_now: float, **extra) -> dict:
        """The checkpoint state of this moment."""
        return {"stage": self.stage, "iter": self.it, "lr": lr_now,
                "best_miou": self.best if math.isfinite(self.best) else -1.0, "best_iter": self.best_iter,
                "bad_vals": self.bad_vals, "stage_done": self.it >= self.iters, "size": self.size,
                "log_window": self.window, **extra}

    def record_validation(self, miou: float, validated: bool) -> bool:
        """Whether this validation is the new best; without val frames every one is (best = last)."""
        improved = miou > self.best if validated else True
        if improved:
            self.best, self.best_iter, self.bad_vals = miou, self.it, 0
        else:
            self.bad_vals += 1
        return improved


def load_stats(cfg: Config) -> dict:
    """prepare's stats.json, checked against the configured scheme."""
    path = Path(cfg.data.lists_dir) / "stats.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `./run.sh prepare --out {cfg.data.lists_dir}` first")
    stats = json.loads(path.read_text())
    scheme = load_scheme(cfg.data.scheme)
    if stats.get("class_names") != scheme.class_names:
        raise ValueError(f"{cfg.source}: data.scheme {scheme.name!r} has classes {scheme.class_names} but "
                         f"{path} was prepared with {stats.get('class_names')}; re-run prepare or fix data.scheme")
    return stats


TRAIN_LOG = "train_log.jsonl"  # loss, loss terms and LR every train.log_interval iterations


def trim_metrics(path: Path, stage: int, it: int) -> None:
    """Drop the records after a resume point, so a resumed run never logs an iteration twice."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if (rec.get("stage", 0), rec.get("iter", 0)) <= (stage, it):
            kept.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in kept))


def reset_log(path: Path) -> None:
    """Empty a log of a run that restarts from scratch (no intact checkpoint): nothing logged twice."""
    if path.exists():
        atomic_write_text(path, "")


def reseed(seed: int, stage: int, it: int, rank: int) -> None:
    """Re-seed Paddle's RNG (dropout etc.) from the iteration, before every step, so a run
    resumed at any iteration draws the same random numbers as the uninterrupted one."""
    paddle.seed(seed * 1_000_003 + stage * 10_007 + it * 31 + rank)


class Trainer:
    """Runs every stage of a config; rank 0 writes logs and checkpoints."""

    def __init__(self, cfg: Config, resume: bool = False, device: str | None = None, quiet: bool = False,
                 force: bool = False, allow_config_change: bool = False, resume_hint: str | None = None):
        self.cfg, self.resume, self.quiet = cfg, resume, quiet
        # the command that continues this run, printed when it stops (the CLI passes the user's own)
        self.resume_hint = resume_hint or f"./run.sh train --config {cfg.source} --resume"
        self._previous_handlers = self._catch_signals()  # from the start: a SIGTERM during set-up is seen too
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        self.device = select_device(device)
        if self.world > 1:
            dist.init_parallel_env()
        self.main = self.rank == 0
        self.out = Path(cfg.train.output_dir)
        self._claim_output(force, allow_config_change)
        self.scheme = load_scheme(cfg.data.scheme)
        self.stats = load_stats(cfg)
        self.train_df = read_list(Path(cfg.data.lists_dir) / "train.csv")
        val_path = Path(cfg.data.lists_dir) / "val.csv"
        self.val_df = read_list(val_path, allow_empty=True) if val_path.exists() else None
        if self.val_df is not None and self.val_df.empty:  # val_fraction 0: train without validation
            self.val_df = None
        if self.val_df is None:
            if self.rank == 0:
                print(f"warning: no validation frames ({val_path} {'is empty' if val_path.exists() else 'is missing'}): "
                      "each stage's 'best' checkpoint is its last iteration", file=sys.stderr)
        else:
            self.val_df = sample_val_rows(self.val_df, cfg.train.max_val_images, cfg.train.seed)
        # a fixed sample of training frames scored like val: the train/val gap (bias vs variance)
        self.train_eval_df = (sample_val_rows(self.train_df, cfg.train.train_eval_images, cfg.train.seed + 1)
                              if cfg.train.train_eval_images and self.val_df is not None else None)
        if self.main and cfg.data.use_cache:
            self._refresh_cache()
        if self.world > 1:
            dist.barrier()  # every rank reads the refreshed cache
        self.amp = self._amp_level()
        paddle.seed(cfg.train.seed + self.rank)
        np.random.seed(cfg.train.seed + self.rank)
        self.history: list[tuple[int, int, float]] = []  # (stage, iter, loss) of this process
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / CONFIG_FILE)
        self.monitor = Monitor(self.out / "vdl", [st.iters for st in cfg.stages], enabled=self.main,
                               quiet=quiet or not self.main)

    def _claim_output(self, force: bool, allow_config_change: bool) -> None:
        """A folder that holds a run is continued (--resume, with the run's own config) or moved
        aside (--force), never trained into afresh; every rank checks, rank 0 acts."""
        if self.resume:
            if not holds_run(self.out):
                raise UserError(f"--resume: {self.out} holds no training run "
                                f"({'the folder does not exist' if not self.out.exists() else 'no config.yml, metrics.jsonl or stageN/'}); "
                                "drop --resume to start one there, or point train.output_dir at the run to continue")
            accepted = check_resume_config(self.out, to_dict(self.cfg), allow_config_change)
            if accepted and self.main:
                print("resuming with plan changes: " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in accepted))
        elif holds_run(self.out) and not force:
            check_fresh_start(self.out, force=False)  # raises, naming the options
        if self.main:
            if not self.resume and holds_run(self.out):
                print(f"moved the previous run in {self.out} aside to {move_aside(self.out)}")
            for p in clear_stale_temps(self.out):
                print(f"removed {p} (left by an interrupted checkpoint save)")
        if self.world > 1:
            dist.barrier()

    # ------------------------------------------------------------------ setup helpers
    def _refresh_cache(self) -> None:
        """Cached frames whose source changed after prepare are rebuilt before the first step."""
        from paddle_lane.prepare.pipeline import refresh_cache
        for size, counts in refresh_cache(self.train_df, Path(self.cfg.data.lists_dir), self.cfg, self.scheme).items():
            print(f"warning: cache {size}: {counts['rebuilt']} frame(s) changed since prepare and were rebuilt, "
                  f"{counts['written']} missing ones written, {counts['error']} unreadable ones dropped from the "
                  "cache (read from the source)", file=sys.stderr)

    def _amp_level(self):
        if not self.cfg.train.amp:
            return None
        if not is_gpu(self.device):
            print(f"warning: train.amp={self.cfg.train.amp} ignored on CPU (fp32)")
            return None
        return "float16" if self.cfg.train.amp == "fp16" else "bfloat16"

    def _build_model(self):
        return build_model(self.cfg.model, self.scheme.num_classes)

    def _train_loader(self, stage_idx: int, start_iter: int):
        """One DataLoader for the whole stage: its sampler yields exactly the remaining
        batches, so workers start once and the loop ends on its own (no stray workers)."""
        st, d = self.cfg.stages[stage_idx], self.cfg.data
        source = FrameSource.from_config(self.cfg, (st.width, st.height))
        train_ds = LaneDataset(self.train_df, source, d.mean, d.std, self.cfg.augment, seed=self.cfg.train.seed)
        weights = rare_class_weights(self.train_df, self.scheme.class_names, d.oversample_rare)
        sampler = StageBatchSampler(len(train_ds), st.batch_size, st.iters, self.rank, self.world,
                                    seed=self.cfg.train.seed + 1000 * stage_idx, weights=weights,
                                    start_batch=start_iter)
        loader = paddle.io.DataLoader(train_ds, batch_sampler=sampler, num_workers=d.num_workers,
                                      use_shared_memory=d.num_workers > 0, worker_init_fn=loader_worker_init)
        return loader, sampler, len(train_ds), source

    def _class_weights(self):
        return self.stats.get("class_weights")

    # ------------------------------------------------------------------ run
    def run(self) -> list[StageResult]:
        start_stage, resume_state, resume_dir = 0, None, None
        if self.resume:
            resume_dir = newest_intact_checkpoint(self.out, warn=self.main)
            resume_state = read_state(resume_dir) if resume_dir is not None else None
            point = resume_point(resume_state, [st.iters for st in self.cfg.stages])
            start_stage = point.stage
            if resume_dir is not None:
                if self.main and not self.quiet:
                    print(f"resuming from {resume_dir}")
                if self.main:
                    trim_metrics(self.out / "metrics.jsonl", *point.trim_to)
                    trim_metrics(self.out / TRAIN_LOG, *point.trim_to)
                    # a crash between the periodic and the best save leaves best/ behind the state
                    note = reconcile_best(resume_dir.parent, resume_state)
                    if note:
                        print(note, file=sys.stderr)
                if self.world > 1:
                    dist.barrier()  # best/ is settled before any rank reads it
                if not point.mid_stage:  # that stage is done: the next one starts afresh
                    resume_state, resume_dir = None, None
            elif self.main:
                print(f"no checkpoint in {self.out}; starting from scratch")
                reset_log(self.out / "metrics.jsonl")
                reset_log(self.out / TRAIN_LOG)
            if point.finished:
                if self.main:
                    print(f"{self.out} is already finished: all {len(self.cfg.stages)} stage(s) of its config ran "
                          f"(newest checkpoint {resume_dir or newest_intact_checkpoint(self.out, warn=False)}); "
                          "nothing to train. Add stages or iterations with --allow-config-change to train on.")
                self.monitor.close()
                return []
        results = []
        self._catch_signals(keep_flag=True)  # again: Paddle's set-up may have replaced the handlers
        try:
            for i in range(len(self.cfg.stages)):
                if i < start_stage:
                    continue
                results.append(self.run_stage(i, resume_state if i == start_stage else None,
                                              resume_dir if i == start_stage else None))
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self.monitor.close()
        return results

    def _catch_signals(self, keep_flag: bool = False) -> dict:
        """SIGTERM (a scheduler, a preempted node) and SIGINT only set a flag: the loop then
        writes a resumable checkpoint of the current iteration and stops (TrainingInterrupted)."""
        if not keep_flag:
            self._signal = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, _frame):
            self._signal = signum

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # held by the CLI until a handler was ready
        return previous

    def request_stop(self, signum: int) -> None:
        """Stop as a signal would: checkpoint the current iteration and raise TrainingInterrupted."""
        self._signal = signum

    def _agreed_signal(self) -> int | None:
        """The stop signal any rank received (each rank asks after every step, so all stop at the
        same iteration and none is left waiting in a collective)."""
        if self.world == 1:
            return self._signal
        flag = paddle.to_tensor([self._signal or 0], dtype="int64")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def _stop_if_signalled(self, stage_dir: Path, model, optimizer, state: dict, synced: bool = True) -> None:
        """After a step: on SIGTERM/SIGINT (any rank's), checkpoint this iteration and raise
        TrainingInterrupted. synced=False: called off the main thread (a stalled loader), no collectives."""
        signum = self._agreed_signal() if synced else self._signal
        if signum is None:
            return
        name = signal.Signals(signum).name
        if state["iter"] == 0 and not list_checkpoints(self.out):  # nothing trained yet: nothing to save
            raise TrainingInterrupted(stop_message(name, None, None, self.resume_hint), signum)
        path = stage_dir / f"iter_{state['iter']:07d}"
        if self.main:
            save_checkpoint(path, model, optimizer, {**state, "stopped_by": name})
            prune(self.out, state["stage"], self.cfg.train.keep_last)
        if self.world > 1 and synced:
            dist.barrier()  # the other ranks end only once rank 0's checkpoint is on disk
        raise TrainingInterrupted(stop_message(name, state, path, self.resume_hint) if self.main else f"stopped by {name}",
                                  signum)

    def _stop_while_stalled(self, signum: int, stage_dir: Path, model, optimizer, state: dict) -> None:
        """A stop signal while the main thread is blocked on a stalled loader (StallWatchdog's
        thread calls this): checkpoint the last finished step from here, one line, exit 128+N."""
        self._signal = signum
        code = 128 + signum
        try:
            self._stop_if_signalled(stage_dir, model, optimizer, state, synced=False)
        except TrainingInterrupted as exc:
            print(f"\n{exc} (the data loader was stalled)", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - the process ends either way; say why
            print(f"\nstopped by {signal.Signals(signum).name} while the data loader was stalled; "
                  f"the checkpoint could not be written: {exc}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)

    def _init_weights(self, model, stage_idx: int):
        """Stage > 0 starts from the previous stage's best weights (plan.start_weights)."""
        prev = stage_idx - 1
        source = start_weights(stage_idx, {prev: self.out / f"stage{prev}"},
                               {prev: [p for p in list_checkpoints(self.out) if p.parent.name == f"stage{prev}"]})
        if source == INIT:
            return
        damage = checkpoint_damage(source)
        if damage:
            raise UserError(f"{source} is damaged ({damage}); stage {stage_idx} cannot start from it. "
                            "Resume with --resume (it re-saves best/ from the checkpoint that holds it)")
        load_weights(model, source)

    def run_stage(self, stage_idx: int, resume_state: dict | None, resume_dir: Path | None) -> StageResult:
        st = self.cfg.stages[stage_idx]
        stage_dir = self.out / f"stage{stage_idx}"
        parts = self._stage_parts(stage_idx, resume_dir)
        progress = StageProgress.resumed(stage_idx, st, resume_state)
        if resume_state is not None:
            load_optimizer_state(parts.model, parts.optimizer, resume_dir / "optimizer.pdopt")
            parts.lr.set_state_dict({"last_epoch": resume_state["iter"], "last_lr": resume_state["lr"]})
        loader, sampler, n_train, source = self._train_loader(stage_idx, progress.it)
        val = self._val_predictor(parts.model, (st.width, st.height)) if self.val_df is not None else None
        if self.main and not self.quiet:
            print(f"stage {stage_idx}: {st.width}x{st.height}, batch {st.batch_size} x {self.world} rank(s), "
                  f"{st.iters} iters, lr {st.lr}, {n_train} train / "
                  f"{len(self.val_df) if self.val_df is not None else 0} val frames, "
                  f"cache {'on' if source.cache_folder else 'off'}")
        frozen = self.cfg.model.freeze_backbone_iters > progress.it
        if frozen or parts.model.backbone is not None:  # a model without a backbone (BiSeNetV2) has nothing to unfreeze
            set_backbone_trainable(parts.model, not frozen)
        bar = tqdm(total=st.iters, initial=progress.it, desc=f"stage {stage_idx}",
                   disable=not self.main or self.quiet, dynamic_ncols=True)
        parts.net.train()
        awaited = self._stall_description(progress, sampler, n_train)
        batches = start_loader(loader)  # workers forked with SIGTERM/SIGINT held (they ignore both)
        stream = watched(batches, self.cfg.data.loader_timeout, awaited,
                         f"checkpoints are kept in {self.out}; continue with: {self.resume_hint}",
                         on_signal=lambda signum: self._stop_while_stalled(
                             signum, stage_dir, parts.model, parts.optimizer, progress.state(parts.lr.last_lr)))
        try:
            self._train_iterations(stream, parts, progress, val, stage_dir, bar, frozen)
        finally:
            stream.close()
            bar.close()
            shutdown = getattr(batches, "_try_shutdown_all", None)
            if shutdown is not None:  # early stop or error: release the loader's worker processes
                shutdown()
        if self.main and progress.stopped_early:
            # mark the stage finished so --resume moves on to the next stage
            last = list_checkpoints(self.out)[-1]
            save_checkpoint(last, parts.model, parts.optimizer,
                            {**read_state(last), "stage_done": True, "stopped_early": True})
        if self.world > 1:
            dist.barrier()
        return StageResult(stage_idx, progress.best, progress.best_iter, progress.it, progress.stopped_early,
                           str(stage_dir / "best"), val is not None)

    def _stage_parts(self, stage_idx: int, resume_dir: Path | None) -> StageParts:
        """The model (from the checkpoint resumed, else the stage's start weights), its loss,
        schedule and optimiser."""
        cfg, st = self.cfg, self.cfg.stages[stage_idx]
        model = self._build_model()
        if resume_dir is not None:
            load_weights(model, resume_dir)
        else:
            self._init_weights(model, stage_idx)
        trained = AllOutputs(model)  # every output (auxiliary heads too) gets its loss
        net = paddle.DataParallel(trained) if self.world > 1 else trained
        loss_fn = build_loss(cfg.loss, self.scheme.num_classes, self._class_weights())
        lr = IterLR(st.iters, st.lr, cfg.schedule)
        optimizer = build_optimizer(model.parameters(), cfg.optimizer, lr)
        scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if self.amp == "float16" else None
        return StageParts(model, net, loss_fn, lr, optimizer, scaler)

    def _stall_description(self, progress: StageProgress, sampler, n_train: int):
        """What a stalled loader was fetching: the frames of the batch the loop waits for."""
        expected = iter(sampler)  # the same batches as the loader's
        keys = self.train_df["key"].astype(str).tolist()

        def awaited(_k: int) -> str:
            frames = [keys[g % n_train] for g in next(expected, [])]
            return (f"stage {progress.stage} iteration {progress.it + 1}/{progress.iters}: waiting for a batch of "
                    f"{', '.join(frames[:4])}{' ...' if len(frames) > 4 else ''}")
        return awaited

    def _train_iterations(self, stream, parts: StageParts, progress: StageProgress, val, stage_dir: Path, bar,
                          frozen: bool) -> None:
        """The loop: fetch, step, log; validate or checkpoint when due; stop on a signal or early."""
        cfg = self.cfg
        t_fetch = self._since_val = time.perf_counter()
        self._last_save = time.monotonic()
        self._stop_if_signalled(stage_dir, parts.model, parts.optimizer, progress.state(parts.lr.last_lr))
        for images, labels in stream:
            t_data = time.perf_counter() - t_fetch
            if frozen and progress.it >= cfg.model.freeze_backbone_iters:
                set_backbone_trainable(parts.model, True)
                frozen = False
            t0 = time.perf_counter()
            labels = labels.astype("int64")
            reseed(cfg.train.seed, progress.stage, progress.it, self.rank)  # resumable at any iteration, bit for bit
            loss_value, terms, cur_lr = self._step(parts.net, parts.loss_fn, parts.optimizer, parts.lr, parts.scaler,
                                                   images, labels, progress.stage, progress.it)
            progress.it += 1
            self._record_step(progress, bar, int(images.shape[0]), loss_value, terms, cur_lr, t_data,
                              time.perf_counter() - t0)
            if self._validate_or_checkpoint(parts, progress, val, stage_dir, loss_value):
                return  # early stop
            self._stop_if_signalled(stage_dir, parts.model, parts.optimizer, progress.state(parts.lr.last_lr))
            t_fetch = time.perf_counter()

    def _record_step(self, progress: StageProgress, bar, batch: int, loss_value: float, terms: dict, cur_lr: float,
                     t_data: float, t_compute: float) -> None:
        """The step's loss to the history, VisualDL and the progress bar; a train_log.jsonl line per interval."""
        stage_idx, it = progress.stage, progress.it
        self.history.append((stage_idx, it, loss_value))
        ips = batch * self.world / max(t_data + t_compute, 1e-9)
        self.monitor.train_step(stage_idx, it, loss_value, terms, cur_lr, ips, t_data, t_compute)
        progress.window.append((loss_value, terms))
        if it % self.cfg.train.log_interval == 0 or it == progress.iters:
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{cur_lr:.2e}", ips=f"{ips:.1f}")
            self._log_train(stage_idx, it, progress.window, cur_lr)
            progress.window = []
        bar.update(1)

    def _validate_or_checkpoint(self, parts: StageParts, progress: StageProgress, val, stage_dir: Path,
                                loss_value: float) -> bool:
        """Validate and checkpoint when due (plan.validates_at), else checkpoint when due; True
        when the stage stops early (train.patience validations without a gain)."""
        train, it = self.cfg.train, progress.it
        if validates_at(it, progress.iters, train.val_interval):
            self._share_rank0_statistics(parts.model)
            miou = self.validate(parts.net, val, progress.stage, it)
            improved = progress.record_validation(miou, validated=val is not None)
            state = progress.state(parts.lr.last_lr, val_miou=miou, loss=loss_value)
            self._save(stage_dir, parts.model, parts.optimizer, state, improved)
            parts.net.train()
            if train.patience and progress.bad_vals >= train.patience and it < progress.iters:
                progress.stopped_early = True
                if self.main and not self.quiet:
                    print(f"\nearly stop: no improvement in {progress.bad_vals} validations "
                          f"(best {progress.best:.4f} at {progress.best_iter})")
                return True
        elif self._checkpoint_due(it):  # a killed run loses minutes, not a validation interval
            self._save(stage_dir, parts.model, parts.optimizer, progress.state(parts.lr.last_lr, loss=loss_value),
                       improved=False)
        return False

    def _step(self, net, loss_fn, optimizer, lr, scaler, images, labels, stage_idx: int, it: int):
        """Forward, loss, backward, optimiser and LR step; stops the run on a NaN or exploding loss."""
        with paddle.amp.auto_cast(enable=self.amp is not None, level="O1", dtype=self.amp or "float16"):
            outputs = net(images)
            m = self.cfg.model
            coef = output_coef(m.loss_coef, m.type if m.name == "paddleseg" else None, len(outputs))
            total, terms = multi_output_loss(loss_fn, outputs, labels, coef)
        loss_value = float(total)
        if not math.isfinite(loss_value) or loss_value > self.cfg.train.max_loss:
            newest = list_checkpoints(self.out)
            kept = f"the newest checkpoint is {newest[-1]}" if newest else "no checkpoint was written yet"
            raise TrainingStopped(
                f"stage {stage_idx} iter {it + 1}: loss is {loss_value} (limit train.max_loss={self.cfg.train.max_loss}); "
                f"stopped; {kept}. Lower the LR or enable optimizer.grad_clip.")
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        optimizer.clear_grad()
        cur_lr = optimizer.get_lr()
        lr.step()
        return loss_value, {k: float(v) for k, v in terms.items()}, cur_lr

    def _checkpoint_due(self, it: int) -> bool:
        """Every train.checkpoint_interval iterations, or train.checkpoint_minutes after the last save."""
        t = self.cfg.train
        return checkpoint_due(it, t.checkpoint_interval, t.checkpoint_minutes, time.monotonic() - self._last_save)

    def _save(self, stage_dir: Path, model, optimizer, state: dict, improved: bool) -> None:
        """Rank 0 writes the periodic checkpoint, the best one, and prunes old ones."""
        self._last_save = time.monotonic()
        if not self.main:
            return
        save_checkpoint(stage_dir / f"iter_{state['iter']:07d}", model, optimizer, state)
        if improved:
            save_checkpoint(stage_dir / "best", model, None, state)
        prune(self.out, state["stage"], self.cfg.train.keep_last)

    def _log_train(self, stage_idx: int, it: int, window: list, lr: float) -> None:
        """One train_log.jsonl line: loss and loss terms averaged over the log interval, and the LR."""
        if not self.main or not window:
            return
        terms = {k: float(np.mean([t[k] for _, t in window if k in t])) for k in window[-1][1]}
        record = {"stage": stage_idx, "iter": it, "global_iter": self.monitor.step(stage_idx, it),
                  "loss": float(np.mean([v for v, _ in window])), "terms": terms, "lr": float(lr)}
        with open(self.out / TRAIN_LOG, "a") as fh:  # append-only; trimmed to the resume point like metrics.jsonl
            fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ validation
    def _score_train_sample(self, predictor) -> dict:
        """Leaderboard scoring of the training sample (this rank's share, summed over ranks)."""
        rows = self.train_eval_df.iloc[self.rank::self.world]
        metric = validate_frames(predictor, rows, self.scheme, self.cfg.data.num_workers, 0).metric
        return self._summed_over_ranks(metric).compute()

    def _summed_over_ranks(self, metric):
        """The metric with every rank's confusion added (each rank scored its share of the frames)."""
        if self.world > 1:
            conf = paddle.to_tensor(metric.confusion.astype(np.int64))
            dist.all_reduce(conf)
            metric.reset()
            metric.merge(conf.numpy())
        return metric

    def _share_rank0_statistics(self, model) -> None:
        """Every rank takes rank 0's untrained tensors (BatchNorm running statistics) before
        validating: each rank scores its share of val, and the weights saved are rank 0's, so
        validation scores exactly the checkpoint it is logged for (trained parameters are equal
        on every rank already). Paddle keeps BN statistics as parameters with stop_gradient set,
        not as buffers, so they are picked from the state dict."""
        if self.world > 1:
            for tensor in model.state_dict().values():
                if tensor.stop_gradient:
                    dist.broadcast(tensor, src=0)

    def _val_predictor(self, net, size: tuple[int, int]):
        """The inference path for the network being trained: no TTA, the stage size."""
        from paddle_lane.inference.predictor import Predictor
        return Predictor(self.cfg, models=[(net, size)], flip=False, scales=[1.0], device=self.device)

    @paddle.no_grad()
    def validate(self, net, predictor, stage_idx: int, it: int) -> float:
        """Leaderboard mIoU (8 classes) at full size (engine/validation.py) on this rank's
        share of val, confusion summed over ranks."""
        if predictor is None:
            return float("nan")
        net.eval()
        t0 = time.perf_counter()
        rows = self.val_df.iloc[self.rank::self.world]
        res = validate_frames(predictor, rows, self.scheme, self.cfg.data.num_workers,
                              self.cfg.train.vis_images if self.main else 0)
        metric = self._summed_over_ranks(res.metric)
        result = metric.compute()
        train_result = self._score_train_sample(predictor) if self.train_eval_df is not None else None
        if self.main:
            self.monitor.validation(stage_idx, it, result, metric.table(), res.shown, self.cfg.data, self.scheme)
            record = {"stage": stage_idx, "iter": it, "global_iter": self.monitor.step(stage_idx, it), "ranks": self.world, "frames": len(self.val_df),
                      "unreadable": len(res.unreadable), "scoring": "leaderboard: full size, evaluation mapping",
                      "seconds": round(time.perf_counter() - t0, 3),
                      "train_seconds": round(t0 - self._since_val, 3),  # since the stage start or last validation
                      **metric_to_jsonable({k: result[k] for k in ("miou", "miou_lanes", "pixel_accuracy", "per_class")})}
            if train_result is not None:  # the same scoring on a fixed sample of training frames
                record.update(metric_to_jsonable({"train_frames": len(self.train_eval_df),
                                                  "train_miou": train_result["miou"],
                                                  "train_miou_lanes": train_result["miou_lanes"],
                                                  "train_iou": [r["iou"] for r in train_result["per_class"]]}))
            with open(self.out / "metrics.jsonl", "a") as fh:  # append-only log; one line per validation
                fh.write(json.dumps(record) + "\n")
        self._since_val = time.perf_counter()
        miou = result["miou"]
        return float(miou) if miou is not None and math.isfinite(miou) else 0.0
