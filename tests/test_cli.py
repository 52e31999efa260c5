"""The command line: evaluate's exit codes, one-line user errors against tracebacks for
internal errors (and --debug), and --gpus parsing and checks on a CPU build."""
from __future__ import annotations

import json

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import ROOT
from paddle_lane.cli import main as cli
from paddle_lane.core.errors import UserError

CONFIG = ROOT / "configs" / "demo_tiny.yml"
H, W = 6, 8
FRAME = np.zeros((H, W), np.uint8)
FRAME[:2, :4] = 200  # dividing
FRAME[3:5, 4:] = 201  # guiding
CUDA_BUILD = paddle.device.is_compiled_with_cuda()


def _write(path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids, mode="L").save(path)


def _messages(err: str) -> list[str]:
    """stderr lines other than the scoring progress bar."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("scoring:")]


@pytest.fixture
def folders(tmp_path):
    """gt/ with a.png and b.png, and pred/ holding a correct a.png only; returns (gt, pred, report dir)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _write(gt / "a.png", FRAME)
    _write(gt / "b.png", FRAME)
    _write(pred / "a.png", FRAME)
    return gt, pred, tmp_path / "report"


def _evaluate(gt, pred, report, *extra: str) -> int:
    return cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--report", str(report),
                     "--threads", "1", *extra])


# --- evaluate exit codes ---

def test_evaluate_complete_submission_exits_0(folders, capsys):
    gt, pred, report = folders
    _write(pred / "b.png", FRAME)
    assert _evaluate(gt, pred, report) == 0
    out, err = capsys.readouterr()
    assert "mIoU (8 classes): 1.0000" in out and _messages(err) == []
    assert json.loads((report / "scores.json").read_text())["results"]["miou"] == 1.0


def test_evaluate_missing_prediction_exits_1_with_one_line(folders, capsys):
    gt, pred, report = folders
    assert _evaluate(gt, pred, report) == 1
    out, err = capsys.readouterr()
    assert "mIoU" in out  # the table is still printed and written
    assert (report / "scores.json").is_file()
    [line] = _messages(err)
    assert line.startswith("error: incomplete submission: 1 of 2 predictions scored as all background (1 missing;")
    assert "--allow-partial" in line


def test_evaluate_unreadable_and_wrong_size_exit_1_naming_both_kinds(folders, capsys):
    gt, pred, report = folders
    (pred / "a.png").write_bytes(b"not a png")
    _write(pred / "b.png", np.zeros((H, W + 1), np.uint8))
    assert _evaluate(gt, pred, report) == 1
    out, err = capsys.readouterr()
    [line] = _messages(err)
    assert "2 of 2 predictions scored as all background (1 unreadable, 1 wrong size;" in line
    assert "prediction b.png is 9x6 but ground truth b.png is 8x6" in out


def test_evaluate_allow_partial_exits_0_and_still_reports(folders, capsys):
    gt, pred, report = folders
    assert _evaluate(gt, pred, report, "--allow-partial") == 0
    out, err = capsys.readouterr()
    assert "mIoU" in out and "partial submission accepted" in out and "1 missing" in out
    assert _messages(err) == []
    # by hand: b counts as background, so 8 dividing and 8 guiding pixels are missed out of 16 each
    per_class = json.loads((report / "scores.json").read_text())["results"]["per_class"]
    assert per_class[1]["iou"] == pytest.approx(0.5) and per_class[2]["iou"] == pytest.approx(0.5)


@pytest.mark.parametrize("extra", [[], ["--allow-partial"]])
def test_evaluate_missing_or_empty_prediction_folder_exits_2(folders, tmp_path, capsys, extra):
    gt, _, report = folders
    assert _evaluate(gt, tmp_path / "nope", report, *extra) == 2
    assert _messages(capsys.readouterr().err) == [f"error: prediction folder not found: {tmp_path / 'nope'}"]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no predictions here")
    assert _evaluate(gt, empty, report, *extra) == 2
    assert _messages(capsys.readouterr().err) == [f"error: no *.png predictions under {empty}"]
    assert not report.exists()


