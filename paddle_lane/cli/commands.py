"""The infer / validate / video / evaluate verbs as plain functions: arguments in, exit code
out, a short report printed. The CLI only parses arguments and calls these."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from paddle_lane.config import CONFIG_FILE, load_config
from paddle_lane.core.errors import UserError
from paddle_lane.inference.inputs import images_from

SUBMISSION_WORKERS = 2  # threads that up-sample, encode and write while the model runs


# ----------------------------------------------------------------------------- argument helpers
def split_list(text: str | None) -> list[str]:
    """'a,b , c' -> ['a', 'b', 'c'] (None or '' -> [])."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_floats(text: str | None, what: str) -> list[float] | None:
    """'0.75,1,1.25' -> [0.75, 1.0, 1.25]; None stays None; a bad number names the option."""
    if text is None or not str(text).strip():
        return None
    try:
        return [float(t) for t in split_list(str(text))]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _dir_or_csv(path: str) -> tuple[str | None, str | None]:
    """(folder, None) or (None, csv file) for a path that is one of the two."""
    if not path:
        raise ValueError("give a folder of images or a list CSV")
    p = Path(path)
    if p.is_dir():
        return str(p), None
    if p.is_file() and p.suffix.lower() == ".csv":
        return None, str(p)
    raise FileNotFoundError(f"not a folder or a list CSV: {path}")


def _print_problems(problems: Sequence[str], what: str) -> None:
    if not problems:
        print(f"{what}: OK")
        return
    print(f"{what}: {len(problems)} problem(s)", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)


def describe(predictor) -> str:
    """TTA and device, then one line per member: model, size, weight and the config it came from."""
    lines = [f"models: {len(predictor.members)}; TTA: flip {'on' if predictor.flip else 'off'}, "
             f"scales {predictor.scales}; device {predictor.device}"]
    lines += [f"  {m.name}: {m.arch} {m.size[0]}x{m.size[1]}, w={m.weight:.2f}, {m.origin}" for m in predictor.members]
    return "\n".join(lines)


def export_dir_of(checkpoints: str) -> Path | None:
    """The export folder when --model names one (deploy.yml inside), else None."""
    from paddle_lane.inference.export_folder import is_export_dir
    ckpts = split_list(checkpoints)
    if any(is_export_dir(c) for c in ckpts):
        if len(ckpts) != 1:
            raise ValueError(f"--model {checkpoints!r}: an export folder comes alone (an exported ensemble "
                             "is made by `paddle-lane export` from several checkpoints)")
        return Path(ckpts[0])
    return None


def config_for(config: str | None, opts: list[str] | None, checkpoints: str):
    """--config, else the config.yml inside an export folder given as --model."""
    export = export_dir_of(checkpoints)
    if config is None and export is None:
        raise ValueError("--config is required unless --model is an export folder (made by `paddle-lane export`)")
    return load_config(config or export / CONFIG_FILE, opts)


def _predictor(cfg, checkpoints: str, weights: str | None = None, flip: bool | None = None,
               scales: str | None = None, device: str | None = None, member_configs: str | None = None,
               backend: str | None = None):
    from paddle_lane.inference.predictor import Predictor
    export = export_dir_of(checkpoints)
    if export is not None:
        from paddle_lane.inference.backends import export_predictor
        if weights or member_configs:
            raise ValueError("--weights / --member-configs: an export folder has its members and weights built in")
        return export_predictor(export, backend, flip=flip, scales=parse_floats(scales, "scales"), device=device,
                                cfg=cfg)
    ckpts = split_list(checkpoints)
    if not ckpts:
        raise ValueError("no checkpoint given (comma-separated checkpoint folders or .pdparams files)")
    configs = split_list(member_configs) or None
    if configs is not None and len(configs) != len(ckpts):
        raise ValueError(f"--member-configs: {len(configs)} config(s) for {len(ckpts)} checkpoint(s)")
    if backend not in (None, "dygraph"):
        return _cached_predictor(cfg, ckpts, weights, flip, scales, device, configs, backend)
    return Predictor(cfg, ckpts, parse_floats(weights, "weights"), flip=flip,
                     scales=parse_floats(scales, "scales"), device=device, member_configs=configs)


