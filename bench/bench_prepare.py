"""Benchmark of `prepare` on the real sample (../shared/apollo_dev), each number against a
baseline measured in the same run:

1. label encoding: one cv2.LUT per label vs the usual loop of one mask per Apollo id;
2. prepare throughput with 2 worker processes vs 1;
3. peak memory of prepare (main process + workers) on 4N frames vs N frames.

    python bench/bench_prepare.py
"""
from __future__ import annotations

import csv
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from paddle_lane.config import load_config  # noqa: E402
from paddle_lane.core.label_io import read_label  # noqa: E402
from paddle_lane.core.labels import label_table, load_scheme  # noqa: E402
from paddle_lane.prepare.pipeline import prepare  # noqa: E402

APOLLO_DEV = ROOT.parent / "shared" / "apollo_dev"
REPEATS = 2
MEMORY_COPIES = 4
SAMPLE_SECONDS = 0.01


def load_pairs() -> list[dict]:
    """Rows of pairs.csv, or exit with a clear message when the sample is absent."""
    if not (APOLLO_DEV / "pairs.csv").exists():
        sys.exit(f"bench_prepare: real sample not found at {APOLLO_DEV} (needs pairs.csv and the "
                 "Road0X / Gray_Label folders); nothing measured")
    with open(APOLLO_DEV / "pairs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def best_seconds(fn, items, repeats: int = REPEATS) -> float:
    """Fastest of `repeats` passes of fn over items, in seconds per item."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return best / len(items)


# ----------------------------------------------------------------------------- 1. LUT vs loop

def loop_encode(ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """The usual per-id loop: one full-frame mask per Apollo id of the table."""
    out = np.zeros_like(ids)
    for lab in label_table():
        out[ids == lab.id] = lut[lab.id]
    return out


def bench_lut(pairs: list[dict]) -> dict:
    """ms per label for Scheme.encode and for the loop, on every real full-size label."""
    scheme = load_scheme("apollo8")
    lut = scheme.train_lut("background")
    labels = [read_label(APOLLO_DEV / row["label"]) for row in pairs]
    for ids in labels:
        assert np.array_equal(scheme.encode(ids), loop_encode(ids, lut)), "LUT and loop disagree"
    lut_s = best_seconds(scheme.encode, labels)
    loop_s = best_seconds(lambda ids: loop_encode(ids, lut), labels)
    shape = labels[0].shape
    return {"lut_ms": lut_s * 1e3, "loop_ms": loop_s * 1e3, "labels": len(labels), "shape": shape}


# ----------------------------------------------------------------------------- 2. workers

def warm_page_cache(pairs: list[dict]) -> None:
    """Read every file once so neither timed run pays for the first disk read."""
    for row in pairs:
        for key in ("image", "label", "label_alt"):
            (APOLLO_DEV / row[key]).read_bytes()


def timed_prepare(data_root, out_dir, workers: int) -> tuple[float, object]:
    cfg = load_config()
    t0 = time.perf_counter()
    res = prepare(data_root, out_dir, cfg, workers=workers)
    return time.perf_counter() - t0, res


def bench_workers(pairs: list[dict], tmp: Path) -> dict:
    """frames/s of prepare on the real folder with 1 and 2 workers; same lists either way."""
    warm_page_cache(pairs)
    one_s, one = timed_prepare(APOLLO_DEV, tmp / "w1", 1)
    two_s, two = timed_prepare(APOLLO_DEV, tmp / "w2", 2)
    for name in ("train.csv", "val.csv"):
        assert (tmp / "w1" / name).read_bytes() == (tmp / "w2" / name).read_bytes(), f"{name} differs"
    assert one.pairs_found == len(pairs) and not one.problems, one.problems
    return {"frames": one.pairs_found, "fps_1": one.pairs_found / one_s, "fps_2": two.pairs_found / two_s}


# ----------------------------------------------------------------------------- 3. memory

def link_tree(dst: Path, pairs: list[dict], copies: int) -> int:
    """A real-layout tree of symlinks: each pair `copies` times under new keys and records."""
    count = 0
    for k in range(copies):
        for row in pairs:
            for key in ("image", "label"):
                parts = list(Path(row[key]).parts)
                parts[3] = f"Record{k}{parts[3][len('Record'):]}"
                parts[-1] = f"c{k}_{parts[-1]}"
                link = dst.joinpath(*parts)
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(APOLLO_DEV / row[key], link)
            count += 1
    return count


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process plus all its children (workers), in bytes."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass  # a worker that exited between listing and reading
    return total


class PeakSampler:
    """Samples tree_rss of this process in a thread; `peak` is the largest value seen."""

    def __init__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.proc))
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self):
        self.peak = tree_rss(self.proc)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def peak_prepare(data_root: Path, out_dir: Path, workers: int = 2) -> dict:
    gc.collect()
    baseline = psutil.Process().memory_info().rss
    with PeakSampler() as sampler:
        seconds, res = timed_prepare(data_root, out_dir, workers)
    return {"frames": res.pairs_found, "peak": sampler.peak, "baseline": baseline, "seconds": seconds}


def bench_memory(pairs: list[dict], tmp: Path) -> dict:
    """Peak RSS (main + workers) of prepare on N frames and on MEMORY_COPIES x N frames."""
    small, large = tmp / "n", tmp / "4n"
    link_tree(small, pairs, 1)
    link_tree(large, pairs, MEMORY_COPIES)
    return {"n": peak_prepare(small, tmp / "out_n"), "4n": peak_prepare(large, tmp / "out_4n")}


# ----------------------------------------------------------------------------- report

def row(name: str, value: str, baseline: str, ratio: str, target: str) -> str:
    return f"{name:<44}{value:>16}{baseline:>16}{ratio:>10}   {target}"


def mb(b: float) -> str:
    return f"{b / 2**20:.0f} MB"


def report(lut: dict, work: dict, mem: dict) -> str:
    lut_x = lut["loop_ms"] / lut["lut_ms"]
    work_x = work["fps_2"] / work["fps_1"]
    n, n4 = mem["n"], mem["4n"]
    mem_x = n4["peak"] / n["peak"]
    growth = (n["peak"] - n["baseline"], n4["peak"] - n4["baseline"])
    h, w = lut["shape"]
    lines = [
        f"real sample: {APOLLO_DEV} ({lut['labels']} labels {w}x{h}); {len(os.sched_getaffinity(0))} usable CPUs",
        row("measure", "value", "baseline", "ratio", "target"),
        row("encode ms/label: LUT vs per-id loop", f"{lut['lut_ms']:.2f} ms", f"{lut['loop_ms']:.2f} ms",
            f"{lut_x:.1f}x", ">= 10x " + ("ok" if lut_x >= 10 else "MISSED")),
        row(f"prepare frames/s ({work['frames']}): 2 vs 1 workers", f"{work['fps_2']:.2f}", f"{work['fps_1']:.2f}",
            f"{work_x:.2f}x", "> 1x on 2 cores"),
        row(f"peak RSS main+workers: {n4['frames']} vs {n['frames']} frames", mb(n4["peak"]), mb(n["peak"]),
            f"{mem_x:.2f}", "< 1.3 " + ("ok" if mem_x < 1.3 else "MISSED")),
        row("  growth above the pre-run RSS of main", mb(growth[1]), mb(growth[0]),
            f"{growth[1] / max(growth[0], 1):.2f}", ""),
        row(f"  prepare seconds: {n4['frames']} vs {n['frames']} frames", f"{n4['seconds']:.1f} s",
            f"{n['seconds']:.1f} s", f"{n4['seconds'] / n['seconds']:.2f}", "~4 (linear)"),
        f"RESULT lut_speedup={lut_x:.1f}x prepare_2w_vs_1w={work_x:.2f}x peak_mem_4N_vs_N={mem_x:.2f}",
    ]
    return "\n".join(lines)


def main() -> int:
    pairs = load_pairs()
    lut = bench_lut(pairs)
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = bench_workers(pairs, Path(tmp))
        mem = bench_memory(pairs, Path(tmp))
    print(report(lut, work, mem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
