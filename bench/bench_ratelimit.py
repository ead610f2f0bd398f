"""Benchmark of the /api rate limiter: CPU per ``ApiRateLimiter.check`` on each store.

    .venv/bin/python bench/bench_ratelimit.py --repeat 5 --baseline-tree /tmp/old-tree

Each measurement is a child process that opens a limiter on a fresh store (memory; a SQLite
file in a new directory; a new key prefix on ``--redis-url``, deleted after), makes ``--warmup``
checks, then times ``--checks`` checks one after the other: CPU (``time.process_time``) and
wall time per check. The Redis server's own CPU is not in the figure; it is read from ``INFO
cpu`` before and after and printed beside it (the whole server's: other clients count too).

Scenarios (the gateway's default budgets: a client 6000/minute, a person 300/minute):

- ``one-person``: one person calling through one portal (both budgets hot; her budget raised
  to 6000/minute so that nothing is refused);
- ``many-persons``: 2,000 persons in turn through one portal (each person's budget drawn once
  per 2,000 calls: sparse; the portal's hot), the common shape of a portal's traffic;
- ``machine``: a machine client (client credentials: its client budget only);
- ``portal``: ``bench/bench_routing.py --persons 1000``'s traffic: 1,000 persons in turn through
  one portal, both budgets 1,000,000/second as that bench's configuration sets them (nothing is
  refused). With ``--rate R`` the leases see ``R`` checks a second of one worker (each person
  ``R / 1000`` a second) whatever the speed of the process: ``--rate 1000`` is one of two
  workers serving 2,000 calls a second. Give it ``--warmup 2000`` or more, so that every person
  has been seen twice before the count (a lease learns a budget's rate from its second draw).

``--rate R``: the limiter's clock (the leases' and the breaker's; the windows run on the store's
time) is simulated, moving ``1 / R`` seconds at each check, so that the leases' blocks are those
of ``R`` checks a second under valgrind too (there a process runs some 50 times slower).

``--other-python PATH``: the variants ``other python`` (this tree) and ``baseline on other
python`` run their children on that interpreter, another environment's (for instance one with
the ``hiredis`` parser installed).

``--in-flight N``: the checks go N at a time (``asyncio.gather`` of N checks, the next N when
they are all answered), as N concurrent calls in one worker; 1 (the default): one after the
other. On SQLite the N draws share one transaction; a draw alone on the loop goes at once.

Variant ``always queued`` (SQLite): this tree with every draw queued for the next turn's shared
transaction, even one that nothing could join (``SqliteStorage.at_once`` off, as on a loop that
does not show its ready queue): what a lone call would pay without the at-once path.

Variants, run interleaved round after round so that all meet the same moments of a shared
machine: this tree; this tree with ``leases: false``; with ``--baseline-tree`` the gateway
imported from that source tree. The table gives the median of ``--repeat`` rounds.

``--callgrind``: instructions per check instead (this process only, not the Redis server's),
which the machine's load does not move: each measurement is two children under ``valgrind
--tool=callgrind``, with ``--checks`` and with ``--callgrind-base`` checks, and the difference
of their totals over the difference of checks (start-up and warm-up cancel out). Under
valgrind a process runs some 50 times slower, so a lease's block, sized to the rate, is
smaller than at full speed. On SQLite the purge of expired windows (once a minute, on a draw)
is held off after the warm-up in every run, so that it does not fall in one of the two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
STORES = ("memory", "sqlite", "redis")
SCENARIOS = ("one-person", "many-persons", "machine", "portal")
PORTAL_PERSONS = 1000
PORTAL_RATE = "1000000/second"
"""bench_routing.py's budgets (its configuration), for the ``portal`` scenario."""


