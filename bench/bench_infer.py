"""Inference-side benchmark on the 30 real frames, ours and the baseline in one run:

1. the scorer (LUTs + one packed 256-bin histogram per frame, threaded reading) vs a straightforward
   per-class mask loop (np.isin per class, intersection and union sums);
2. writing submissions (upsample 8x512x1536 probabilities to 3384x1020, argmax, decode,
   PNG) in images/s with 1 and 2 writer threads;
3. per-image inference time without TTA, with flip, and with flip + 3 scales;
4. the resolution-ceiling table (perfect model through each stage size and back) and
   the best output shift, against nearest-neighbour both ways (the winners' path); and the
   label half: a model reproducing its training labels (each label resize rule) exactly.

    .venv/bin/python bench/bench_infer.py [--frames 30] [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "apollo_dev"

from paddle_lane.core.io_utils import atomic_write_png  # noqa: E402
from paddle_lane.core.label_io import read_image, read_label  # noqa: E402
from paddle_lane.core.labels import ignore_in_eval_ids, load_scheme  # noqa: E402
from paddle_lane.evaluation.scorer import score_folders  # noqa: E402
from paddle_lane.inference.predictor import probs_to_ids  # noqa: E402


def real_pairs(frames: int) -> pd.DataFrame:
    if not (REAL / "pairs.csv").exists():
        sys.exit(f"real data not found at {REAL}: this benchmark needs the 30 real frames")
    df = pd.read_csv(REAL / "pairs.csv").head(frames)
    for col in ("image", "label", "label_alt"):
        df[col] = [str(REAL / p) for p in df[col]]
    return df


def link_folder(paths, folder: Path) -> Path:
    """Symlinks named by basename (the scorer pairs by name); never copies."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (folder / Path(p).name).symlink_to(p)
    return folder


def baseline_score(pairs, scheme) -> np.ndarray:
    """The usual scorer: per class, boolean masks of its ids on both sides, summed.
    Same mapping as ours: a predicted id counts for its category; GT ignore ids excluded."""
    ignore = np.array(sorted(ignore_in_eval_ids() | {249, 255}))
    pred_lut, gt_lut = scheme.pred_lut(), scheme.eval_lut()
    pred_ids = [np.flatnonzero(pred_lut == c) for c in range(scheme.num_classes)]
    gt_ids = [np.flatnonzero(gt_lut == c) for c in range(scheme.num_classes)]
    inter, union = np.zeros(scheme.num_classes), np.zeros(scheme.num_classes)
    for pred_path, gt_path in pairs:
        pred, gt = read_label(pred_path), read_label(gt_path)
        valid = ~np.isin(gt, ignore)
        for c in range(scheme.num_classes):
            p, g = np.isin(pred, pred_ids[c]), np.isin(gt, gt_ids[c])
            inter[c] += (p & g & valid).sum()
            union[c] += ((p | g) & valid).sum()
    return inter / np.maximum(union, 1)


