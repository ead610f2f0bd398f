"""Where a demo process's memory goes: an opt-in probe for the soak (bench/soak.py).

With ``TONGBAN_MEMORY_PROBE`` naming a directory, the process starts ``tracemalloc`` (keeping
``TONGBAN_MEMORY_PROBE_FRAMES`` frames per allocation, 1 unless set: every frame kept slows
every allocation; 0 traces nothing) and, at each SIGUSR1, writes into that directory

    snapshot-NNN.tracemalloc   the live allocations (``tracemalloc.Snapshot.load``), if traced
    objects-NNN.json           how many objects of each type the garbage collector tracks
    process-NNN.json           RSS, Python's traced heap, SQLite's and malloc's own (KiB)

so that two moments of a run can be diffed by file:line and by type (``diff``), and the RSS
split into what Python, SQLite and the allocator hold. Off by default: tracing costs CPU on
every allocation, and a soak run with it measures capacity lower.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

PROBE_ENV = "TONGBAN_MEMORY_PROBE"
FRAMES_ENV = "TONGBAN_MEMORY_PROBE_FRAMES"
_NOISE = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def start_from_env(loop: asyncio.AbstractEventLoop) -> Path | None:
    """Start tracing and dump at each SIGUSR1 when the environment asks for it."""
    where = os.environ.get(PROBE_ENV)
    if not where:
        return None
    directory = Path(where)
    directory.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get(FRAMES_ENV) or 1)
    if frames > 0:  # 0: no tracing, only the object counts and the process's figures
        tracemalloc.start(frames)
    taken = [0]

    def dump() -> None:
        taken[0] += 1
        write_dump(directory, taken[0])

    loop.add_signal_handler(signal.SIGUSR1, dump)
    return directory


_MALLINFO2 = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2.split()]


def process_figures() -> dict[str, int]:
    """Where the process's memory is, in KiB: its RSS; what Python traced (and tracemalloc's own
    bookkeeping); what SQLite holds (page caches, statements: ``sqlite3_memory_used``); what
    glibc's malloc handed out and holds free (``mallinfo2``). Zero where not available."""
    figures = {"rss_kib": 0, "traced_kib": 0, "tracemalloc_overhead_kib": 0, "sqlite_kib": 0,
               "malloc_in_use_kib": 0, "malloc_free_kib": 0, "malloc_mmapped_kib": 0}  # fmt: skip
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                figures["rss_kib"] = int(line.split()[1])
    figures["traced_kib"] = tracemalloc.get_traced_memory()[0] // 1024
    figures["tracemalloc_overhead_kib"] = tracemalloc.get_tracemalloc_memory() // 1024
    with contextlib.suppress(OSError, AttributeError):
        sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
        figures["sqlite_kib"] = int(sqlite.sqlite3_memory_used()) // 1024
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        figures["malloc_in_use_kib"] = int(info.uordblks) // 1024
        figures["malloc_free_kib"] = int(info.fordblks) // 1024
        figures["malloc_mmapped_kib"] = int(info.hblkhd) // 1024
    return figures


def object_counts() -> Counter[str]:
    """Objects the collector tracks, by ``module.qualname`` of their type."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return counts


def write_dump(directory: Path, number: int) -> None:
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces(_NOISE)
        snapshot.dump(str(directory / f"snapshot-{number:03d}.tracemalloc"))
    counts = object_counts()
    (directory / f"objects-{number:03d}.json").write_text(
        json.dumps(dict(counts.most_common()), indent=0), encoding="utf-8"
    )
    (directory / f"process-{number:03d}.json").write_text(
        json.dumps(process_figures()), encoding="utf-8"
    )


def diff(directory: Path, first: int, last: int, top: int = 25) -> dict[str, Any]:
    """The ``top`` allocation sites and object types that grew most from dump ``first`` to
    dump ``last`` (sizes in KiB), and the process's figures at each dump."""
    figures = [
        json.loads((directory / f"process-{n:03d}.json").read_text(encoding="utf-8"))
        for n in range(first, last + 1)
    ]
    old = json.loads((directory / f"objects-{first:03d}.json").read_text(encoding="utf-8"))
    new = json.loads((directory / f"objects-{last:03d}.json").read_text(encoding="utf-8"))
    grown = sorted(((new[k] - old.get(k, 0), k) for k in new), reverse=True)[:top]
    found: dict[str, Any] = {
        "process_kib_at_each_dump": {k: [f[k] for f in figures] for k in figures[0]},
        "object_types": [{"type": k, "count_diff": d, "count": new[k]} for d, k in grown if d],
    }
    if not (directory / f"snapshot-{first:03d}.tracemalloc").exists():
        return found
    before = tracemalloc.Snapshot.load(str(directory / f"snapshot-{first:03d}.tracemalloc"))
    after = tracemalloc.Snapshot.load(str(directory / f"snapshot-{last:03d}.tracemalloc"))
    frames = after.traceback_limit
    sites = []
    for stat in after.compare_to(before, "traceback" if frames > 1 else "lineno")[:top]:
        where = [f"{f.filename.rsplit('site-packages/', 1)[-1]}:{f.lineno}" for f in stat.traceback]
        sites.append(
            {
                "where": where[0] if frames <= 1 else list(reversed(where)),
                "kib_diff": round(stat.size_diff / 1024, 1),
                "kib": round(stat.size / 1024, 1),
                "count_diff": stat.count_diff,
            }
        )
    total_before = sum(s.size for s in before.statistics("filename"))
    total_after = sum(s.size for s in after.statistics("filename"))
    found["traced_kib"] = [round(total_before / 1024), round(total_after / 1024)]
    found["sites"] = sites
    return found
