"""`demo`: the whole main job on embedded synthetic data, on CPU in a few minutes:
synthetic Apollo-layout frames -> prepare -> train (configs/demo_tiny.yml) -> infer
(with flip TTA) on the validation frames -> evaluate at full size."""
from __future__ import annotations

import time
from pathlib import Path

from paddle_lane.config import load_config

ROOT = Path(__file__).resolve().parents[2]  # the checkout: paddle_lane/cli/demo.py is two folders down
DEMO_CONFIG = ROOT / "configs" / "demo_tiny.yml"


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def run_demo(out: str | Path = "demo_out", config: str | Path = DEMO_CONFIG, opts: list[str] | None = None) -> int:
    from paddle_lane.cli.commands import run_evaluate, run_infer
    from paddle_lane.engine.trainer import Trainer
    from paddle_lane.prepare.pipeline import prepare, summary_table
    from paddle_lane.prepare.synth import make_dataset

    if not Path(config).is_file():
        from paddle_lane.core.errors import UserError
        raise UserError(f"demo: config {config} not found (the demo's configs/ folder is part of a source checkout, "
                        "not of the installed package); pass --config FILE")
    t0 = time.time()
    out = Path(out).resolve()
    raw, lists, run_dir, sub = out / "raw", out / "prepare", out / "run", out / "submission"
    overrides = [f"data.lists_dir={lists}", f"train.output_dir={run_dir}", *(opts or [])]
    cfg = load_config(config, overrides)

    _banner("1/5 synthetic data (Apollo layout, 846x428)")
    if not (raw / "Gray_Label").exists():
        info = make_dataset(raw, roads=("Road02", "Road03"), records_per_road=3, frames_per_record=3,
                            width=846, height=428, seed=0, test_frames=4)
        print(f"{len(info['pairs'])} labelled frames, {len(info['test_images'])} test images -> {raw}")
    else:
        print(f"reusing {raw}")

    _banner("2/5 prepare")
    cfg.prepare.cache = True
    print(summary_table(prepare(raw, lists, cfg, test_dir=raw / "TestSet")))

    _banner("3/5 train (" + " -> ".join(f"{s.width}x{s.height}" for s in cfg.stages) + ")")
    for r in Trainer(cfg, force=True).run():  # a fresh demo run; an earlier one is moved aside, not deleted
        print(f"stage {r.stage}: best validation mIoU {r.best_miou:.4f} at iter {r.best_iter}")

    _banner("4/5 infer on the validation frames (flip TTA), full-size submission")
    best = run_dir / f"stage{len(cfg.stages) - 1}" / "best"
    rc = run_infer(str(config), overrides, checkpoints=str(best), weights=None, images_dir=None,
                   list_csv=str(lists / "val.csv"), out=str(sub), tta_flip=True, scales=None,
                   overlay=True, no_zip=False, device=None, overwrite=True)
    if rc != 0:
        return rc

    _banner("5/5 evaluate (leaderboard metric at full size)")
    rc = run_evaluate(str(sub), str(lists / "val.csv"), cfg.data.scheme, 2, str(out / "scores"))
    print(f"\ndemo finished in {time.time() - t0:.0f} s; outputs in {out}")
    print(f"VisualDL: ./run.sh visualdl --logdir {run_dir / 'vdl'}")
    return rc
