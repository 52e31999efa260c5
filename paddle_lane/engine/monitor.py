"""Training monitoring: VisualDL scalars (loss terms, LR, images/s, data-wait vs compute),
per-class validation metrics, and an image grid at each validation."""
from __future__ import annotations

import math
from pathlib import Path


from paddle_lane.core.visual import comparison_strip


def global_iter(stage_iters: list[int], stage: int, it: int) -> int:
    """One continuous iteration count across stages: the iterations of earlier stages plus `it`."""
    return sum(stage_iters[:stage]) + it


class Monitor:
    """Writes to VisualDL on rank 0; a no-op elsewhere. Every chart's x axis is the global
    iteration (continuous across stages); `train/stage` marks where each stage runs."""

    def __init__(self, logdir: str | Path, stage_iters: list[int], enabled: bool = True, quiet: bool = False):
        self.enabled, self.quiet, self.writer = enabled, quiet, None
        self.stage_iters = list(stage_iters)
        if enabled:
            from visualdl import LogWriter
            Path(logdir).mkdir(parents=True, exist_ok=True)
            self.writer = LogWriter(logdir=str(logdir))

    def step(self, stage: int, it: int) -> int:
        return global_iter(self.stage_iters, stage, it)

    def train_step(self, stage, it, loss, terms: dict, lr, ips, t_data, t_compute) -> None:
        if not self.writer:
            return
        step = self.step(stage, it)
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        w.add_scalar("train/stage", stage, step)
        for name, value in terms.items():
            w.add_scalar(f"train/loss_{name}", value, step)
        w.add_scalar("train/lr", lr, step)
        w.add_scalar("train/images_per_s", ips, step)
        w.add_scalar("time/data_wait_s", t_data, step)
        w.add_scalar("time/compute_s", t_compute, step)
        w.add_scalar("time/data_wait_share", t_data / max(t_data + t_compute, 1e-9), step)

    def validation(self, stage, it, result: dict, table: str, shown, data_cfg, scheme) -> None:
        step = self.step(stage, it)
        if not self.quiet:
            print(f"\n[stage {stage} iter {it}] validation\n{table}")
        if not self.writer:
            return
        w = self.writer
        for key in ("miou", "miou_lanes", "pixel_accuracy"):
            v = result.get(key)
            if v is not None and math.isfinite(v):
                w.add_scalar(f"val/{key}", v, step)
        for row in result["per_class"]:
            if row["iou"] is not None and math.isfinite(row["iou"]):
                w.add_scalar(f"val_iou/{row['name']}", row["iou"], step)
        palette = scheme.palette()
        for k, (rgb, gt, pred) in enumerate(shown):
            w.add_image(f"val_images/{k}", comparison_strip(rgb, gt, pred, palette), step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