async def measure(args: argparse.Namespace) -> dict[str, float]:
    """In the child: one limiter, ``args.checks`` checks timed."""
    from redis.asyncio import Redis  # noqa: PLC0415 - after the tree is on sys.path

    from gateway.principal import Principal  # noqa: PLC0415
    from gateway.ratelimit.config import RateLimitSettings  # noqa: PLC0415
    from gateway.ratelimit.limiter import ApiRateLimiter, Verdict  # noqa: PLC0415

    prefix = f"tongban-bench:{secrets.token_hex(6)}:"
    config: dict[str, Any] = {
        "store": args.store,
        "redis_url": args.redis_url,
        "redis_prefix": prefix,
        "client": PORTAL_RATE if args.scenario == "portal" else "6000/minute",
        "person": (
            PORTAL_RATE
            if args.scenario == "portal"
            else "6000/minute"
            if args.scenario == "one-person"
            else "300/minute"
        ),
        # The most a check may wait on the store: a busy machine must not make it fail open.
        "store_timeout": 5,
    }
    if args.person:
        config["person"] = args.person
    if args.no_leases:
        config["leases"] = False
    settings = RateLimitSettings.model_validate(config)
    simulated = [0.0]
    step = 1 / args.rate if args.rate else 0.0
    clock = (lambda: simulated[0]) if args.rate else time.monotonic
    limiter = ApiRateLimiter.from_settings(settings, data_dir=Path(tempfile.mkdtemp()), clock=clock)
    if args.always_queued:
        limiter._local.at_once = False  # type: ignore[union-attr]
    if args.scenario == "machine":
        principals = [Principal(subject="system-a", level="system", client_id="system-a")]
    else:
        persons = (
            1
            if args.scenario == "one-person"
            else PORTAL_PERSONS
            if args.scenario == "portal"
            else 2000
        )
        principals = [
            Principal(subject=f"s{n}", level="L2", client_id="portal", person=f"person-{n}")
            for n in range(persons)
        ]
    count = len(principals)
    redis = Redis.from_url(args.redis_url) if args.store == "redis" else None

    async def server_cpu() -> float:
        if redis is None:
            return 0.0
        info = await redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    in_flight = args.in_flight

    async def check(principal: Principal) -> Verdict:
        simulated[0] += step  # with --rate: the simulated clock moves as the check starts
        return await limiter.check(principal)

    one = check if args.rate else limiter.check

    async def checks(start: int, number: int) -> list[Verdict]:
        """``number`` checks from the ``start``-th principal on, ``in_flight`` at once."""
        verdicts: list[Verdict] = []
        for first in range(start, start + number, in_flight):
            if in_flight == 1:
                verdicts.append(await one(principals[first % count]))
                continue
            batch = range(first, min(first + in_flight, start + number))
            verdicts += await asyncio.gather(*(one(principals[n % count]) for n in batch))
        return verdicts

    # On SQLite: the transactions and the calls drawn in them (a count the load does not move).
    steps = {"transactions": 0, "calls": 0, "writes": 0}
    local = limiter._local
    if local is not None and args.count_writes:

        def statement(sql: str) -> None:
            steps["writes"] += sql.startswith("INSERT")

        with local._db.locked() as conn:
            conn.set_trace_callback(statement)
    if local is not None:
        acquire_calls = local.acquire_calls

        def counted(calls: Any) -> Any:
            steps["transactions"] += 1
            steps["calls"] += len(calls)
            return acquire_calls(calls)

        local.acquire_calls = counted  # type: ignore[method-assign]
    try:
        await checks(0, args.warmup)
        steps["transactions"] = steps["calls"] = steps["writes"] = 0
        if limiter._local is not None:
            # The once-a-minute purge of expired windows held off for the counted checks: under
            # valgrind a run lasts minutes, and a purge of thousands of rows falling in one of
            # the two runs callgrind subtracts (and not the other) swamps the difference.
            limiter._local._next_purge = float("inf")
        server_before = await server_cpu()
        cpu, wall = time.process_time(), time.perf_counter()
        verdicts = await checks(args.warmup, args.checks)
        refused = sum(not verdict.allowed for verdict in verdicts)
        unchecked = sum(not verdict.checked for verdict in verdicts)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server = await server_cpu() - server_before
        if refused or unchecked:
            raise SystemExit(f"{refused} refused, {unchecked} unchecked: not a fair run")
    finally:
        await limiter.aclose()
        if redis is not None:
            async for name in redis.scan_iter(match=f"{prefix}*"):
                await redis.delete(name)
            await redis.aclose()
    return {
        "cpu_us": 1e6 * cpu / args.checks,
        "wall_us": 1e6 * wall / args.checks,
        "server_us": 1e6 * server / args.checks,
        "transactions": steps["transactions"] / args.checks,
        "store_calls": steps["calls"] / args.checks,
        "writes": steps["writes"] / args.checks,
    }


