"""What a run folder may be used for (paddle_lane/runs/run_dir.py), pinned by hand: which
entries make a folder a used run, moving one aside, which config changes a resume accepts, the
stop line, and the temp entries an interrupted save leaves. Fast: `./run.sh mutate run_dir`."""
from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from paddle_lane.runs.run_dir import (aside_name, check_fresh_start, check_resume_config, clear_stale_temps,
                                        config_differences, flatten, holds_run, move_aside, stop_message,
                                        stopped_line)
from paddle_lane.core.errors import UserError


@pytest.mark.parametrize("entries, want", [
    ([], []),
    (["config.yml"], ["config.yml"]),
    (["metrics.jsonl", "notes.txt"], ["metrics.jsonl"]),
    (["stage0/"], ["stage0"]),
    (["stage12/", "stage1/", "vdl/"], ["stage1", "stage12"]),
    (["stage/", "stagex/", "stage0.txt", "train_log.jsonl", "vdl/", "launch_logs/"], []),
    (["config.yml", "metrics.jsonl", "stage0/"], ["config.yml", "metrics.jsonl", "stage0"]),
])
def test_which_entries_make_a_folder_a_used_run(tmp_path, entries, want):
    out = tmp_path / "run"
    out.mkdir()
    for e in entries:
        (out / e.rstrip("/")).mkdir() if e.endswith("/") else (out / e).write_text("x")
    assert holds_run(out) == want


def test_a_missing_folder_holds_no_run(tmp_path):
    assert holds_run(tmp_path / "absent") == []
    assert check_fresh_start(tmp_path / "absent", force=False) is None


def test_a_used_folder_is_refused_without_force_and_moved_aside_with_it(tmp_path):
    out = tmp_path / "run"
    (out / "stage0").mkdir(parents=True)
    (out / "stage0" / "kept.txt").write_text("weights")
    with pytest.raises(UserError) as info:
        check_fresh_start(out, force=False)
    assert str(info.value) == (f"{out} already holds a training run (stage0): continue it with --resume, choose "
                               "another train.output_dir, or pass --force to move it aside to run.old-<time>")
    assert (out / "stage0" / "kept.txt").exists()
    moved = check_fresh_start(out, force=True)
    assert not out.exists() and (moved / "stage0" / "kept.txt").read_text() == "weights"
    assert re.fullmatch(r"run\.old-\d{8}-\d{6}", moved.name), moved.name


def test_moving_aside_never_lands_on_another_moved_folder(tmp_path):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = tmp_path / "run"
    first = aside_name(out)
    assert first.name in (f"run.old-{stamp}", f"run.old-{time.strftime('%Y%m%d-%H%M%S')}")
    first.mkdir()
    first.with_name(first.name + "-1").mkdir()
    assert aside_name(out) == first.with_name(first.name + "-2")
    out.mkdir()
    (out / "a").write_text("1")
    target = move_aside(out)
    assert target == first.with_name(first.name + "-2") and (target / "a").read_text() == "1"


def test_flatten_names_every_leaf_by_its_path():
    tree = {"a": {"b": 1, "c": [1, 2]}, "stages": [{"iters": 5}, {"iters": 6, "lr": 0.1}], "empty": [], "s": "x"}
    assert flatten(tree) == {"a.b": 1, "a.c": [1, 2], "stages.0.iters": 5, "stages.1.iters": 6, "stages.1.lr": 0.1,
                             "empty": [], "s": "x"}
    assert flatten(7) == {"": 7}


def test_config_differences_leave_out_runtime_keys():
    saved = {"data": {"num_workers": 2, "mean": [0.5], "lists_dir": "a"}, "train": {"seed": 1, "output_dir": "x"},
             "infer": {"flip": True}}
    now = {"data": {"num_workers": 0, "mean": [0.4], "lists_dir": "b"}, "train": {"seed": 1, "output_dir": "y",
                                                                                   "extra": 3}, "infer": {"flip": False}}
    assert config_differences(saved, now) == [("data.mean", [0.5], [0.4]), ("train.extra", "<absent>", 3)]


def _saved_run(tmp_path, config: dict):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yml").write_text(yaml.safe_dump({**config, "source": "/old/place.yml"}))
    return out


BASE = {"stages": [{"iters": 10, "lr": 0.1}], "train": {"val_interval": 5, "seed": 0}, "model": {"name": "lite"}}


def test_a_resume_accepts_the_same_config_and_runtime_changes(tmp_path):
    out = _saved_run(tmp_path, BASE)
    now = json.loads(json.dumps(BASE))
    now["source"] = "/new/place.yml"
    assert check_resume_config(out, now, allow_change=False) == []
    assert check_resume_config(tmp_path / "no_config_here", BASE, allow_change=False) == []


