"""The findings stage on a warm cache: what re-reading the cached results costs, and what it saves
to read each checkpoint and each pair's seed-paper influence once.

    python benchmarks/bench_warm_findings.py [--profile faithful] [--repeats 2] [--out FILE]

The findings stage reads every study of the profile through its `ensure_*` function, and each
of those first checks that the training runs it depends on are current: a checksum of every
scheduled checkpoint. At `faithful` that is 39 checks of the same 20 runs (and of the ladder's
and recipes' runs). Three rivals, alternated round by round in one process on the same cached
results (run `pdeinf reproduce --profile PROFILE` first; nothing is recomputed):

- `every read`: each check reads and verifies the checkpoint (`checkpoints.usable`), and each
  of the five seed-paper studies reads every pair's influence itself;
- `checkpoints once`: `checkpoints.verify`, which remembers a verified file by its path, size,
  mtime, ctime and inode for the rest of the process (cleared before each timed run);
- `checkpoints and influence once`: also `study_findings.shared_reads`, within which the
  seed-paper studies share one read of each pair's influence (what `findings_stage` does).

Every rival writes the same findings table (checked). Prints the median wall time of each rival and
their ratio, and writes the table to a markdown file. The machine is shared: quote the ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from pdeinf.atomic import write_text
from pdeinf.pipeline import study_findings
from pdeinf.pipeline.findings import findings_path, findings_stage
from pdeinf.training import checkpoints


def _every_check_reads(path) -> bool:
    return checkpoints.usable(path) is not None


def _timed(profile: str, verify, shared: bool) -> tuple[float, bytes]:
    checkpoints._VERIFIED.clear()
    original, checkpoints.verify = checkpoints.verify, verify
    reads = study_findings.shared_reads
    study_findings.shared_reads = reads if shared else contextlib.nullcontext
    try:
        start = time.perf_counter()
        path = findings_stage(profile)
        return time.perf_counter() - start, Path(path).read_bytes()
    finally:
        checkpoints.verify, study_findings.shared_reads = original, reads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="faithful")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_warm_findings.md"))
    args = parser.parse_args(argv)
    if not findings_path(args.profile).exists():
        print(f"no findings table of {args.profile!r}: run `pdeinf reproduce --profile {args.profile}` first",
              file=sys.stderr)
        return 2
    rivals = {"every read": (_every_check_reads, False), "checkpoints once": (checkpoints.verify, False),
              "checkpoints and influence once": (checkpoints.verify, True)}
    times: dict[str, list[float]] = {name: [] for name in rivals}
    tables = set()
    for _ in range(args.repeats):
        for name, (verify, shared) in rivals.items():
            seconds, table = _timed(args.profile, verify, shared)
            times[name].append(seconds)
            tables.add(table)
            print(f"{name}: {seconds:.1f} s", flush=True)
    if len(tables) != 1:
        print("the rivals wrote different findings tables", file=sys.stderr)
        return 1
    base = statistics.median(times["every read"])
    rows = [f"| {name} | {statistics.median(t):.1f} | {base / statistics.median(t):.2f}x |"
            for name, t in times.items()]
    table = "\n".join([
        f"# The findings stage on a warm cache ({args.profile})", "",
        (f"`python benchmarks/bench_warm_findings.py --profile {args.profile} --repeats {args.repeats}` on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; median of "
        f"{args.repeats} alternated runs each; the same findings table from every rival."), "",
        "| rival | median s | speed-up |", "|---|---|---|", *rows, ""])
    print(table)
    write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
