"""Checkpoints (paddle_lane/runs/checkpoint.py) on tiny layers, pinned by hand: digests, damage
of every kind (missing, truncated, same-size flipped bytes, a state without a key), the order
checkpoints are found in, which one a resume takes, pruning, and repairing best/ after a crash
between the two saves. Fast: `./run.sh mutate checkpoint`."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import paddle
import pytest

from paddle_lane.runs import checkpoint as ck

STATE = {"stage": 0, "iter": 4, "lr": 0.01, "best_miou": 0.5, "best_iter": 4, "bad_vals": 0}


def layer(seed: int) -> paddle.nn.Layer:
    paddle.seed(seed)
    return paddle.nn.Linear(3, 2)


def save(folder, seed=0, **state):
    return ck.save_checkpoint(folder, layer(seed), None, {**STATE, **state})


def test_a_checkpoint_records_the_size_and_sha256_of_each_file(tmp_path):
    model = layer(1)
    opt = paddle.optimizer.Adam(parameters=model.parameters())
    folder = ck.save_checkpoint(tmp_path / "stage0" / "iter_0000004", model, opt, STATE)
    state = json.loads((folder / "state.json").read_text())
    assert sorted(state["files"]) == ["model.pdparams", "optimizer.pdopt"]
    for name, digest in state["files"].items():
        data = (folder / name).read_bytes()
        assert digest == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert {k: state[k] for k in STATE} == STATE
    assert sorted(p.name for p in (tmp_path / "stage0").iterdir()) == ["iter_0000004"]  # no temp left
    assert ck.checkpoint_damage(folder, ck.RESUME_KEYS) is None


def test_saving_again_replaces_the_folder_whole(tmp_path):
    folder = save(tmp_path / "best", seed=1, iter=2)
    save(folder, seed=2, iter=6)
    assert ck.read_state(folder)["iter"] == 6
    want = layer(2).state_dict()
    got = paddle.load(str(folder / "model.pdparams"))
    np.testing.assert_array_equal(got["weight"].numpy(), want["weight"].numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.mark.parametrize("damage, why", [
    (lambda f: (f / "model.pdparams").unlink(), "model.pdparams is missing"),
    (lambda f: (f / "model.pdparams").write_bytes((f / "model.pdparams").read_bytes()[:-5]), "model.pdparams has"),
    (lambda f: (f / "model.pdparams").write_bytes(bytes([b ^ 1 if i == 7 else b for i, b in
                                                         enumerate((f / "model.pdparams").read_bytes())])),
     "model.pdparams does not match its SHA-256"),
    (lambda f: (f / "state.json").write_text("{no json"), "not a valid checkpoint state"),
    (lambda f: (f / "state.json").write_text("[1, 2]"), "expected a JSON object"),
])
def test_each_kind_of_damage_is_named(tmp_path, damage, why):
    folder = save(tmp_path / "c")
    size = (folder / "model.pdparams").stat().st_size
    damage(folder)
    found = ck.checkpoint_damage(folder)
    assert found is not None and why in found, found
    if why == "model.pdparams has":
        assert found == f"model.pdparams has {size - 5} bytes, {size} were written"


def test_a_state_without_a_resume_key_is_damage_only_where_resume_keys_are_asked(tmp_path):
    folder = save(tmp_path / "c")
    state = json.loads((folder / "state.json").read_text())
    del state["best_iter"]
    (folder / "state.json").write_text(json.dumps(state))
    assert ck.checkpoint_damage(folder) is None
    assert ck.checkpoint_damage(folder, ck.RESUME_KEYS) == "state.json has no 'best_iter' key"
    assert ck.checkpoint_damage(folder, ("stage", "iter")) is None


def test_an_old_checkpoint_without_digests_is_checked_for_presence(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps(STATE))
    assert ck.checkpoint_damage(folder) == "model.pdparams is missing"
    (folder / "model.pdparams").write_bytes(b"anything")
    assert ck.checkpoint_damage(folder) is None
    assert ck.read_state(tmp_path / "nowhere") == {}


def test_checkpoints_are_ordered_by_stage_then_iteration_from_their_names(tmp_path):
    names = ["stage1/iter_0000002", "stage0/iter_0000010", "stage0/iter_0000009", "stage10/iter_0000001",
             "stage2/iter_0000100"]
    for n in names:
        save(tmp_path / n)
    (tmp_path / "stage0" / "iter_0000011").mkdir()  # no state.json: not a checkpoint
    (tmp_path / "stage0" / "best").mkdir()
    (tmp_path / "stage0" / "iter_x").mkdir()
    (tmp_path / "stage0" / "iter_x" / "state.json").write_text("{}")
    want = ["stage0/iter_0000009", "stage0/iter_0000010", "stage1/iter_0000002", "stage2/iter_0000100",
            "stage10/iter_0000001"]
    assert [str(p.relative_to(tmp_path)) for p in ck.list_checkpoints(tmp_path)] == want


def test_a_resume_takes_the_newest_intact_checkpoint_and_names_the_damaged_ones(tmp_path, capsys):
    for it in (2, 4, 6):
        save(tmp_path / "stage0" / f"iter_{it:07d}", iter=it)
    save(tmp_path / "stage1" / "iter_0000002", stage=1, iter=2)
    newest = tmp_path / "stage1" / "iter_0000002"
    (newest / "model.pdparams").write_bytes(b"")
    assert ck.newest_intact_checkpoint(tmp_path) == tmp_path / "stage0" / "iter_0000006"
    assert f"warning: checkpoint {newest} is damaged (model.pdparams has 0 bytes" in capsys.readouterr().err
    assert ck.newest_intact_checkpoint(tmp_path, warn=False, stage=0) == tmp_path / "stage0" / "iter_0000006"
    assert ck.newest_intact_checkpoint(tmp_path, warn=False, stage=1) is None
    assert capsys.readouterr().err == ""
    assert ck.newest_intact_checkpoint(tmp_path / "empty") is None


def test_pruning_keeps_the_newest_of_one_stage(tmp_path):
    for stage, it in ((0, 2), (0, 4), (0, 6), (0, 8), (1, 2)):
        save(tmp_path / f"stage{stage}" / f"iter_{it:07d}", stage=stage, iter=it)
    ck.prune(tmp_path, 0, 2)
    assert [str(p.relative_to(tmp_path)) for p in ck.list_checkpoints(tmp_path)] == [
        "stage0/iter_0000006", "stage0/iter_0000008", "stage1/iter_0000002"]


def test_best_is_left_alone_when_it_holds_what_the_state_names(tmp_path):
    save(tmp_path / "best", iter=4)
    assert ck.reconcile_best(tmp_path, {**STATE, "best_iter": 4, "iter": 6}) is None
    assert ck.reconcile_best(tmp_path, {**STATE, "best_iter": -1}) is None   # nothing validated yet
    save(tmp_path / "best", iter=8)
    assert ck.reconcile_best(tmp_path, {**STATE, "best_iter": 4, "iter": 6}) is None  # saved after the resume point


def test_best_behind_its_state_is_re_saved_from_that_iterations_checkpoint(tmp_path):
    save(tmp_path / "best", seed=1, iter=2)
    save(tmp_path / "iter_0000004", seed=2, iter=4)
    note = ck.reconcile_best(tmp_path, {**STATE, "best_iter": 4, "iter": 4})
    assert note == (f"note: {tmp_path / 'best'} re-saved from iter_0000004, the best iteration the run's state "
                    "names (it held iteration 2)")
    assert (tmp_path / "best" / "model.pdparams").read_bytes() == (tmp_path / "iter_0000004" / "model.pdparams").read_bytes()
    assert ck.read_state(tmp_path / "best")["iter"] == 4 and ck.checkpoint_damage(tmp_path / "best") is None
    assert sorted(ck.read_state(tmp_path / "best")["files"]) == ["model.pdparams"]


def test_a_missing_or_damaged_best_is_re_saved_or_replaced_by_the_newest_intact(tmp_path):
    stage = tmp_path / "stage0"
    save(stage / "iter_0000004", seed=2, iter=4)
    note = ck.reconcile_best(stage, {**STATE, "best_iter": 4, "iter": 4})
    assert note.endswith("(it was damaged: missing)") and ck.read_state(stage / "best")["iter"] == 4
    (stage / "best" / "model.pdparams").write_bytes(b"x")
    save(stage / "iter_0000006", seed=3, iter=6)
    note = ck.reconcile_best(stage, {**STATE, "best_iter": 2, "iter": 6})  # iter_2 is gone
    assert note == (f"warning: {stage / 'best'} was model.pdparams has 1 bytes, "
                    f"{(stage / 'iter_0000004' / 'model.pdparams').stat().st_size} were written and iter_0000002 "
                    f"(the best iteration) is gone; best/ now holds iter_0000006, the newest intact checkpoint of "
                    "stage0: the next stage starts from it")
    assert ck.read_state(stage / "best")["iter"] == 6


def test_an_intact_best_of_another_iteration_is_kept_and_said(tmp_path):
    save(tmp_path / "best", iter=2)
    note = ck.reconcile_best(tmp_path, {**STATE, "best_iter": 4, "iter": 6})
    assert note == (f"warning: {tmp_path / 'best'} holds iteration 2 while the run's state names 4 as best, and "
                    f"iter_0000004 is gone; the next stage starts from {tmp_path / 'best'} (iteration 2)")


def test_nothing_to_repair_best_from_is_said(tmp_path):
    stage = tmp_path / "stage0"
    stage.mkdir()
    assert ck.reconcile_best(stage, {**STATE, "best_iter": 4}) == (
        f"warning: {stage / 'best'} is missing and no intact checkpoint of stage0 holds weights to replace it")


def test_optimizer_state_keys_follow_the_structured_parameter_names():
    state = {"linear_3.w_0_moment1_0": 1, "linear_3.w_0_moment2_0": 2, "linear_3.b_0_beta1_pow_acc_0": 3,
             "LR_Scheduler": {"last_epoch": 4}, "linear_30.w_0_moment1_0": 5}
    mapping = {"linear_3.w_0": "@w", "linear_3.b_0": "@b", "linear_30.w_0": "@w2"}
    assert ck._rename_keys(state, mapping) == {"@w_moment1_0": 1, "@w_moment2_0": 2, "@b_beta1_pow_acc_0": 3,
                                               "LR_Scheduler": {"last_epoch": 4}, "@w2_moment1_0": 5}


def test_weights_resolve_from_a_folder_or_a_file(tmp_path):
    folder = save(tmp_path / "c")
    assert ck.resolve_weights(folder) == folder / "model.pdparams"
    assert ck.resolve_weights(folder / "model.pdparams") == folder / "model.pdparams"
    with pytest.raises(FileNotFoundError, match="checkpoint not found: "):
        ck.resolve_weights(tmp_path / "none")


def test_a_save_makes_missing_parents_and_builds_in_a_hidden_temp_beside_the_target(tmp_path, monkeypatch):
    """The temp folder sits beside the target (one rename on one file system) and is hidden, so a
    listing of the run never shows a half-written checkpoint; state.json is indented for reading."""
    seen = []
    target = tmp_path / "run" / "stage3" / "iter_0000010"
    ck._write_folder(target, lambda tmp: (seen.append(tmp), (tmp / "model.pdparams").write_bytes(b"w")), {"iter": 10})
    assert seen[0].parent == target.parent and seen[0].name.startswith(".iter_0000010.")
    assert (target / "model.pdparams").read_bytes() == b"w"
    assert (target / "state.json").read_text().startswith('{\n  "iter": 10,\n  "files": {\n    "model.pdparams"')


def test_a_stale_old_folder_left_by_a_killed_save_does_not_block_the_next(tmp_path):
    save(tmp_path / "best", seed=1, iter=2)
    stale = tmp_path / ".best.old"
    stale.mkdir()
    (stale / "model.pdparams").write_bytes(b"left by a kill between the two renames")
    save(tmp_path / "best", seed=2, iter=4)
    assert ck.read_state(tmp_path / "best")["iter"] == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_failed_fill_leaves_neither_a_temp_nor_a_target(tmp_path):
    def fill(tmp):
        (tmp / "model.pdparams").write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        ck._write_folder(tmp_path / "iter_0000004", fill, {"iter": 4})
    assert list(tmp_path.iterdir()) == []


def test_the_optimizer_state_saved_is_the_optimizers(tmp_path):
    model = layer(1)
    opt = paddle.optimizer.Adam(learning_rate=0.1, parameters=model.parameters())
    model(paddle.ones([1, 3])).sum().backward()
    opt.step()
    folder = ck.save_checkpoint(tmp_path / "iter_0000001", model, opt, STATE)
    fresh = paddle.optimizer.Adam(learning_rate=0.1, parameters=model.parameters())
    ck.load_optimizer_state(model, fresh, folder / "optimizer.pdopt")
    want, got = opt.state_dict(), fresh.state_dict()
    moments = [k for k in want if "moment1" in k]
    assert len(moments) == 2
    for k in moments:
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())


def test_a_state_without_best_iter_repairs_nothing(tmp_path):
    save(tmp_path / "iter_0000001", iter=1)
    state = {k: v for k, v in STATE.items() if k != "best_iter"}
    assert ck.reconcile_best(tmp_path, state) is None and not (tmp_path / "best").exists()


def test_a_best_damaged_under_an_intact_state_is_re_saved(tmp_path):
    """Same iteration in best/state.json, but the weights were damaged: state.json alone is not trusted."""
    save(tmp_path / "iter_0000004", seed=2, iter=4)
    save(tmp_path / "best", seed=2, iter=4)
    weights = tmp_path / "best" / "model.pdparams"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    note = ck.reconcile_best(tmp_path, {**STATE, "best_iter": 4, "iter": 4})
    assert note.endswith("(it was damaged: model.pdparams does not match its SHA-256)")
    assert weights.read_bytes() == (tmp_path / "iter_0000004" / "model.pdparams").read_bytes()


def test_a_damaged_best_iteration_is_never_copied_into_best(tmp_path, capsys):
    """The named iteration's checkpoint is damaged too: best/ takes the newest intact one of this
    stage, never another stage's, and the scan prints nothing of its own."""
    run = tmp_path / "run"
    save(run / "stage0" / "iter_0000002", seed=1, iter=2)
    save(run / "stage0" / "iter_0000004", seed=2, iter=4)
    save(run / "stage1" / "iter_0000003", seed=3, iter=3, stage=1)
    (run / "stage0" / "iter_0000004" / "model.pdparams").write_bytes(b"x")
    note = ck.reconcile_best(run / "stage0", {**STATE, "best_iter": 4, "iter": 4})
    assert "best/ now holds iter_0000002, the newest intact checkpoint of stage0" in note
    assert (run / "stage0" / "best" / "model.pdparams").read_bytes() == \
        (run / "stage0" / "iter_0000002" / "model.pdparams").read_bytes()
    assert capsys.readouterr().err == ""