def _cached_predictor(cfg, ckpts: list[str], weights, flip, scales, device, configs, backend: str):
    """Checkpoints on an exported backend: exported once into the cache (deploy/cache.py), then run as an
    export folder with this command's TTA; members keep the checkpoint paths given here."""
    from paddle_lane.deploy.cache import cached_export
    from paddle_lane.inference.backends import export_predictor
    folder = cached_export(cfg, ckpts, parse_floats(weights, "weights"), configs, backend)
    predictor = export_predictor(folder, backend, flip=cfg.infer.flip if flip is None else flip,
                                 scales=parse_floats(scales, "scales") or cfg.infer.scales, device=device, cfg=cfg)
    for member, ckpt in zip(predictor.members, ckpts):
        member.name = ckpt
    return predictor


# ----------------------------------------------------------------------------- verbs
def run_infer(config: str | None, opts: list[str] | None, checkpoints: str, weights: str | None,
              images_dir: str | None, list_csv: str | None, out: str, tta_flip: bool | None = None,
              scales: str | None = None, overlay: bool = False, no_zip: bool = False,
              device: str | None = None, overwrite: bool = False, member_configs: str | None = None,
              backend: str | None = None, shard: tuple[int, int] | None = None) -> int:
    """Predict a folder or list into a submission, then validate it; 0 when complete and valid.
    Each checkpoint is built from its run's config.yml, or from `member_configs` (comma-separated,
    one per checkpoint) when given; an export folder as `checkpoints` runs on `backend`. The
    folder's manifest must match this recipe to resume it (see infer/manifest.py).
    With shard=(rank, ranks) only every ranks-th image from rank is predicted, without zip or
    validation (finish_sharded does those once every rank is done)."""
    from paddle_lane.inference.manifest import build_manifest, claim_folder
    from paddle_lane.inference.submission import format_summary, write_submission
    cfg = config_for(config, opts, checkpoints)
    images = images_from(images_dir, list_csv, exclude=[out])
    predictor = _predictor(cfg, checkpoints, weights, tta_flip, scales, device, member_configs, backend)
    rank, ranks = shard or (0, 1)
    if rank == 0:
        print(describe(predictor))
    print(claim_folder(Path(out), build_manifest(predictor, cfg), overwrite and rank == 0))
    mine = images[rank::ranks]
    summary = write_submission(predictor, mine, out, cfg.infer.name_suffix, overlay=overlay,
                               zip_output=not no_zip and ranks == 1, workers=SUBMISSION_WORKERS, progress=rank == 0)
    print((f"rank {rank}/{ranks}: " if ranks > 1 else "") + format_summary(summary))
    if ranks > 1:
        return 1 if summary["failed"] else 0
    return _validated(out, images, cfg, failed=bool(summary["failed"]))


def _validated(out: str, images, cfg, failed: bool) -> int:
    from paddle_lane.inference.submission import validate_submission
    problems = validate_submission(out, [path for _, path in images], cfg.infer.name_suffix, cfg.data.scheme)
    _print_problems(problems, "validation")
    return 0 if not problems and not failed else 1


def finish_sharded(config: str | None, opts, checkpoints: str, images_dir, list_csv, out: str, no_zip: bool,
                   ranks_rc: int) -> int:
    """After every rank of a sharded infer: the zip of the whole folder and one validation."""
    from paddle_lane.inference.submission import output_name, write_zip, zip_path_for
    cfg = config_for(config, opts, checkpoints)
    images = images_from(images_dir, list_csv, exclude=[out])
    outs = [Path(out) / output_name(path, cfg.infer.name_suffix) for _, path in images]
    if not no_zip:
        print(f"zip: {write_zip([o for o in outs if o.is_file()], zip_path_for(out))}")
    rc = _validated(out, images, cfg, failed=ranks_rc != 0)
    return rc or (1 if ranks_rc else 0)


def run_check_submission(out: str, images: str, config: str | None = None, opts: list[str] | None = None) -> int:
    """Check a submission folder against the test images (a folder or a list CSV); 0 when no problem."""
    from paddle_lane.inference.submission import validate_submission
    cfg = load_config(config, opts)
    listed = images_from(*_dir_or_csv(images))
    problems = validate_submission(out, [path for _, path in listed], cfg.infer.name_suffix, cfg.data.scheme)
    _print_problems(problems, f"validation of {out} ({len(listed)} images expected)")
    return 1 if problems else 0


