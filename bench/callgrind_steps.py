"""Instructions per call of a bench's steps, counted by callgrind in one process.

The benches that price single steps of a routed call (``bench_call_steps.py``,
``bench_audit_events.py``) run themselves again under ``valgrind --tool=callgrind`` with
``--inner``: for each step the inner process makes ``small`` calls and then ``small + count``
calls, each between a zeroing and a dump of its counters (``control``). The instructions per
call are the difference of the two dumps over ``count``: what the zeroing, the dumping and the
step's set-up cost cancels out.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_TOTALS = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def control(option: str) -> None:
    """Zero (``-z``) or dump (``-d``) this process's counters: it runs under callgrind."""
    subprocess.run(
        ["callgrind_control", option, str(os.getpid())],
        check=True,
        capture_output=True,
        timeout=600,
    )


def counted(
    script: str,
    steps: Sequence[str],
    *,
    small: int,
    count: int,
    out: Path,
    extra: Sequence[str] = (),
    tree: str | None = None,
) -> dict[str, float]:
    """Run ``script --inner`` under callgrind for ``steps``; instructions per call of each."""
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
        sys.executable, script, "--inner", "--steps", ",".join(steps),
        "--counts", f"{small},{small + count}", *extra,
    ]  # fmt: skip
    if tree:
        command += ["--tree", tree]
    subprocess.run(command, check=True, capture_output=True, timeout=3000)
    totals = []
    for number in range(1, 2 * len(steps) + 1):
        found = _TOTALS.search(Path(f"{out}.{number}").read_text(errors="replace"))
        assert found, f"{out}.{number}"
        totals.append(int(found.group(1)))
    return {step: (totals[2 * i + 1] - totals[2 * i]) / count for i, step in enumerate(steps)}


def add_arguments(parser: argparse.ArgumentParser, steps: Sequence[str]) -> None:
    """The options every step bench takes: which steps, how many calls, which tree, counted
    under callgrind or not, and the inner process's own (hidden) ones."""
    parser.add_argument("--count", type=int, default=2_000, help="calls counted per step")
    parser.add_argument("--step", choices=steps, action="append", help="default: every step")
    parser.add_argument("--tree", help="import gateway from this source tree")
    parser.add_argument("--callgrind", action="store_true", help="count, per call")
    parser.add_argument("--repeat", type=int, default=1, help="processes, one after the other")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="", help=argparse.SUPPRESS)
    parser.add_argument("--counts", default="", help=argparse.SUPPRESS)
