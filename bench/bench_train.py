"""Training-speed benchmark on the real frames in ../shared/apollo_dev, each number
measured against its baseline in the same run:

1. Trainer step time vs a bare `for images, labels in loader` loop (same model, data,
   loss, optimizer and DataLoader), interleaved rounds, median over steps.
2. Loader throughput at 1536x512 from full-size frames: our DataLoader over LaneDataset
   (no cache) vs the single-threaded generator of the best known solution (cv2 read,
   crop, resize, one mask per id, normalise), interleaved passes over the same frames.
3. Share of each trainer step spent waiting for data, for the model of part 1 and for a
   DeepLabV3P ResNet18.
4. Steady-state images/s of a two-stage run (validation between the stages) with 2 loader
   workers against the same run with 0 workers, interleaved rounds.

    .venv/bin/python bench/bench_train.py            # default settings (~2-3 min on 2 cores)
    .venv/bin/python bench/bench_train.py --quick    # < 2 min
"""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "2")  # must be set before paddle is imported
warnings.filterwarnings("ignore", message="No ccache found")  # printed by paddle on import
warnings.filterwarnings("ignore", message="When training, we now always track")

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2
import numpy as np
import pandas as pd
import paddle

from paddle_lane.config import Config, load_config
from paddle_lane.core.labels import known_ids, load_scheme
from paddle_lane.core.procs import watched
from paddle_lane.data.dataset import LaneDataset, StageBatchSampler, loader_worker_init, read_list
from paddle_lane.data.transforms import FrameSource
from paddle_lane.engine.schedules import IterLR, build_optimizer
from paddle_lane.engine.trainer import Trainer, load_stats
from paddle_lane.losses import build_loss
from paddle_lane.models import build_model
from paddle_lane.prepare.cache import best_reduce
from paddle_lane.prepare.pipeline import prepare

CONFIG = ROOT / "configs" / "demo_tiny.yml"
REAL_DATA = ROOT.parent / "shared" / "apollo_dev"
CROP_OFFSET = 690
LOADER_TIMEOUT = 120  # s without a batch: the benchmark stops with one line (exit 4)


# ----------------------------------------------------------------------------- options
def parse_size(text: str) -> tuple[int, int]:
    """'256x96' -> (256, 96)."""
    w, h = text.lower().split("x")
    return int(w), int(h)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; --quick shrinks everything to stay under two minutes."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REAL_DATA, help="folder with pairs.csv and the real frames")
    p.add_argument("--model", default="lite", choices=["lite", "deeplabv3p", "unet"], help="model of part 1")
    p.add_argument("--backbone", default="ResNet18_vd", help="backbone when --model is deeplabv3p")
    p.add_argument("--width", type=int, default=16, help="base channels of the lite model")
    p.add_argument("--size", type=parse_size, default=(256, 96), help="training size WxH of parts 1 and 3")
    p.add_argument("--batch", type=int, default=4, help="training batch of part 1")
    p.add_argument("--iters", type=int, default=12, help="steps per timed run in part 1")
    p.add_argument("--warmup", type=int, default=3, help="first steps of each run left out of the medians")
    p.add_argument("--rounds", type=int, default=6, help="interleaved (trainer, bare loop) rounds in part 1")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers in parts 1 and 3")
    p.add_argument("--load-size", type=parse_size, default=(1536, 512), help="output size WxH of part 2")
    p.add_argument("--load-batch", type=int, default=2, help="DataLoader batch of part 2")
    p.add_argument("--load-workers", type=int, default=2, help="DataLoader workers of part 2")
    p.add_argument("--passes", type=int, default=2, help="interleaved passes of the loaders in part 2")
    p.add_argument("--load-rounds", type=int, default=6, help="rounds over all frames within one loader (part 2)")
    p.add_argument("--deeplab-iters", type=int, default=6, help="DeepLabV3P-R18 steps in part 3 (0 = skip, else >= 5)")
    p.add_argument("--deeplab-batch", type=int, default=2, help="DeepLabV3P-R18 batch in part 3")
    p.add_argument("--stage-iters", type=int, default=16, help="steps per stage in part 4")
    p.add_argument("--stage-rounds", type=int, default=2, help="interleaved (2 workers, 0 workers) rounds in part 4")
    p.add_argument("--quick", action="store_true", help="fewer steps and passes, no DeepLabV3P (< 2 min)")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.warmup, args.rounds = min(args.iters, 8), min(args.warmup, 2), min(args.rounds, 2)
        args.passes, args.deeplab_iters = 1, 0
        args.stage_iters, args.stage_rounds = 10, 1
    if args.iters - args.warmup < 2:
        p.error("--iters must exceed --warmup by at least 2")
    if 0 < args.deeplab_iters < 5:
        p.error("--deeplab-iters must be 0 (skip) or at least 5 (2 warm-up steps)")
    return args


