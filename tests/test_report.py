"""`report` (self-contained HTML, checked in a real headless Chromium) and `compare` (paired
bootstrap), against hand-made confusions and synthetic submissions with known errors."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddle_lane.cli import main as cli
from paddle_lane.evaluation import analysis as an
from paddle_lane.evaluation.compare import bootstrap, resampled_iou
from paddle_lane.evaluation.report import build_report, error_map
from paddle_lane.prepare.synth import make_dataset


# ----------------------------------------------------------------------------- analysis
@pytest.mark.parametrize("path,origin", [
    ("D/Gray_Label/Label_road02/Label/Record001/Camera 5/170927_063811892_Camera_5_bin.png",
     {"road": "road02", "record": "Record001", "camera": "Camera 5"}),
    ("D/Road04/Labels_road04/Label/Record012/Camera 6/x_Camera_6_bin.png",
     {"road": "road04", "record": "Record012", "camera": "Camera 6"}),
    ("flat/171206_025743_Camera_5_bin.png", {"road": "?", "record": "?", "camera": "Camera 5"}),
])
def test_frame_origin(path, origin):
    assert an.frame_origin(path) == origin


def test_group_scores_are_set_level_per_group():
    frames = [{"gt": "Label_road02/Record001/Camera 5/a.png"}, {"gt": "Label_road02/Record001/Camera 6/b.png"},
              {"gt": "Label_road03/Record002/Camera 5/c.png"}]
    confs = np.array([[[9, 1], [0, 0]], [[0, 0], [1, 3]], [[5, 0], [0, 5]]])
    rows = an.group_scores(frames, confs, "road", [1])
    # road02: [[9, 1], [1, 3]] -> IoU 9/11 and 3/5; road03 perfect
    assert rows[0] == {"road": "road02", "frames": 2, "miou": pytest.approx((9 / 11 + 3 / 5) / 2),
                       "miou_lanes": pytest.approx(3 / 5)}
    assert rows[1]["road"] == "road03" and rows[1]["miou"] == 1.0
    assert [r["camera"] for r in an.group_scores(frames, confs, "camera", [1])] == ["Camera 5", "Camera 6"]


def test_error_map_colours():
    base = np.full((1, 5, 3), 100, np.uint8)
    gt = np.array([[0, 1, 0, 2, 255]], np.uint8)
    pred = np.array([[0, 0, 3, 1, 4]], np.uint8)
    out = error_map(base, gt, pred)
    assert out[0, 0].tolist() == [45, 45, 45]                 # right: dimmed image
    assert out[0, 1].tolist() == [230, 40, 40]                # missed
    assert out[0, 2].tolist() == [40, 110, 240]               # false
    assert out[0, 3].tolist() == [250, 210, 0]                # confused
    assert out[0, 4].tolist() == [45, 45, 45]                 # ignored ground truth: not an error


# ----------------------------------------------------------------------------- compare
def random_confs(rng, frames=40, n=4):
    confs = rng.integers(0, 50, size=(frames, n, n))
    confs[:, np.arange(n), np.arange(n)] += 200
    return confs


def test_resampled_iou_equals_a_loop_over_frames():
    rng = np.random.default_rng(0)
    confs = random_confs(rng)
    weights = rng.multinomial(40, np.full(40, 1 / 40), size=7).astype(float)
    got = resampled_iou(confs, weights)
    for r in range(7):
        total = sum(weights[r, f] * confs[f] for f in range(40))
        tp = np.diag(total)
        np.testing.assert_allclose(got[r], tp / (total.sum(0) + total.sum(1) - tp))


def test_identical_submissions_give_zero_with_a_zero_width_interval():
    confs = random_confs(np.random.default_rng(1))
    res = bootstrap(confs, confs.copy(), 300, seed=3)
    for key in ("miou", "miou_lanes"):
        assert res[key]["delta"] == 0 and res[key]["mean_delta"] == 0 and res[key]["ci95"] == [0, 0]
        assert res[key]["p_b_better"] == 0
    assert all(c["ci95"] == [0, 0] for c in res["per_class"])


def test_better_on_every_frame_gives_a_positive_interval_and_seeds_repeat():
    rng = np.random.default_rng(2)
    a = random_confs(rng)
    b = a.copy()
    moved = np.minimum(b[:, 1, 0], 20)                       # B recovers some missed class-1 pixels
    b[:, 1, 0] -= moved
    b[:, 1, 1] += moved
    res = bootstrap(a, b, 500, seed=7)
    assert res["miou"]["delta"] > 0 and res["miou"]["ci95"][0] > 0 and res["miou"]["p_b_better"] == 1.0
    assert res["per_class"][1]["ci95"][0] > 0
    assert res == bootstrap(a, b, 500, seed=7)
    assert res["miou"]["ci95"] != bootstrap(a, b, 500, seed=8)["miou"]["ci95"]
    assert res["frames"] == 40 and res["resamples"] == 500


# ----------------------------------------------------------------------------- report on files
@pytest.fixture(scope="module")
def submissions(tmp_path_factory):
    """Ground truth, a perfect submission, and one whose first frame is all background."""
    root = tmp_path_factory.mktemp("report")
    info = make_dataset(root / "DATA", roads=("Road02", "Road03"), records_per_road=1, frames_per_record=2,
                        cameras=("Camera 5",), width=384, height=192, seed=21)
    perfect, flawed = root / "perfect", root / "flawed"
    perfect.mkdir()
    flawed.mkdir()
    labels = sorted(p["label"] for p in info["pairs"])
    for i, lab in enumerate(labels):
        shutil.copy(lab, perfect / Path(lab).name)
        ids = np.asarray(Image.open(lab))
        Image.fromarray(np.zeros_like(ids) if i == 0 else ids).save(flawed / Path(lab).name)
    return {"root": root, "gt": root / "DATA", "perfect": perfect, "flawed": flawed, "labels": labels}


def test_report_html_is_self_contained_and_names_the_worst_frame(submissions, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    per_class = [{"name": f"c{i}", "iou": 0.5} for i in range(8)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(
        {"stage": 0, "iter": it, "global_iter": it, "miou": 0.3 + it / 1000, "train_miou": 0.6, "per_class": per_class})
        for it in (100, 200)) + "\n")
    (run / "train_log.jsonl").write_text("\n".join(json.dumps(
        {"stage": 0, "iter": it, "global_iter": it, "loss": 1 / it, "terms": {"ce": 1 / it}, "lr": 0.01})
        for it in (20, 40, 60)) + "\n")
    out = tmp_path / "r" / "report.html"
    res = build_report(str(submissions["flawed"]), str(submissions["gt"]), str(out), images=str(submissions["gt"]),
                       run=str(run), k=2)
    page = out.read_text()
    assert res["frames"] == 4 and res["figures"] == 8      # bars, heat map, frequency, histogram, breakdown, 2 worst, curves
    assert page.count('src="data:image/png;base64,') == 8
    assert "http://" not in page and "https://" not in page   # opens offline
    first_worst = page.index("alt=\"worst frame ")
    assert page[first_worst:].startswith(f'alt="worst frame {Path(submissions["labels"][0]).name}"')
    assert "gap 0.098" in page or "gap 0.1" in page          # train 0.6 vs val 0.5 at the last validation
    assert "road02" in page and "road03" in page
    perfect = build_report(str(submissions["perfect"]), str(submissions["gt"]), str(tmp_path / "p.html"), k=1)
    assert perfect["miou"] == 1.0 and perfect["figures"] == 6


def test_report_in_a_real_browser(submissions, tmp_path):
    """Headless Chromium opens the file offline; every figure decodes; a screenshot is saved."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (./run.sh test installs Debian's chromium when run as root with apt)")
    out = tmp_path / "report.html"
    build_report(str(submissions["flawed"]), str(submissions["gt"]), str(out), images=str(submissions["gt"]), k=2)
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--virtual-time-budget=10000", "--dump-dom", out.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert 'data-figures="7/7"' in dom.stdout, dom.stderr[-2000:]
    assert "7 of 7 figures loaded" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(flags + ["--window-size=1400,2400", f"--screenshot={shot}", out.as_uri()], capture_output=True,
                   timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(shot).size == (1400, 2400)


def test_compare_and_report_commands(submissions, tmp_path, capsys):
    js = tmp_path / "cmp.json"
    assert cli.main(["compare", "--pred", str(submissions["flawed"]), "--pred", str(submissions["perfect"]),
                     "--gt", str(submissions["gt"]), "--n", "200", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "paired bootstrap over 4 frames, 200 resamples (seed 0)" in out and "verdict on mIoU" in out
    res = json.loads(js.read_text())
    assert res["miou"]["b"] == 1.0 and res["miou"]["delta"] > 0
    assert cli.main(["compare", "--pred", str(submissions["perfect"]), "--gt", str(submissions["gt"])]) == 2
    assert "exactly two --pred" in capsys.readouterr().err
    assert cli.main(["report", "--pred", str(submissions["perfect"]), "--gt", str(submissions["gt"]),
                     "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x.html")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert cli.main(["report", "--pred", str(submissions["perfect"]), "--gt", str(submissions["gt"]),
                     "--out", str(tmp_path / "y.html")]) == 0
    assert "report: " in capsys.readouterr().out and (tmp_path / "y.html").is_file()


def test_training_logs_the_train_val_gap_and_the_loss(prepared_synth, tmp_path):
    """train.train_eval_images > 0: each validation record holds the training sample's scores;
    train_log.jsonl holds the loss, its terms and the LR every log interval."""
    from conftest import tiny_train_opts
    from paddle_lane.config import load_config
    from paddle_lane.engine.trainer import Trainer
    from conftest import ROOT
    _, lists = prepared_synth
    cfg = load_config(ROOT / "configs" / "demo_tiny.yml",
                      tiny_train_opts(lists, tmp_path / "run", iters=10, val_interval=10) + ["train.train_eval_images=3"])
    Trainer(cfg, quiet=True).run()
    val = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(val) == 1 and val[0]["train_frames"] == 3
    assert 0 <= val[0]["train_miou"] <= 1 and len(val[0]["train_iou"]) == 8
    train = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in train] == [5, 10] and all(r["loss"] > 0 and r["lr"] > 0 for r in train)
    assert set(train[0]["terms"]) and train[0]["global_iter"] == 5
