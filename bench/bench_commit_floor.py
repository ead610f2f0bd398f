"""The floor under a durable audit commit on this disk: what one fsync'd SQLite commit costs.

    .venv/bin/python bench/bench_commit_floor.py --commits 2000 --dir /path/on/the/data/disk

No gateway code: a bare SQLite file in WAL mode, one small row per transaction, measured three
ways, each commit timed from BEGIN to the return of the durable step:

* ``sqlite FULL``: ``synchronous=FULL``, so COMMIT itself fsyncs the WAL;
* ``sqlite NORMAL + fsync``: ``synchronous=NORMAL`` (COMMIT writes the WAL without waiting for
  the disk) followed by ``os.fsync`` of the WAL file: what the audit store does (docs/audit.md);
* ``fsync alone``: ``os.write`` of 512 bytes and ``os.fsync`` on a plain file (the disk's own
  floor, without SQLite).

Then ``sqlite NORMAL + fsync`` again with the commits spaced (``--spacing-ms``, default 1 and 2:
one commit per millisecond or per two, as a group-committing audit store sees at 1,000 and 500
calls a second): on a virtual machine the disk's answer to an fsync after an idle moment can be
ten times slower than to one of a back-to-back stream, so the floor that a call at a moderate
rate pays is the spaced one, not the back-to-back one.

Prints p50 / p90 / p99 / max in milliseconds and the 1-minute load average before and after, so
a run on a busy machine can be told from one on a quiet machine. The directory must be on the
disk the data directory will be on (``/tmp`` may be a tmpfs, whose fsync costs nothing).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000

    return (
        f"p50 {at(0.50):6.3f}  p90 {at(0.90):6.3f}  p99 {at(0.99):6.3f}  "
        f"max {ordered[-1] * 1000:6.3f} ms  (mean {statistics.fmean(ordered) * 1000:.3f})"
    )


def timed(commits: int, step: Callable[[int], None], spacing: float = 0.0) -> list[float]:
    """Each step timed; with ``spacing`` (seconds), step ``n`` starts ``n * spacing`` after the
    first (at once when the one before it ran late), as commits arrive at a fixed rate."""
    samples = []
    first = time.perf_counter()
    for n in range(commits):
        if spacing:
            ahead = first + n * spacing - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)  # noqa: TID251 (no event loop here: a plain wait)
        started = time.perf_counter()
        step(n)
        samples.append(time.perf_counter() - started)
    return samples


def sqlite_full(path: Path, commits: int) -> list[float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS r (n INTEGER PRIMARY KEY, body TEXT)")

    def step(n: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO r VALUES (?, ?)", (n, "x" * 400))
        conn.execute("COMMIT")

    try:
        return timed(commits, step)
    finally:
        conn.close()


def sqlite_normal_fsync(path: Path, commits: int, spacing: float = 0.0) -> list[float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE IF NOT EXISTS r (n INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO r VALUES (-1, '')")  # the WAL file exists from here on
    wal = os.open(f"{path}-wal", os.O_RDONLY)

    def step(n: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO r VALUES (?, ?)", (n, "x" * 400))
        conn.execute("COMMIT")
        os.fsync(wal)

    try:
        return timed(commits, step, spacing)
    finally:
        os.close(wal)
        conn.close()


def fsync_alone(path: Path, commits: int) -> list[float]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block = b"x" * 512

    def step(_n: int) -> None:
        os.write(fd, block)
        os.fsync(fd)

    try:
        return timed(commits, step)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="a directory on the disk")
    parser.add_argument(
        "--spacing-ms",
        default="1,2",
        help="comma-separated spacings of the spaced runs, in ms ('' for none)",
    )
    args = parser.parse_args()
    spacings = [float(x) for x in args.spacing_ms.split(",") if x.strip()]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="commit-floor-") as tmp:
        where = Path(tmp)
        runs = {
            "sqlite FULL": sqlite_full(where / "full.sqlite", args.commits),
            "sqlite NORMAL + fsync": sqlite_normal_fsync(where / "normal.sqlite", args.commits),
            "fsync alone": fsync_alone(where / "plain.bin", args.commits),
        }
        for ms in spacings:
            runs[f"NORMAL + fsync, {ms:g} ms apart"] = sqlite_normal_fsync(
                where / f"spaced-{ms:g}.sqlite", args.commits, ms / 1000
            )
    load_after = os.getloadavg()[0]
    print(
        f"{args.commits} commits each in {args.dir} (load average {load_before:.2f} → "
        f"{load_after:.2f}, {os.cpu_count()} CPUs)"
    )
    for name, samples in runs.items():
        print(f"  {name:<30} {percentiles(samples)}")


if __name__ == "__main__":
    main()
