"""The documented commands, as written in README.md and the docs/ pages: every `./run.sh VERB ...`
parses with the options it shows, every documented script exists, and the documented chain
(prepare -> train -> resume -> infer with a two-model ensemble -> check-submission -> evaluate -> export ->
infer from the export -> check-submission -> report -> compare) runs on synthetic data with tiny settings.
A documented command that breaks fails here, and so does a relative link to a missing file."""
from __future__ import annotations

import py_compile
import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT
from paddle_lane.cli import main as cli

# The documented text, in reading order: the chain below takes each verb's first command in this order
DOC_FILES = ("README.md", "docs/get_started.md", "docs/config.md", "docs/train.md", "docs/infer.md",
             "docs/evaluate.md", "docs/deploy.md", "docs/extend.md", "docs/testing.md")
DOC_TEXT = "\n".join((ROOT / name).read_text() for name in DOC_FILES if (ROOT / name).is_file())
LINK = re.compile(r"\]\(([^)\s]+)\)")
RUN_SH_VERBS = ("setup", "test", "help", "mutate")  # handled by run.sh itself, not by the Python CLI


def documented_commands() -> list[str]:
    """Commands of the documented text: indented code lines (with `\\` continuations), then inline `...`."""
    cmds, lines = [], DOC_TEXT.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^    (\./run\.sh|\.venv/bin/python) ", line):
            cmd = line.strip()
            while cmd.endswith("\\"):
                i += 1
                cmd = cmd[:-1] + " " + lines[i].strip()
            cmds.append(re.sub(r"\s+#.*$", "", cmd))
        i += 1
    cmds += re.findall(r"`(\./run\.sh [^`]+)`", DOC_TEXT)
    return cmds


def tokens(cmd: str) -> list[str]:
    """Shell words with the documentation's [optional] brackets opened (their content is shown too)."""
    return shlex.split(cmd.replace("[", "").replace("]", ""))


def test_every_documented_file_exists():
    missing = [name for name in DOC_FILES if not (ROOT / name).is_file()]
    assert not missing, f"documented pages missing: {missing}"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move the detail into docs/"


def test_every_relative_link_points_to_a_file():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked, broken = 0, []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            checked += 1
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert checked >= len(DOC_FILES), checked  # every page links back to the README at least
    assert not broken, broken


def test_every_documented_run_sh_command_parses():
    cmds = [c for c in documented_commands() if c.startswith("./run.sh")]
    assert len(cmds) >= 15, cmds
    parser = cli.build_parser()
    for cmd in cmds:
        words = tokens(cmd)[1:]
        if words[0] in RUN_SH_VERBS:
            assert f"  {words[0]})" in (ROOT / "run.sh").read_text(), cmd
            continue
        try:
            parser.parse_args(words)
        except SystemExit as exc:
            pytest.fail(f"documented command does not parse ({exc}): {cmd}")


def test_every_documented_script_exists_and_compiles():
    scripts = [tokens(c)[1] for c in documented_commands() if c.startswith(".venv/bin/python")]
    assert len(scripts) >= 4
    for script in scripts:
        py_compile.compile(str(ROOT / script), doraise=True)


TINY = """_base_: {root}/configs/demo_tiny.yml
data: {{lists_dir: out/prepare, crop_offset: 76, frame_height: 192, use_cache: false, num_workers: 2}}
model: {{name: lite, width: {width}}}
stages:
  - {{width: 128, height: 48, batch_size: 4, iters: 2, lr: 0.01}}
  - {{width: 128, height: 48, batch_size: 4, iters: 2, lr: 0.01}}
  - {{width: 160, height: 64, batch_size: 4, iters: 2, lr: 0.01}}
train: {{output_dir: {run}, val_interval: 2, vis_images: 1}}
infer: {{num_workers: 0}}
"""


def test_the_documented_chain_runs(tmp_path, monkeypatch):
    """The documented command lines, in order, with DATA / FILE / the recipe config pointed at
    tiny synthetic equivalents (relative output folders land in a temp folder), succeed."""
    from paddle_lane.prepare.synth import make_dataset
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "DATA", roads=("Road02", "Road03"), records_per_road=2, frames_per_record=2,
                 width=384, height=192, seed=4, test_frames=2)
    r50, unet = tmp_path / "r50.yml", tmp_path / "unet.yml"
    r50.write_text(TINY.format(root=ROOT, width=8, run="runs/r50"))
    unet.write_text(TINY.format(root=ROOT, width=4, run="runs/unet"))
    by_verb: dict[str, list[list[str]]] = {}
    for cmd in documented_commands():
        if cmd.startswith("./run.sh "):
            words = tokens(cmd)[1:]
            by_verb.setdefault(words[0], []).append(words)

    def run(words: list[str], **subst: str) -> int:
        table = {"FILE": str(r50), **subst}
        return cli.main([str(r50) if w.startswith("configs/") else table.get(w, w) for w in words])

    assert run(by_verb["prepare"][0]) == 0
    assert run(by_verb["train"][0]) == 0
    assert run(next(w for w in by_verb["train"] if "--resume" in w)) == 0
    # the ensemble's second member: another run, another model width, its own config.yml
    assert cli.main(["train", "--config", str(unet)]) == 0
    # predict every frame of the dataset root (the walk skips the label trees), so evaluate has all
    assert run(by_verb["infer"][0], **{"DATA/TestSet": "DATA"}) == 0
    assert run(by_verb["check-submission"][0], **{"submissions/NAME": "submissions/r50_unet", "DIR": "DATA"}) == 0
    assert run(by_verb["evaluate"][0]) == 0
    # export the first run, then a submission from the export (no --config)
    assert run(by_verb["export"][0]) == 0
    from_export = next(w for w in by_verb["infer"] if "exports/r50" in w and "--nproc" not in w)
    assert run(from_export, **{"DATA/TestSet": "DATA"}) == 0
    assert run(by_verb["check-submission"][0], **{"submissions/NAME": "submissions/r50_export", "DIR": "DATA"}) == 0
    # what to fix next, and whether the ensemble beats the single exported model
    assert run(by_verb["report"][0], **{"DATA/Gray_Label": "DATA"}) == 0
    assert Path("report.html").stat().st_size > 10_000
    assert run(by_verb["compare"][0], **{"DATA/Gray_Label": "DATA", "submissions/r50": "submissions/r50_export"}) == 0
    # documented for GPU machines: on a CPU build of Paddle it is one clear line, exit 2
    assert run(next(w for w in by_verb["train"] if "--gpus" in w)) == 2