def test_an_unrecorded_file_does_not_stop_the_check_of_the_next(tmp_path):
    folder = save(tmp_path / "iter_0000004")
    state = json.loads((folder / "state.json").read_text())
    (folder / "extra.bin").write_bytes(b"abc")
    state["files"] = {"extra.bin": None, **state["files"]}  # a legacy entry first, then a digest
    (folder / "state.json").write_text(json.dumps(state))
    assert ck.checkpoint_damage(folder) is None
    (folder / "model.pdparams").write_bytes(b"")
    assert ck.checkpoint_damage(folder).startswith("model.pdparams has 0 bytes")


def test_a_resume_skips_a_checkpoint_whose_state_lacks_a_resume_key(tmp_path, capsys):
    save(tmp_path / "stage0" / "iter_0000002", iter=2)
    newer = save(tmp_path / "stage0" / "iter_0000004", iter=4)
    state = json.loads((newer / "state.json").read_text())
    del state["bad_vals"]
    (newer / "state.json").write_text(json.dumps(state))
    assert ck.newest_intact_checkpoint(tmp_path) == tmp_path / "stage0" / "iter_0000002"
    assert "has no 'bad_vals' key" in capsys.readouterr().err


def test_iterations_are_ordered_as_numbers_whatever_their_padding(tmp_path):
    for name in ("iter_10", "iter_9", "iter_0000011"):
        save(tmp_path / "stage0" / name)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["iter_9", "iter_10", "iter_0000011"]