# ----------------------------------------------------------------------------- data
def require_real_data(root: Path) -> None:
    """Exit with a clear message when the real frames are not there."""
    if not (root / "pairs.csv").exists():
        sys.exit(f"bench_train: real frames not found ({root / 'pairs.csv'} is missing); "
                 f"this benchmark needs the 30 apollo_dev frames, pass --data DIR")


def stages_opt(sizes, batch: int, iters: int) -> str:
    """A `stages=[...]` override, one stage per size."""
    items = ", ".join(f"{{width: {w}, height: {h}, batch_size: {batch}, iters: {iters}, lr: 0.002}}" for w, h in sizes)
    return f"stages=[{items}]"


def base_opts(lists: Path, size: tuple[int, int], batch: int, iters: int) -> list[str]:
    """Overrides shared by every config of this benchmark."""
    return [f"data.lists_dir={lists}", f"data.crop_offset={CROP_OFFSET}", "data.frame_height=1710", stages_opt([size], batch, iters)]


def prepare_lists(root: Path, tmp: Path, sizes) -> Path:
    """Lists, stats and the resized cache at the given sizes, in a temp folder."""
    lists = tmp / "prepare"
    cfg = load_config(CONFIG, [f"data.lists_dir={lists}", f"data.crop_offset={CROP_OFFSET}", "data.frame_height=1710",
                               stages_opt(sizes, 1, 1), "prepare.cache=true"])
    prepare(root, lists, cfg)
    return lists


def all_frames(lists: Path) -> pd.DataFrame:
    """Train and val lists together (every real frame once)."""
    return pd.concat([read_list(lists / "train.csv"), read_list(lists / "val.csv")], ignore_index=True)