# --- user errors against internal errors ---

def _failing_evaluate(monkeypatch, exc: BaseException) -> None:
    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr("paddle_lane.cli.commands.run_evaluate", fail)


@pytest.mark.parametrize("exc", [ValueError("bad value 7 in x.csv"), UserError("bad value 7 in x.csv"),
                                 FileNotFoundError("bad value 7 in x.csv")])
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, exc):
    monkeypatch.delenv("PADDLE_LANE_DEBUG", raising=False)
    _failing_evaluate(monkeypatch, exc)
    assert cli.main(["evaluate", "--pred", "p", "--gt", "g"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: bad value 7 in x.csv"]


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), KeyError("stage"), RuntimeError("kernel failed"),
                                 AssertionError("shape")])
def test_internal_errors_show_the_traceback_exit_1(monkeypatch, capsys, exc):
    monkeypatch.delenv("PADDLE_LANE_DEBUG", raising=False)
    _failing_evaluate(monkeypatch, exc)
    assert cli.main(["evaluate", "--pred", "p", "--gt", "g"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert any("raise exc" in line for line in lines)  # the frame that raised is shown
    assert lines[-1].startswith(f"internal error: {type(exc).__name__}: {exc} (please report")
    assert "--debug" in lines[-1]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_user_errors(monkeypatch, capsys, how):
    _failing_evaluate(monkeypatch, ValueError("bad value 7 in x.csv"))
    argv = ["evaluate", "--pred", "p", "--gt", "g"]
    if how == "flag":
        monkeypatch.delenv("PADDLE_LANE_DEBUG", raising=False)
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("PADDLE_LANE_DEBUG", "1")
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "ValueError: bad value 7 in x.csv" in lines
    assert lines[-1] == "error: bad value 7 in x.csv"


# --- --gpus ---

def test_parse_gpus():
    from paddle_lane.cli.launch import parse_gpus
    assert parse_gpus(None) == []
    assert parse_gpus("3") == [3]
    assert parse_gpus("0, 1,2,3") == [0, 1, 2, 3]
    for bad in ["", "a", "1,,2", "-1", "gpu:3", "1,1"]:
        with pytest.raises(UserError, match="--gpus"):
            parse_gpus(bad)


@pytest.mark.skipif(CUDA_BUILD, reason="checks the message of a CPU-only Paddle build")
@pytest.mark.parametrize("gpus", ["3", "0,1"])
def test_gpus_on_a_cpu_build_is_one_line_exit_2(monkeypatch, capsys, gpus):
    monkeypatch.delenv("PADDLE_LANE_LAUNCHED", raising=False)
    assert cli.main(["train", "--config", str(CONFIG), "--gpus", gpus]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: --gpus {gpus} needs a GPU, but the Paddle installed here has no CUDA")


def _fake_cards(monkeypatch, count: int) -> list[str]:
    """Pretend Paddle sees `count` CUDA cards; returns the list paddle.set_device calls land in."""
    chosen: list[str] = []
    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: count)
    monkeypatch.setattr(paddle, "set_device", chosen.append)
    return chosen


def test_single_gpu_id_trains_on_that_card(monkeypatch, capsys):
    from paddle_lane.device import select_device
    import paddle_lane.engine.trainer as trainer_mod
    seen = []

    class FakeTrainer:
        def __init__(self, cfg, resume=False, device=None, **_):
            seen.append(select_device(device))

        def run(self):
            return []

    monkeypatch.delenv("PADDLE_LANE_LAUNCHED", raising=False)
    chosen = _fake_cards(monkeypatch, 4)
    monkeypatch.setattr(trainer_mod, "Trainer", FakeTrainer)
    assert cli.main(["train", "--config", str(CONFIG), "--gpus", "3"]) == 0
    assert seen == ["gpu:3"] and chosen == ["gpu:3"]
    assert cli.main(["train", "--config", str(CONFIG), "--gpus", "4"]) == 2  # cards 0-3 only
    assert capsys.readouterr().err.splitlines() == [
        "error: --gpus 4: no card [4], only 4 CUDA device(s) visible (ids 0-3)"]
    assert cli.main(["train", "--config", str(CONFIG), "--gpus", "3", "--device", "cpu"]) == 2
    assert "contradicts --device cpu" in capsys.readouterr().err
    assert seen == ["gpu:3"]  # neither failure reached the trainer


def test_select_device_gpu_n(monkeypatch):
    from paddle_lane.device import select_device
    chosen = _fake_cards(monkeypatch, 2)
    assert select_device("gpu:1") == "gpu:1" and chosen == ["gpu:1"]
    with pytest.raises(UserError, match=r"device 'gpu:2': only 2 CUDA device\(s\) visible"):
        select_device("gpu:2")
    with pytest.raises(UserError, match="expected gpu or gpu:N"):
        select_device("gpu:x")
    _fake_cards(monkeypatch, 0)
    with pytest.raises(UserError, match="device 'gpu' needs a GPU"):
        select_device("gpu")


def test_run_sh_help_prints_the_usage_only():
    import subprocess
    from conftest import ROOT
    res = subprocess.run(["bash", str(ROOT / "run.sh"), "help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith("paddle-lane: one entry point") and any("./run.sh setup" in x for x in lines)
    assert not any("set -" in x or "ROOT=" in x for x in lines), lines


@pytest.mark.parametrize("argv, dest, value, note", [
    (["infer", "--checkpoint", "m", "--out", "o"], "model", "m", "note: --checkpoint is now --model"),
    (["video", "--checkpoint=m", "--input", "v", "--out", "o"], "model", "m", "note: --checkpoint is now --model"),
    (["export", "--config", "c", "--checkpoint", "m", "--out", "o"], "model", "m", "note: --checkpoint is now --model"),
    (["evaluate", "--pred", "p", "--gt", "g", "--workers", "3"], "threads", 3, "note: --workers is now --threads"),
    (["report", "--pred", "p", "--gt", "g", "--out", "r", "--workers", "3"], "threads", 3,
     "note: --workers is now --threads"),
    (["compare", "--pred", "a", "--pred", "b", "--gt", "g", "--workers", "3"], "threads", 3,
     "note: --workers is now --threads"),
    (["validate", "--out", "o"], "out", "o", "note: `validate` is now `check-submission`"),
])
def test_an_old_spelling_still_parses_and_says_its_new_name(argv, dest, value, note):
    assert getattr(cli.build_parser().parse_args(argv), dest) == value
    assert cli.renamed_notes(argv) == [note + " (the old name still works)"]


@pytest.mark.parametrize("argv", [
    ["infer", "--model", "m", "--out", "o"], ["evaluate", "--pred", "p", "--gt", "g", "--threads", "3"],
    ["check-submission", "--out", "o"], ["prepare", "--data-root", "d", "--out", "o", "--workers", "2"],
    ["serve", "--model", "m", "--workers", "2"],  # processes: --workers keeps its name there
])
def test_the_new_spellings_need_no_note(argv):
    cli.build_parser().parse_args(argv)
    assert cli.renamed_notes(argv) == []


def test_an_old_flag_prints_its_note_once_on_stderr(tmp_path, capsys):
    code = cli.main(["evaluate", "--pred", str(tmp_path / "none"), "--gt", str(tmp_path / "none"), "--workers", "1"])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "note: --workers is now --threads (the old name still works)" and code == 2


def test_the_demo_finds_its_config_in_the_checkout():
    """`./run.sh demo` with no --config reads configs/demo_tiny.yml of this checkout (it looked in
    paddle_lane/configs/ after the package gained its cli/ folder, and every demo stopped at once)."""
    from paddle_lane.cli.demo import DEMO_CONFIG
    assert DEMO_CONFIG == ROOT / "configs" / "demo_tiny.yml" and DEMO_CONFIG.is_file()
    assert cli.build_parser().parse_args(["demo"]).config is None  # so the default above is the one used