def test_pruning_to_one_keeps_only_the_newest(tmp_path):
    for it in (2, 4, 6):
        save(tmp_path / "stage0" / f"iter_{it:07d}", iter=it)
    ck.prune(tmp_path, 0, 1)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["iter_0000006"]


def test_a_damaged_best_of_a_later_stage_is_replaced_from_that_stage(tmp_path):
    save(tmp_path / "stage0" / "iter_0000008", seed=1, iter=8)
    stage1 = tmp_path / "stage1"
    save(stage1 / "iter_0000003", seed=2, stage=1, iter=3)
    save(stage1 / "best", seed=3, stage=1, iter=2)
    (stage1 / "best" / "model.pdparams").write_bytes(b"")
    note = ck.reconcile_best(stage1, {**STATE, "stage": 1, "best_iter": 2, "iter": 3})
    assert "best/ now holds iter_0000003, the newest intact checkpoint of stage1" in note
    assert (stage1 / "best" / "model.pdparams").read_bytes() == (stage1 / "iter_0000003" / "model.pdparams").read_bytes()


def test_optimizer_keys_take_the_longest_parameter_name_that_prefixes_them():
    mapping = {"conv": "@a", "conv_bn": "@b"}
    state = {"conv_bn_moment1_0": 1, "conv_moment1_0": 2, "LR_Scheduler": 3}
    assert ck._rename_keys(state, mapping) == {"@b_moment1_0": 1, "@a_moment1_0": 2, "LR_Scheduler": 3}


def test_load_weights_copies_every_tensor_and_refuses_a_checkpoint_missing_one(tmp_path):
    folder = save(tmp_path / "stage0" / "iter_0000004", seed=1)
    target = layer(2)
    ck.load_weights(target, folder)
    source = layer(1)
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[name].numpy(), value.numpy())
    partial = tmp_path / "partial.pdparams"
    paddle.save({"weight": source.weight}, str(partial))  # no bias
    with pytest.raises(ValueError, match=r"partial.pdparams: checkpoint does not match the model: 1 parameter\(s\) "
                                         r"missing, e.g. bias"):
        ck.load_weights(layer(2), partial)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ck.load_weights(layer(2), tmp_path / "gone")