def write_predictions(labels, folder: Path) -> list[str]:
    """Imperfect gray predictions: each label shifted 3 px right and down (as a submission)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in labels:
        path = folder / Path(p).name
        atomic_write_png(path, np.roll(read_label(p), (3, 3), axis=(0, 1)))
        out.append(str(path))
    return out


def bench_scorer(df, tmp: Path, scheme, repeats: int) -> dict:
    preds = write_predictions(df["label"], tmp / "pred")
    pred_dir = tmp / "pred"
    gt_dir = link_folder(df["label"], tmp / "gt")
    ratios: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):  # interleaved: a load spike moves one round's ratio, not the summary
        t = time.perf_counter()
        base_iou = baseline_score(list(zip(preds, df["label"])), scheme)
        t_base = time.perf_counter() - t
        for workers in (1, 2):
            t = time.perf_counter()
            rep = score_folders(pred_dir, gt_dir, scheme, workers=workers, progress=False)
            ratios[workers].append(t_base / (time.perf_counter() - t))
        ours = np.array([r["iou"] for r in rep.results["per_class"]], dtype=float)
        present = ~np.isnan(ours)
        assert np.allclose(ours[present], base_iou[present]), (ours, base_iou)
    return {"baseline_s": t_base, "ratios_1w": ratios[1], "ratios_2w": ratios[2]}


def bench_writing(tmp: Path, scheme, n_images: int) -> dict:
    """Post-processing + PNG write throughput with 1 and 2 writer threads."""
    rng = np.random.default_rng(0)
    probs = rng.random((scheme.num_classes, 512, 1536), dtype=np.float32)

    def write(i, folder):
        ids = probs_to_ids(probs, 690, (3384, 1710), scheme)
        atomic_write_png(folder / f"{i}_bin.png", ids)

    rates = {}
    for workers in (1, 2):
        folder = tmp / f"write{workers}"
        folder.mkdir()
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: write(i, folder), range(n_images)))
        rates[workers] = n_images / (time.perf_counter() - t)
    return rates


def bench_tta(df, reps: int, model: str, size) -> dict:
    """Seconds per image for no TTA, flip, and flip + scales, on a real full-size frame."""
    from paddle_lane.config import load_config
    from paddle_lane.inference.predictor import Predictor
    from paddle_lane.models import build_model
    cfg = load_config(ROOT / "configs" / "demo_tiny.yml",
                      ["data.crop_offset=690", "data.frame_height=1710", f"model.name={model}", "model.backbone=ResNet18_vd",
                       "model.output_stride=16", "model.width=16",
                       f"stages=[{{width: {size[0]}, height: {size[1]}, batch_size: 1, iters: 1, lr: 0.001}}]"])
    net = build_model(cfg.model, 8)
    net.eval()
    rgb = read_image(df["image"].iloc[0])
    out = {}
    for name, flip, scales in (("none", False, [1.0]), ("flip", True, [1.0]),
                               ("flip+0.75,1,1.25", True, [0.75, 1.0, 1.25])):
        pred = Predictor(cfg, models=[(net, tuple(size))], flip=flip, scales=scales, device="cpu")
        pred.predict_probs(rgb)  # warm-up
        t = time.perf_counter()
        for _ in range(reps):
            pred.predict_probs(rgb)
        out[name] = (time.perf_counter() - t) / reps
    return out


def bench_ceiling(df, frames: int) -> list[dict]:
    from paddle_lane.inference.alignment import MODES, resolution_ceiling
    labels = list(df["label"].head(frames))
    return [resolution_ceiling(labels, size, 690, range(-4, 5), mode)
            for size in ((768, 256), (1024, 384), (1536, 512)) for mode in MODES]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--write-images", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="lite", choices=["lite", "deeplabv3p"])
    ap.add_argument("--quick", action="store_true", help="fewer frames and repetitions (~1 min)")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.write_images, args.reps = 10, 4, 1
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    scheme = load_scheme("apollo8")
    df = real_pairs(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sc = bench_scorer(df, tmp, scheme, args.reps)
        wr = bench_writing(tmp, scheme, args.write_images)
    tta = bench_tta(df, args.reps, args.model, (768, 256))
    ceil = bench_ceiling(df, args.frames)

    n = len(df)
    print(f"\n1. scorer on {n} real full-size pairs")
    print(f"   per-class mask loop : {sc['baseline_s']:.2f} s ({1000 * sc['baseline_s'] / n:.0f} ms/frame, last round)")
    for w in (1, 2):
        r = sc[f"ratios_{w}w"]
        print(f"   ours, {w} worker(s)  : median {np.median(r):.1f}x, range {min(r):.1f}-{max(r):.1f}x "
              f"over {len(r)} interleaved rounds")
    print("\n2. writing submissions (upsample 8x512x1536 -> 3384x1020, argmax, decode, PNG)")
    print(f"   1 writer: {wr[1]:.2f} img/s   2 writers: {wr[2]:.2f} img/s   ratio {wr[2] / wr[1]:.2f}x")
    print(f"\n3. inference per image ({args.model} at 768x256, full-size real frame, CPU)")
    for k, v in tta.items():
        print(f"   {k:<18}: {1000 * v:7.0f} ms  ({v / tta['none']:.2f}x of no TTA)")
    from paddle_lane.inference.alignment import format_table
    print(f"\n4. resolution ceiling on {n} real labels (perfect model through each size and back)")
    print(format_table(ceil))
    c1536 = next(c for c in ceil if c["size"] == [1536, 512] and c["mode"] == "area")
    l1536 = next(c for c in ceil if c["size"] == [1536, 512] and c["mode"] == "label-nearest")
    print(f"\nRESULT scorer_speedup_1w={np.median(sc['ratios_1w']):.1f}x ({min(sc['ratios_1w']):.1f}-{max(sc['ratios_1w']):.1f}) "
          f"scorer_speedup_2w={np.median(sc['ratios_2w']):.1f}x ({min(sc['ratios_2w']):.1f}-{max(sc['ratios_2w']):.1f}) "
          f"write_2w_vs_1w={wr[2] / wr[1]:.2f}x flip_cost={tta['flip'] / tta['none']:.2f}x "
          f"ceiling_1536x512={c1536['miou']:.4f} best_shift=({c1536['best_dx']},{c1536['best_dy']}) "
          f"label_ceiling_1536x512={l1536['miou']:.4f} best_shift=({l1536['best_dx']},{l1536['best_dy']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