def run_video(config: str | None, opts: list[str] | None, checkpoints: str, input: str, out: str,
              device: str | None = None, every: int = 1, backend: str | None = None) -> int:
    """Write an overlay video with the measured frames per second on each frame."""
    from paddle_lane.inference.video import annotate_video
    if not Path(input).is_file():
        raise FileNotFoundError(f"video not found: {input}")
    cfg = config_for(config, opts, checkpoints)
    predictor = _predictor(cfg, checkpoints, device=device, backend=backend)
    print(describe(predictor))
    res = annotate_video(predictor, input, out, every=every)
    print(f"video: {res['frames']} frames ({res['predicted']} predicted) -> {res['output']} "
          f"at {res['fps']:.2f} frames/s")
    return 0


def _label_links(list_csv: str, folder: Path) -> None:
    """Symlink every label of a list into folder under its own file name (names must be unique)."""
    from paddle_lane.data.dataset import read_list
    df = read_list(list_csv, need_labels=True)
    seen: dict[str, str] = {}
    for label in df["label"].astype(str):
        name = Path(label).name
        if name in seen:
            raise ValueError(f"{list_csv}: two labels share the file name {name}: {seen[name]} and {label}")
        if not Path(label).is_file():
            raise FileNotFoundError(f"{list_csv}: label not found: {label}")
        seen[name] = label
        os.symlink(os.path.abspath(label), folder / name)


def _check_pred_dir(pred_dir: str) -> None:
    """A prediction folder that is missing or holds no *.png at all is a user error, not a score of 0."""
    from paddle_lane.core.errors import UserError
    if not Path(pred_dir).is_dir():
        raise UserError(f"prediction folder not found: {pred_dir}")
    if next(Path(pred_dir).rglob("*.png"), None) is None:
        raise UserError(f"no *.png predictions under {pred_dir}")


def _gaps_line(report) -> str | None:
    """One line counting the predictions scored as background, by kind; None when there are none."""
    gaps = {kind: n for kind, n in report.prediction_gaps().items() if n}
    if not gaps:
        return None
    kinds = ", ".join(f"{n} {kind}" for kind, n in gaps.items())
    return (f"{sum(gaps.values())} of {report.counts['gt_files']} predictions scored as all background "
            f"({kinds}; listed above and in scores.json)")


def _check_apart(pred_dir: str, gt_dir, out: str | None) -> None:
    """Predictions scored against themselves score 1.0, and scores written into the ground-truth
    tree mix with labels: a prediction folder equal to or inside --gt, or a report folder inside
    it, is refused."""
    gt_root = Path(gt_dir).resolve()
    for name, folder in (("--pred", pred_dir), ("--report", out or pred_dir)):
        path = Path(folder).resolve()
        if path == gt_root or gt_root in path.parents:
            raise UserError(f"{name} {folder} is {'the' if path == gt_root else 'inside the'} ground-truth folder "
                            f"--gt {gt_dir}: predictions must be scored against labels they are not, and nothing "
                            "is written into --gt; give another folder")


def run_evaluate(pred_dir: str, gt: str, scheme: str = "apollo8", workers: int = 2, out: str | None = None,
                 allow_partial: bool = False) -> int:
    """Score predictions against a label folder or the labels of a list CSV; print the table and
    write scores.csv/json to `out` (default: the prediction folder). 1 when a prediction is
    missing, unreadable or the wrong size, unless allow_partial; else 0."""
    from paddle_lane.evaluation.scorer import score_folders
    _check_pred_dir(pred_dir)
    gt_dir, list_csv = _dir_or_csv(gt)
    if gt_dir is not None:
        _check_apart(pred_dir, gt_dir, out)
    if list_csv:
        with tempfile.TemporaryDirectory(prefix="paddle_lane_gt_") as tmp:
            _label_links(list_csv, Path(tmp))
            report = score_folders(pred_dir, tmp, scheme, workers=workers)
        report.gt_dir = str(list_csv)
    else:
        report = score_folders(pred_dir, gt_dir, scheme, workers=workers)
    print(report.table())
    paths = report.write(out or pred_dir)
    print(f"scores: {paths['csv']}, {paths['json']}")
    gaps = _gaps_line(report)
    if gaps is None:
        return 0
    if allow_partial:
        print(f"partial submission accepted (--allow-partial): {gaps}")
        return 0
    print(f"error: incomplete submission: {gaps}; pass --allow-partial to accept it", file=sys.stderr)
    return 1