def child(
    tree: Path,
    store: str,
    scenario: str,
    args: argparse.Namespace,
    *,
    leases: bool,
    python: str = sys.executable,
    checks: int | None = None,
    valgrind: list[str] | None = None,
    extra: tuple[str, ...] = (),
) -> Any:
    argv = [
        *(valgrind or []),
        python,
        str(Path(__file__).resolve()),
        "--child",
        "--tree",
        str(tree),
        "--store",
        store,
        "--scenario",
        scenario,
        "--checks",
        str(checks or args.checks),
        "--warmup",
        str(args.warmup),
        "--redis-url",
        args.redis_url,
        "--in-flight",
        str(args.in_flight),
        "--rate",
        str(args.rate),
    ]
    if args.person:
        argv += ["--person", args.person]
    if args.count_writes:
        argv.append("--count-writes")
    if not leases:
        argv.append("--no-leases")
    argv += extra
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=tree)
    if done.returncode:
        raise SystemExit(f"{tree} {store} {scenario}: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def instructions(
    tree: Path,
    store: str,
    scenario: str,
    args: argparse.Namespace,
    *,
    leases: bool,
    python: str = sys.executable,
    extra: tuple[str, ...] = (),
) -> float:
    """Instructions per check of this process, counted by callgrind (see the docstring)."""
    totals: list[int] = []
    for checks in (args.callgrind_base, args.checks):
        with tempfile.TemporaryDirectory() as out:
            valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out"]
            child(
                tree,
                store,
                scenario,
                args,
                leases=leases,
                python=python,
                checks=checks,
                valgrind=valgrind,
                extra=extra,
            )
            text = Path(out, "cg.out").read_text()
        totals.append(int(text.split("\ntotals: ")[1].split()[0]))
    difference: int = args.checks - args.callgrind_base
    return (totals[1] - totals[0]) / difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the table gives medians")
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--variants", default="baseline,leases off,this tree")
    parser.add_argument("--baseline-tree", help="a source tree of the gateway to compare with")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=1,
        help="checks started at once (asyncio.gather), as concurrent calls of one worker",
    )
    parser.add_argument(
        "--other-python",
        help="another environment's interpreter (say, with other packages): variants "
        "'other python' (this tree) and 'baseline on other python' run on it",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="checks a second the leases see (a simulated clock); 0: the real clock",
    )
    parser.add_argument("--person", help="the person budget instead of the scenario's")
    parser.add_argument(
        "--count-writes",
        action="store_true",
        help="count the budgets written to the SQLite file (a trace of its statements: slower)",
    )
    parser.add_argument("--callgrind", action="store_true", help="instructions per check")
    parser.add_argument("--callgrind-base", type=int, default=100, help="checks of the base run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", default=str(HERE), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--no-leases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--always-queued", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    portal_only = args.scenarios == "portal" or args.scenario == "portal"
    if args.warmup + args.checks >= 6000 and not portal_only:
        parser.error("--warmup + --checks must stay below 6000, the client budget per minute")
    if args.child:
        sys.path.insert(0, args.tree)
        print(json.dumps(asyncio.run(measure(args))))
        return

    python = sys.executable
    variants: list[tuple[str, Path, bool, str]] = []
    if args.baseline_tree:
        variants.append(("baseline", Path(args.baseline_tree).resolve(), True, python))
    variants += [
        ("leases off", HERE, False, python),
        ("this tree", HERE, True, python),
        ("always queued", HERE, True, python),
    ]
    if args.other_python:
        variants.append(("other python", HERE, True, args.other_python))
        if args.baseline_tree:
            tree = Path(args.baseline_tree).resolve()
            variants.append(("baseline on other python", tree, True, args.other_python))
    variants = [variant for variant in variants if variant[0] in args.variants.split(",")]
    stores = args.stores.split(",")
    scenarios = args.scenarios.split(",")
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    print(f"in flight: {args.in_flight}; load average at start: {os.getloadavg()}", flush=True)
    for round_ in range(args.repeat):
        for store in stores:
            for scenario in scenarios:
                if store == "memory" and scenario not in ("one-person", "portal"):
                    continue  # one process: no store step to save, one row is enough (and
                    # the portal's, what one worker's rate limit costs under bench_routing)
                for name, tree, leases, interpreter in variants:
                    if store == "memory" and name == "leases off":
                        continue
                    if store != "sqlite" and name == "always queued":
                        continue
                    extra = ("--always-queued",) if name == "always queued" else ()
                    if args.callgrind:
                        count = instructions(
                            tree,
                            store,
                            scenario,
                            args,
                            leases=leases,
                            python=interpreter,
                            extra=extra,
                        )
                        figures = {"cpu_us": count, "server_us": 0.0}
                    else:
                        figures = child(
                            tree,
                            store,
                            scenario,
                            args,
                            leases=leases,
                            python=interpreter,
                            extra=extra,
                        )
                    results.setdefault((store, scenario, name), []).append(figures)
                    print(
                        f"round {round_ + 1}: {store} {scenario} {name}: "
                        + (
                            f"{figures['cpu_us']:,.0f} instructions"
                            if args.callgrind
                            else f"{figures['cpu_us']:.1f} µs ({figures['server_us']:.0f}); "
                            f"SQLite transactions {figures.get('transactions', 0):.3f}, calls "
                            f"drawn {figures.get('store_calls', 0):.3f}, budgets written "
                            f"{figures.get('writes', 0):.3f} per check"
                        ),
                        flush=True,
                    )
        print(f"round {round_ + 1}/{args.repeat} done, load {os.getloadavg()}", flush=True)

    names = [name for name, _, _, _ in variants]
    print()
    if args.callgrind:
        print("Instructions per check (callgrind), median of", args.repeat, "rounds")
    else:
        print("CPU µs per check, median of", args.repeat, "rounds (Redis server's CPU in brackets)")
    print()
    print("| store | scenario | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for store in stores:
        for scenario in scenarios:
            cells = []
            for name in names:
                runs = results.get((store, scenario, name))
                if not runs:
                    cells.append("–")
                    continue
                cpu = statistics.median(run["cpu_us"] for run in runs)
                server = statistics.median(run["server_us"] for run in runs)
                if args.callgrind:
                    cells.append(f"{cpu:,.0f}")
                else:
                    cells.append(f"{cpu:.1f}" + (f" ({server:.0f})" if store == "redis" else ""))
            if any(cell != "–" for cell in cells):
                print(f"| {store} | {scenario} | " + " | ".join(cells) + " |")
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