def test_a_resume_needs_allow_change_for_a_longer_plan_or_a_new_stage(tmp_path):
    out = _saved_run(tmp_path, BASE)
    now = {**BASE, "stages": [{"iters": 12, "lr": 0.1}, {"iters": 4, "lr": 0.01}], "train": {"val_interval": 4, "seed": 0}}
    with pytest.raises(UserError) as info:
        check_resume_config(out, now, allow_change=False)
    assert str(info.value) == (f"cannot resume {out}: the config changes the run's plan (stages.0.iters: 10 -> 12; "
                               "stages.1.iters: '<absent>' -> 4; stages.1.lr: '<absent>' -> 0.01; "
                               "train.val_interval: 5 -> 4); pass --allow-config-change to continue with it")
    assert check_resume_config(out, now, allow_change=True) == [
        ("stages.0.iters", 10, 12), ("stages.1.iters", "<absent>", 4), ("stages.1.lr", "<absent>", 0.01),
        ("train.val_interval", 5, 4)]


def test_a_resume_refuses_what_changes_the_learning(tmp_path):
    out = _saved_run(tmp_path, BASE)
    now = {**BASE, "stages": [{"iters": 10, "lr": 0.2}], "model": {"name": "unet"}}
    with pytest.raises(UserError) as info:
        check_resume_config(out, now, allow_change=True)
    assert str(info.value) == (f"cannot resume {out}: the config differs from the run's config.yml in model.name: "
                               "'lite' -> 'unet'; stages.0.lr: 0.1 -> 0.2; start a new run (another "
                               "train.output_dir, or --force to move this one aside)")


def test_a_long_list_of_differences_is_cut_after_eight(tmp_path):
    saved = {"model": {f"k{i}": i for i in range(10)}}
    out = _saved_run(tmp_path, saved)
    with pytest.raises(UserError) as info:
        check_resume_config(out, {"model": {f"k{i}": i + 1 for i in range(10)}}, allow_change=True)
    text = str(info.value)
    assert text.count(" -> ") == 8 and "k7: 7 -> 8 ..." in text and "k8" not in text


def test_an_unreadable_saved_config_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yml").write_text("a: [1, 2\n")
    with pytest.raises(UserError, match=rf"^{re.escape(str(out / 'config.yml'))}: not valid YAML"):
        check_resume_config(out, BASE, allow_change=True)


def test_only_the_temp_entries_of_an_interrupted_save_are_removed(tmp_path):
    out = tmp_path / "run"
    keep = [out / "stage0" / "iter_0000004", out / "stage0" / "best", out / "stage0" / ".hidden_note",
            out / "stage1" / ".iterx.1"]
    stale = [out / "stage0" / ".iter_0000006.ab12", out / "stage1" / ".best.old", out / "stage1" / ".best.x9"]
    for p in keep + stale:
        p.mkdir(parents=True)
    (out / "stage0" / ".iter_0000008.tmp").write_text("partial")  # a file, too
    stale.append(out / "stage0" / ".iter_0000008.tmp")
    removed = clear_stale_temps(out)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_the_stop_line_names_where_it_stopped_and_how_to_continue(tmp_path):
    assert stop_message("SIGTERM", None, None, "cmd --resume") == (
        "stopped by SIGTERM before training began; continue with: cmd --resume")
    assert stop_message("SIGINT", {"stage": 1, "iter": 37}, tmp_path / "c", "cmd --resume") == (
        f"stopped by SIGINT at stage 1 iteration 37; checkpoint {tmp_path / 'c'}; continue with: cmd --resume")


def test_the_launching_process_reads_the_stop_from_the_newest_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert stopped_line(out, "SIGTERM", "c") == "stopped by SIGTERM before training began; continue with: c"
    for stage, it, extra in ((0, 40, {}), (1, 7, {"stopped_by": "SIGTERM"}), (1, 3, {})):
        folder = out / f"stage{stage}" / f"iter_{it:07d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"stage": stage, "iter": it, **extra}))
    (out / "stage1" / "iter_0000009").mkdir()
    (out / "stage1" / "iter_0000009" / "state.json").write_text("{broken")  # skipped
    newest = out / "stage1" / "iter_0000007"
    assert stopped_line(out, "SIGTERM", "c") == (f"stopped by SIGTERM at stage 1 iteration 7; checkpoint {newest}; "
                                                 "continue with: c")
    assert stopped_line(out, "SIGINT", "c") == (f"stopped by SIGINT at stage 1 iteration 7; checkpoint {newest}; "
                                                "continue with: c (the newest checkpoint; no rank wrote one at the stop)")
