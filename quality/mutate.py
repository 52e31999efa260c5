"""Mutation score of the modules whose numbers users trust, each against its own tests.

For each module: a copy of the project in a temp folder, mutmut (3.x) mutates only that module
and runs only the matching tests, bounded in time; then every surviving mutant's diff is read
and classified. A survivor that only edits text inside string literals (error messages, the
printed policy) cannot change a result and is excluded by that rule, stated here, not by hand:
    the removed and added lines are equal once every string literal is replaced by "", or, on a
    line that raises or prints, once the message argument (a string literal or None) is.
Score = killed / (killed + surviving mutants that change code). Target: >= 90 % per module.

    ./run.sh mutate                 # every module (tens of minutes on 2 cores)
    ./run.sh mutate metrics scorer  # some of them
    .venv/bin/python quality/mutate.py --minutes 10 labels
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")

PYPROJECT = ROOT / "pyproject.toml"


def modules(pyproject: Path = PYPROJECT) -> dict[str, tuple[str, list[str]]]:
    """name -> (file to mutate, tests that pin it), from [tool.paddle-lane.mutate] of pyproject.toml."""
    table = tomllib.loads(pyproject.read_text())["tool"]["paddle-lane"]["mutate"]
    return {name: (entry[0], list(entry[1:])) for name, entry in table.items()}


MODULES = modules()
STRING = re.compile(r"""(?:\b[rbfuRBFU]{1,2})?("([^"\\]|\\.)*"|'([^'\\]|\\.)*')""")


def strip_strings(line: str) -> str:
    """A line with every (single-line) string literal emptied."""
    return STRING.sub('""', line).strip()


MESSAGE_LINE = re.compile(r"^\s*(raise \w+\(|print\(|warnings\.warn\()")


def same_but_text(old: str, new: str) -> bool:
    a, b = strip_strings(old), strip_strings(new)
    if a == b:
        return True
    # a raised or printed message replaced by None is still only a message
    return bool(MESSAGE_LINE.match(old)) and a.replace("None", '""') == b.replace("None", '""')


def string_only(diff: str) -> bool:
    """True when a mutant's diff only edits the text of string literals (or of a message)."""
    removed = [l[1:] for l in diff.splitlines() if l.startswith("-") and not l.startswith("---")]
    added = [l[1:] for l in diff.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return len(removed) == len(added) > 0 and all(same_but_text(a, b) for a, b in zip(removed, added))


def project_copy(dest: Path) -> None:
    """The project's tracked and untracked-but-not-ignored files, as they are on disk."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def configure(dest: Path, target: str, tests: list[str]) -> None:
    """The copy's [tool.mutmut] gets this module and its tests; the default-run marker filter stays."""
    text = (dest / "pyproject.toml").read_text()
    text = re.sub(r"(?m)^addopts = .*$", "addopts = \"-m 'not slow' -p no:cacheprovider\"", text)
    selection = "[" + ", ".join(f'"{t}"' for t in tests) + "]"
    text = text.replace("[tool.mutmut]\n", f'[tool.mutmut]\nonly_mutate = ["{target}"]\n'
                                            f"pytest_add_cli_args_test_selection = {selection}\n", 1)
    (dest / "pyproject.toml").write_text(text)


def run_module(name: str, minutes: float, workers: int, show: int = 0) -> dict:
    target, tests = MODULES[name]
    with tempfile.TemporaryDirectory(prefix=f"mutate_{name}_") as tmp:
        dest = Path(tmp)
        project_copy(dest)
        configure(dest, target, tests)
        t0 = time.monotonic()
        # its own process group, so the time limit ends mutmut's workers too, not only mutmut
        proc = subprocess.Popen([str(MUTMUT), "run", "--max-children", str(workers)], cwd=dest, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=60 * minutes)
            finished, tail = proc.returncode == 0, out[-500:] + err[-1500:]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            finished, tail = False, "time limit reached"
        except BaseException:  # Ctrl-C or SIGTERM of this script: no worker is left behind
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        listing = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=dest, capture_output=True,
                                 text=True).stdout
        status = dict(line.strip().rsplit(": ", 1) for line in listing.splitlines() if ": " in line)
        counts = {s: sum(1 for v in status.values() if v == s) for s in set(status.values())}
        survivors = [k for k, v in status.items() if v == "survived"]
        text_only = [k for k in survivors
                     if string_only(subprocess.run([str(MUTMUT), "show", k], cwd=dest, capture_output=True,
                                                   text=True).stdout)]
        code_survivors = [k for k in survivors if k not in text_only]
        killed = counts.get("killed", 0)
        scored = killed + len(code_survivors)
        shows = {k: subprocess.run([str(MUTMUT), "show", k], cwd=dest, capture_output=True, text=True).stdout
                 for k in code_survivors[:show]}
    return {"module": name, "finished": finished, "mutants": len(status), "killed": killed,
            "survived": len(survivors), "string_only": len(text_only), "other": len(status) - killed - len(survivors),
            "other_kinds": {s: c for s, c in sorted(counts.items()) if s not in ("killed", "survived")},
            "unreached": sorted({k.split("__mutmut_")[0].rsplit(".", 1)[-1].removeprefix("x_").replace("ǁ", ".")
                                 for k, v in status.items() if v == "no tests"}),
            "score": killed / scored if scored else float("nan"), "seconds": time.monotonic() - t0,
            "examples": shows, "tail": tail if not finished else ""}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", choices=[[]] + list(MODULES), help="default: all")
    ap.add_argument("--minutes", type=float, default=20.0, help="time limit per module")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--show", type=int, default=0, metavar="N", help="print up to N surviving code mutants per module")
    args = ap.parse_args(argv)
    if not MUTMUT.exists():
        sys.exit(f"mutmut not found beside {sys.executable}: run ./run.sh mutate (it installs requirements-dev.lock)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: temp copies removed, workers killed
    rows = [run_module(m, args.minutes, args.workers, args.show) for m in (args.modules or list(MODULES))]
    print(f"\n{'module':<11} {'mutants':>7} {'killed':>6} {'survived':>8} {'text-only':>9} {'other':>5} "
          f"{'score':>6}  time")
    for r in rows:
        flag = "" if r["finished"] else "  (stopped at the time limit or failed: partial)"
        print(f"{r['module']:<11} {r['mutants']:>7} {r['killed']:>6} {r['survived']:>8} {r['string_only']:>9} "
              f"{r['other']:>5} {100 * r['score']:>5.1f}%  {r['seconds'] / 60:.1f} min{flag}")
        if r["other_kinds"]:  # not scored: mutmut's own verdicts (no tests reach it, timeout, ...)
            print("   other: " + ", ".join(f"{c} {s}" for s, c in r["other_kinds"].items()))
        if r["unreached"]:
            print("   no test reaches: " + ", ".join(r["unreached"]))
        if r["tail"]:
            print("   " + r["tail"].strip().splitlines()[-1] if r["tail"].strip() else "")
        for diff in r["examples"].values():
            print(diff)
    print("RESULT " + " ".join(f"{r['module']}={100 * r['score']:.1f}%" for r in rows))
    return 0 if all(r["finished"] and r["score"] >= 0.9 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
