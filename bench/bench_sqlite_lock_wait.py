"""What a draw on the shared rate-limit file waits when another worker holds its write lock.

    .venv/bin/python bench/bench_sqlite_lock_wait.py --draws 5000 --rounds 2

Two processes (two workers of one instance) draw in turn on one SQLite file in WAL mode, as
`serve --workers 2` does on ``ratelimits.sqlite``: each draw is ``BEGIN IMMEDIATE``, a point
read, an upsert and ``COMMIT`` on a random one of 1,000 keys, then a pause of ``--gap-ms`` (the
rest of a routed call's work on the event loop). Each draw is timed from BEGIN to COMMIT. Two
ways of waiting for the lock when the other process holds it, in alternate rounds on a fresh
file:

* ``busy handler``: ``busy_timeout`` 250 ms, SQLite's own handler, which sleeps 1, 2, 5 ms and
  more between tries (the rate-limit store before);
* ``yielding``: ``busy_timeout`` 0 and ``gateway.stores.sqlite.begin_yielding`` with the same
  250 ms (the store now).

Prints per process p50 / p99 / max in milliseconds and how many draws took 1 ms or more: on
the event loop, that is how long the worker's every other call waited too.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("busy handler", "yielding")


def drawer(path: str, draws: int, mode: str, gap: float) -> str:
    """One process's draws; its summary line."""
    sys.path.insert(0, str(ROOT))
    from gateway.stores.sqlite import begin_yielding  # noqa: PLC0415 - the tree under test

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {250 if mode == 'busy handler' else 0}")
    conn.execute("PRAGMA synchronous = OFF")
    rng = random.Random(os.getpid())
    times: list[float] = []
    for _ in range(draws):
        key = f"person-{rng.randrange(1000)}"
        start = time.perf_counter()
        if mode == "busy handler":
            conn.execute("BEGIN IMMEDIATE")
        else:
            begin_yielding(conn, 0.25)
        conn.execute("SELECT n FROM counters WHERE k = ?", (key,)).fetchone()
        conn.execute(
            "INSERT INTO counters VALUES (?, 1) ON CONFLICT (k) DO UPDATE SET n = n + 1", (key,)
        )
        conn.execute("COMMIT")
        times.append(time.perf_counter() - start)
        time.sleep(gap)  # noqa: TID251 - a plain process, no event loop
    conn.close()
    times.sort()

    def at(share: float) -> float:
        return times[max(0, int(share * len(times)) - 1)] * 1e3

    slow = sum(t >= 1e-3 for t in times)
    return (
        f"p50 {at(0.5):.3f}  p99 {at(0.99):.3f}  max {times[-1] * 1e3:.2f} ms  "
        f"draws of 1 ms or more: {slow} of {draws}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5000, help="draws per process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gap-ms", type=float, default=0.3, help="pause after each draw")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "drawer":
        print(drawer(args.path, args.draws, args.mode, args.gap_ms / 1000), flush=True)
        return
    print(f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%H:%M:%S', time.gmtime())} UTC")
    for round_ in range(1, args.rounds + 1):
        for mode in MODES:
            with tempfile.TemporaryDirectory(prefix="tongban-lockwait-") as tmp:
                path = str(Path(tmp) / "ratelimits.sqlite")
                conn = sqlite3.connect(path)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("CREATE TABLE counters (k TEXT PRIMARY KEY, n INTEGER)")
                conn.commit()
                conn.close()
                argv = [sys.executable, __file__, "--role", "drawer", "--path", path]
                argv += ["--mode", mode, "--draws", str(args.draws), "--gap-ms", str(args.gap_ms)]
                procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in (1, 2)]
                for n, proc in enumerate(procs, 1):
                    out, _ = proc.communicate(timeout=600)
                    print(f"round {round_}  {mode:<12}  process {n}: {out.strip()}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%H:%M:%S', time.gmtime())} UTC")


if __name__ == "__main__":
    main()