# ----------------------------------------------------------------------------- part 4: two stages
def steady_images_per_s(run: dict, stage_iters: int, batch: int, warmup: int) -> float:
    """Images per second over each stage's steps after its first `warmup` (worker start-up,
    the validation between stages and the last step's validation left out)."""
    stamps = run["stamps"]
    times = []
    for s in range(len(stamps) // stage_iters):
        part = stamps[s * stage_iters:(s + 1) * stage_iters]
        times += np.diff(part[warmup:-1]).tolist() if len(part) > warmup + 2 else []
    return batch / statistics.median(times)


def bench_two_stages(lists: Path, tmp: Path, args) -> dict:
    """The same two-stage run with 2 and with 0 loader workers, interleaved."""
    sizes = [args.size, (args.size[0] * 3 // 2, args.size[1] * 3 // 2)]
    rates: dict[int, list[float]] = {2: [], 0: []}
    for r in range(args.stage_rounds):
        for workers in (2, 0):
            opts = [f"data.lists_dir={lists}", f"data.crop_offset={CROP_OFFSET}", "data.frame_height=1710",
                    stages_opt(sizes, args.batch, args.stage_iters), f"train.output_dir={tmp / f'two_{r}_{workers}'}",
                    f"data.num_workers={workers}", "data.use_cache=true", f"model.name={args.model}",
                    f"model.width={args.width}", f"train.val_interval={args.stage_iters}",
                    "train.max_val_images=2", "train.vis_images=0"]
            run = run_trainer(load_config(CONFIG, opts))
            rates[workers].append(steady_images_per_s(run, args.stage_iters, args.batch, args.warmup))
    return {"w2": statistics.median(rates[2]), "w0": statistics.median(rates[0]), "rates": rates, "sizes": sizes}


# ----------------------------------------------------------------------------- part 1 + 3: training
def train_config(lists: Path, out: Path, args, model: str, batch: int, iters: int) -> Config:
    """One-stage config on the cached real frames; validation only at the end, on one frame."""
    opts = base_opts(lists, args.size, batch, iters) + [
        f"train.output_dir={out}", f"data.num_workers={args.workers}", "data.use_cache=true",
        f"model.name={model}", f"model.width={args.width}", f"model.backbone={args.backbone}",
        f"train.val_interval={iters + 1}", "train.max_val_images=1", "train.vis_images=1"]
    if model == "deeplabv3p":
        opts.append("model.output_stride=16")  # os8 costs ~2x per step on CPU, same conclusion
    return load_config(CONFIG, opts)


def run_trainer(cfg: Config) -> dict:
    """Trainer.run(); per-step end times and data/compute split, recorded at Monitor.train_step."""
    trainer = Trainer(cfg, quiet=True)
    stamps, waits, computes = [], [], []
    original = trainer.monitor.train_step

    def record(stage, it, loss, terms, lr, ips, t_data, t_compute):
        stamps.append(time.perf_counter())
        waits.append(t_data)
        computes.append(t_compute)
        original(stage, it, loss, terms, lr, ips, t_data, t_compute)

    trainer.monitor.train_step = record
    trainer.run()
    return {"stamps": stamps, "wait": waits, "compute": computes}


def run_bare_loop(cfg: Config) -> dict:
    """The same model, loss, optimizer, schedule and DataLoader in a plain loop."""
    st = cfg.stages[0]
    scheme = load_scheme(cfg.data.scheme)
    paddle.seed(cfg.train.seed)
    model = build_model(cfg.model, scheme.num_classes)
    loss_fn = build_loss(cfg.loss, scheme.num_classes, load_stats(cfg).get("class_weights"))
    lr = IterLR(st.iters, st.lr, cfg.schedule)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer, lr)
    df = read_list(Path(cfg.data.lists_dir) / "train.csv")
    ds = LaneDataset(df, FrameSource.from_config(cfg, (st.width, st.height)), cfg.data.mean, cfg.data.std,
                     cfg.augment, seed=cfg.train.seed)
    sampler = StageBatchSampler(len(ds), st.batch_size, st.iters, seed=cfg.train.seed)
    loader = paddle.io.DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                  use_shared_memory=cfg.data.num_workers > 0)
    model.train()
    stamps = []
    for images, labels in loader:
        loss, _ = loss_fn(model(images), labels.astype("int64"))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        lr.step()
        stamps.append(time.perf_counter())
    return {"stamps": stamps}


def step_times(stamps: list[float], warmup: int) -> list[float]:
    """Durations of the steps after warm-up (end-to-end: fetch + compute + bookkeeping)."""
    return list(np.diff(stamps[warmup:]))


def wait_shares(run: dict, warmup: int) -> list[float]:
    """t_data / (t_data + t_compute) of each step after warm-up."""
    return [w / max(w + c, 1e-9) for w, c in zip(run["wait"][warmup:], run["compute"][warmup:])]


def bench_trainer(lists: Path, tmp: Path, args) -> dict:
    """Part 1: interleaved rounds of Trainer.run() and the bare loop."""
    ours, bare, shares, ratios = [], [], [], []
    for r in range(args.rounds):
        cfg = train_config(lists, tmp / f"run_{r}", args, args.model, args.batch, args.iters)
        order = ("trainer", "bare") if r % 2 == 0 else ("bare", "trainer")  # neither always runs first
        for kind in order:
            if kind == "trainer":
                run = run_trainer(cfg)
                mine = step_times(run["stamps"], args.warmup)
                shares += wait_shares(run, args.warmup)
            else:
                theirs = step_times(run_bare_loop(cfg)["stamps"], args.warmup)
        ours += mine
        bare += theirs
        ratios.append(statistics.median(mine) / statistics.median(theirs))
        print(f"  round {r + 1}/{args.rounds}: trainer {statistics.median(ours) * 1e3:.1f} ms, "
              f"bare {statistics.median(bare) * 1e3:.1f} ms (running medians)", flush=True)
    return {"ours": ours, "bare": bare, "shares": shares, "ratios": ratios}


def bench_deeplab_wait(lists: Path, tmp: Path, args) -> dict:
    """Part 3, realistic case: data-wait share of a DeepLabV3P-R18 trainer run."""
    warm = 2
    cfg = train_config(lists, tmp / "run_deeplab", args, "deeplabv3p", args.deeplab_batch, args.deeplab_iters)
    run = run_trainer(cfg)
    return {"shares": wait_shares(run, warm), "steps": step_times(run["stamps"], warm)}


# ----------------------------------------------------------------------------- part 2: loading
def winner_encode(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """The usual encoding: one full-image mask per Apollo id, assigned its train id."""
    out = np.zeros(label.shape, np.uint8)
    for apollo_id in sorted(known_ids()):
        out[label == apollo_id] = lut[apollo_id]
    return out


def winner_generator(rows: list[dict], size, offset: int, lut, mean, std):
    """Single-threaded generator of the best known solution: read, crop, resize, encode, normalise."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    for row in rows:
        bgr = cv2.imread(row["image"])
        rgb = cv2.cvtColor(cv2.resize(bgr[offset:], size), cv2.COLOR_BGR2RGB)
        label = cv2.imread(row["label"], cv2.IMREAD_GRAYSCALE)  # Gray_Label PNGs are mode L: ids
        label = cv2.resize(label[offset:], size, interpolation=cv2.INTER_NEAREST)
        image = ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        yield np.ascontiguousarray(image), winner_encode(label, lut).astype(np.int64)


class _InOrder(paddle.io.BatchSampler):
    """Every index once, in order, in batches."""

    def __init__(self, n: int, batch: int):
        self.batches = [list(range(i, min(n, i + batch))) for i in range(0, n, batch)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def loading_dataset(lists: Path, size, cache: bool = False) -> tuple[LaneDataset, Config]:
    """LaneDataset over every real frame at `size`, no augmentation; full-size files unless `cache`."""
    cfg = load_config(CONFIG, base_opts(lists, size, 1, 1) + [f"data.use_cache={str(cache).lower()}"])
    source = FrameSource.from_config(cfg, size)
    if (source.cache_folder is not None) != cache:
        raise RuntimeError(f"cache at {size} expected {'present' if cache else 'unused'}: {source.cache_folder}")
    return LaneDataset(all_frames(lists), source, cfg.data.mean, cfg.data.std, None), cfg


def time_ours(ds: LaneDataset, batch: int, workers: int, repeat: int = 1) -> tuple[int, float]:
    """(images, seconds) for `repeat` rounds over the frames through one DataLoader, worker
    start-up included (training keeps one loader for a whole stage, so it is paid once)."""
    t0 = time.perf_counter()
    loader = paddle.io.DataLoader(ds, batch_sampler=_InOrder(len(ds) * repeat, batch), num_workers=workers,
                                  use_shared_memory=workers > 0, worker_init_fn=loader_worker_init)
    n = 0
    # a stalled loader is an error, not a hang
    for images, labels in watched(loader, LOADER_TIMEOUT, lambda k: f"loading with {workers} worker(s), batch {k}"):
        labels.astype("int64")  # finish as the trainer does: cast labels in the main process
        n += int(images.shape[0])
    return n, time.perf_counter() - t0


def time_winner(ds: LaneDataset, cfg: Config, size, repeat: int = 1) -> tuple[int, float]:
    """(images, seconds) for `repeat` rounds of the baseline generator over the same frames."""
    lut = ds.source.train_lut
    t0 = time.perf_counter()
    n = sum(1 for _ in winner_generator(ds.rows * repeat, size, cfg.data.crop_offset, lut, cfg.data.mean, cfg.data.std))
    return n, time.perf_counter() - t0


def labels_agree(ds: LaneDataset, cfg: Config, size) -> float:
    """Share of label pixels where ours and the baseline agree, on the first frame."""
    _, ours = ds.load(0)
    _, theirs = next(winner_generator(ds.rows[:1], size, cfg.data.crop_offset, ds.source.train_lut,
                                      cfg.data.mean, cfg.data.std))
    return float(np.mean(ours == theirs))


def bench_loading(lists: Path, args) -> dict:
    """Part 2: interleaved passes of the baseline generator and our loader (N and 0 workers)."""
    ds, cfg = loading_dataset(lists, args.load_size)
    cached, _ = loading_dataset(lists, args.load_size, cache=True)
    r = args.load_rounds
    kinds = {"winner": lambda: time_winner(ds, cfg, args.load_size, r),
             f"ours_w{args.load_workers}": lambda: time_ours(ds, args.load_batch, args.load_workers, r),
             "ours_w0": lambda: time_ours(ds, args.load_batch, 0, r),
             "cache_w0": lambda: time_ours(cached, args.load_batch, 0, r)}
    totals = {k: [0, 0.0] for k in kinds}
    names = list(kinds)
    for p in range(args.passes):
        for k in names[p % len(names):] + names[:p % len(names)]:  # rotate who goes first
            n, sec = kinds[k]()
            totals[k][0] += n
            totals[k][1] += sec
        print(f"  pass {p + 1}/{args.passes}: " + ", ".join(f"{k} {n / s:.2f} img/s" for k, (n, s) in totals.items()),
              flush=True)
    rates = {k: n / s for k, (n, s) in totals.items()}
    full = (int(ds.rows[0].get("width") or 3384), int(ds.rows[0].get("height") or 1710))
    return {"rates": rates, "frames": len(ds), "samples": totals["winner"][0],
            "agree": labels_agree(ds, cfg, args.load_size),
            "reduce": best_reduce(full, cfg.data.crop_offset, args.load_size)}


# ----------------------------------------------------------------------------- report
def row(name: str, value: str, note: str = "") -> str:
    """One aligned table line."""
    return f"  {name:<44}{value:>14}   {note}"


def report(args, train: dict, load: dict, deeplab: dict | None, two: dict) -> str:
    """The table and the RESULT line."""
    med_ours, med_bare = statistics.median(train["ours"]), statistics.median(train["bare"])
    pooled = (med_ours / med_bare - 1.0) * 100.0
    # paired by round: a load spike from other jobs during one run moves one ratio, not the result
    overhead = (statistics.median(train["ratios"]) - 1.0) * 100.0
    rates = load["rates"]
    w = f"ours_w{args.load_workers}"
    speedup = rates[w] / rates["winner"]
    share = statistics.median(train["shares"]) * 100.0
    model = args.model + (f" w{args.width}" if args.model == "lite" else f" {args.backbone}")
    size = f"{args.size[0]}x{args.size[1]}"
    lsize = f"{args.load_size[0]}x{args.load_size[1]}"
    lines = [
        "", f"1. step time, {model}, {size} batch {args.batch}, {args.workers} workers, cached real frames "
            f"({len(train['ours'])} / {len(train['bare'])} steps after warm-up, {args.rounds} interleaved rounds)",
        row("bare loop (median)", f"{med_bare * 1e3:.1f} ms"),
        row("Trainer.run (median)", f"{med_ours * 1e3:.1f} ms"),
        row("trainer overhead (ratio of pooled medians)", f"{pooled:+.1f} %"),
        row("trainer overhead (median per-round ratio)", f"{overhead:+.1f} %", "target <= 5 %"),
        row("per-round ratios trainer / bare", "", " ".join(f"{x:.2f}" for x in train["ratios"])),
        row("trainer p90 / bare p90", f"{np.percentile(train['ours'], 90) / np.percentile(train['bare'], 90):.2f}"),
        "", f"2. loading {lsize} from full-size real frames ({load['frames']} frames x {args.load_rounds} rounds x {args.passes} passes "
            f"= {load['samples']} samples each, JPEG reduce {load['reduce']})",
        row("winner generator, 1 thread", f"{rates['winner']:.2f} img/s"),
        row("ours DataLoader, 0 workers", f"{rates['ours_w0']:.2f} img/s",
            f"{rates['ours_w0'] / rates['winner']:.2f}x (per-frame speed)"),
        row(f"ours DataLoader, {args.load_workers} workers, batch {args.load_batch}", f"{rates[w]:.2f} img/s",
            f"{speedup:.2f}x  target >= 3x"),
        row("ours from prepare's cache, 0 workers", f"{rates['cache_w0']:.2f} img/s",
            f"{rates['cache_w0'] / rates['winner']:.2f}x (info: what training reads)"),
        row("label agreement ours vs winner (frame 0)", f"{load['agree'] * 100:.3f} %"),
        "", "3. data-wait share t_data / (t_data + t_compute), median over steps",
        row(f"{model} {size} batch {args.batch}", f"{share:.2f} %",
            f"max {max(train['shares']) * 100:.1f} %"),
    ]
    if deeplab:
        lines.append(row(f"deeplabv3p {args.backbone} os16 {size} batch {args.deeplab_batch}",
                         f"{statistics.median(deeplab['shares']) * 100:.2f} %",
                         f"step {statistics.median(deeplab['steps']):.2f} s, max {max(deeplab['shares']) * 100:.1f} %"))
    sizes = " -> ".join(f"{w}x{h}" for w, h in two["sizes"])
    lines += ["", f"4. two-stage run {sizes}, {args.stage_iters} steps per stage, batch {args.batch}, cached real frames, "
                  f"steady state ({args.stage_rounds} interleaved rounds)",
              row("0 loader workers", f"{two['w0']:.2f} img/s", " ".join(f"{x:.2f}" for x in two["rates"][0])),
              row("2 loader workers", f"{two['w2']:.2f} img/s", " ".join(f"{x:.2f}" for x in two["rates"][2])),
              row("ratio 2 / 0 workers", f"{two['w2'] / two['w0']:.2f}x")]
    lines += ["", f"RESULT trainer_overhead={overhead:.1f}% loader_speedup={speedup:.2f}x data_wait_share={share:.2f}% "
                  f"two_stage_workers2_vs_0={two['w2'] / two['w0']:.2f}x"]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Prepare the real frames into a temp folder, run the three parts, print the table."""
    args = parse_args(argv)
    require_real_data(args.data)
    # SIGTERM unwinds like an error, so the temp folder below is removed when the run is killed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmpdir:
        tmp = Path(tmpdir)
        print(f"preparing {args.data} into {tmp} (cache at {args.size} and {args.load_size})", flush=True)
        lists = prepare_lists(args.data, tmp, [args.size, args.load_size])
        print("part 1: Trainer vs bare loop", flush=True)
        train = bench_trainer(lists, tmp, args)
        print("part 2: loading", flush=True)
        load = bench_loading(lists, args)
        deeplab = None
        if args.deeplab_iters:
            print("part 3: DeepLabV3P data wait", flush=True)
            deeplab = bench_deeplab_wait(lists, tmp, args)
        print("part 4: two stages, 2 vs 0 loader workers", flush=True)
        two = bench_two_stages(lists, tmp, args)
        print(report(args, train, load, deeplab, two))
    print(f"(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
