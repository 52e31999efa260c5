"""Training monitoring: VisualDL scalars (loss terms, LR, images/s, data-wait vs compute),
per-class validation metrics, and an image grid at each validation."""
from __future__ import annotations

import math
from pathlib import Path


from paddle_lane.visual import comparison_strip


class Monitor:
    """Writes to VisualDL on rank 0; a no-op elsewhere."""

    def __init__(self, logdir: str | Path, enabled: bool = True, quiet: bool = False):
        self.enabled, self.quiet, self.writer = enabled, quiet, None
        if enabled:
            from visualdl import LogWriter
            Path(logdir).mkdir(parents=True, exist_ok=True)
            self.writer = LogWriter(logdir=str(logdir))

    def _step(self, stage: int, it: int) -> int:
        return stage * 10_000_000 + it  # one monotonic axis across stages

    def train_step(self, stage, it, loss, terms: dict, lr, ips, t_data, t_compute) -> None:
        if not self.writer:
            return
        step = self._step(stage, it)
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        for name, value in terms.items():
            w.add_scalar(f"train/loss_{name}", value, step)
        w.add_scalar("train/lr", lr, step)
        w.add_scalar("train/images_per_s", ips, step)
        w.add_scalar("time/data_wait_s", t_data, step)
        w.add_scalar("time/compute_s", t_compute, step)
        w.add_scalar("time/data_wait_share", t_data / max(t_data + t_compute, 1e-9), step)

    def validation(self, stage, it, result: dict, table: str, shown, data_cfg, scheme) -> None:
        step = self._step(stage, it)
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
