"""Instructions of the pieces of a sealed audit record, counted under callgrind.

Each step is one piece of what the writer does for one record of a routed call (a record of
the benchmark's shape, its canonical text about 800 bytes), made ``--count`` times:

- ``text``: the record's canonical text (``record_encoder``'s ``encode``);
- ``chain``: the chain rule as the writer applies it: ``new(prev + new(text).digest())``,
  then the new head's hex, ``new`` being ``hash_constructor("sha256")``;
- ``openssl_text`` / ``openssl_link``: one ``hashlib.sha256(data).digest()`` (OpenSSL's EVP)
  of the record's text / of a chain link's 64 bytes;
- ``builtin_text`` / ``builtin_link``: the same with CPython's own ``_sha256`` module;
- ``copy_text`` / ``copy_link``: a prepared ``hashlib.sha256()`` object's ``.copy()``, then
  ``update`` and ``digest``;
- ``sm3_chain``: the chain rule with ``hash_constructor("sm3")``;
- ``now_text``: a record's time stamp (``utc_now_text``);
- ``store``: one record of a routed call on a ``SqliteAuditStore`` (``synchronous=NORMAL``:
  no fsync, so nothing waits on the disk or a thread): ``append`` in batches of eight records
  of one chain (the records' transaction on the loop), then its lookup and subject rows
  (``_flush_lookups`` after every 64 records: two slices of 32; the store's own timed flush
  is switched off, so that the count does not depend on the time). Per record, not per call.

    .venv/bin/python bench/bench_audit_seal.py --callgrind
    .venv/bin/python bench/bench_audit_seal.py --callgrind --tree /tmp/base --step chain

``--callgrind`` runs the script under valgrind once: each step is warmed (200 calls), then made
100 and 100 + ``--count`` times between a zeroing and a dump of the counters
(``callgrind_steps``); the difference divided by ``--count`` is the step's instructions per
call. ``--tree DIR`` imports ``gateway`` from another source tree. Valgrind's processor has no
SHA extensions, so OpenSSL's SHA-256 runs its vector code here, not the SHA instructions
that a processor with them would use: the figures are instructions, not time.
"""

# ruff: noqa: PLC0415 - gateway is imported after --tree has put its tree first

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import callgrind_steps

HERE = Path(__file__).resolve().parent
STEPS = (
    "text", "chain", "openssl_text", "openssl_link", "builtin_text", "builtin_link",
    "copy_text", "copy_link", "sm3_chain", "now_text", "store",
)  # fmt: skip


def _event() -> Any:
    from gateway.audit.record import EventType, call_event_of

    return call_event_of(
        EventType.SERVICE_CALL_COMPLETED, "3f1c2a9e-6b7d-4c2e-9a51-0d3e8f7b6a21", None, None,
        "pw-7d1f3c", "L3", "portal", "svc", "63", "61", "sys", "lookup",
        "social-insurance-transfer", "ok", None, 1, 3, "sha256:" + "1" * 64, "sha256:" + "2" * 64,
        {"breaker": "closed", "subjects": ["pk-4a9e0c1d"]},
    )  # fmt: skip


def _store_step() -> Callable[[int], None]:
    """``store``: records appended eight at a time, their lookup rows flushed every 64."""
    import asyncio
    import tempfile as _tempfile

    from gateway.audit.store import StoredRecord
    from gateway.stores.sqlite_audit import SqliteAuditStore

    directory = _tempfile.mkdtemp(prefix="tongban-audit-seal-store-")
    loop = asyncio.new_event_loop()
    store = SqliteAuditStore(Path(directory) / "audit.sqlite", synchronous="NORMAL")
    loop.run_until_complete(store.open())
    # No flush on the store's timer (its second passes at another record under callgrind
    # in each run): the lookup rows are flushed here, every 64 records, and nowhere else.
    store._schedule_flush = lambda: None  # type: ignore[method-assign]
    text = "{" + '"x":"' + "y" * 780 + '"}'
    sequence = 0

    async def records(count: int) -> None:
        nonlocal sequence
        batch: list[Any] = []
        for n in range(count):
            sequence += 1
            time = f"2026-12-07T23:{sequence // 60 % 60:02d}:{sequence % 60:02d}.000000Z"
            principal = f"pw-{(sequence * 7919) % 1000:04d}"
            lookup = ("gw-bench", sequence, time, "service_call_requested", principal, None,
                      None, "bench-rest-echo", "63", "61", "bench-rest")  # fmt: skip
            batch.append(StoredRecord(
                "gw-bench", sequence, time, text, f"{sequence:064x}", lookup,
                (f"pk-{(sequence * 104729) % 5000:05d}",),
            ))  # fmt: skip
            if len(batch) == 8 or n == count - 1:
                await store.append(batch)
                batch = []
            if sequence % 64 == 0:
                await store._flush_lookups()

    def run(count: int) -> None:
        loop.run_until_complete(records(count))

    def close() -> None:  # else the store's threads keep the process alive
        loop.run_until_complete(store.aclose())
        loop.close()

    _CLOSE.append(close)
    return run


_CLOSE: list[Callable[[], None]] = []


def _step(step: str) -> Callable[[int], None]:
    if step == "store":
        return _store_step()
    import _sha256  # type: ignore[import-not-found]
    import hashlib

    from gateway.audit.canonical import hash_constructor
    from gateway.audit.record import record_encoder, utc_now_text

    encode = record_encoder("gw-bench", "sha256")
    event = _event()
    time = "2026-12-07T23:59:59.123456Z"
    prev = "ab" * 32
    text = encode(event, 12345, time, prev)
    link = bytes.fromhex(prev) + hashlib.sha256(text).digest()

    def chain_of(alg: str) -> Callable[[int], None]:
        new = hash_constructor(alg)

        def run(count: int) -> None:
            prev_raw = bytes.fromhex(prev)
            for _ in range(count):
                prev_raw = new(prev_raw + new(text).digest()).digest()
                prev_raw.hex()

        return run

    def hashing(new: Callable[[bytes], Any], data: bytes) -> Callable[[int], None]:
        def run(count: int) -> None:
            for _ in range(count):
                new(data).digest()

        return run

    def copying(data: bytes) -> Callable[[int], None]:
        prepared = hashlib.sha256()

        def run(count: int) -> None:
            for _ in range(count):
                h = prepared.copy()
                h.update(data)
                h.digest()

        return run

    def now_texts(count: int) -> None:
        for _ in range(count):
            utc_now_text()

    def texts(count: int) -> None:
        for n in range(count):
            encode(event, n, time, prev)

    steps: dict[str, Callable[[int], None]] = {
        "text": texts,
        "chain": chain_of("sha256"),
        "openssl_text": hashing(hashlib.sha256, text),
        "openssl_link": hashing(hashlib.sha256, link),
        "builtin_text": hashing(_sha256.sha256, text),
        "builtin_link": hashing(_sha256.sha256, link),
        "copy_text": copying(text),
        "copy_link": copying(link),
        "sm3_chain": chain_of("sm3"),
        "now_text": now_texts,
    }
    return steps[step]


def run(steps: list[str], counts: list[int]) -> None:
    for step in steps:
        made = _step(step)
        made(200)
        for count in counts:
            callgrind_steps.control("-z")
            made(count)
            callgrind_steps.control("-d")
    for close in _CLOSE:
        close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    callgrind_steps.add_arguments(parser, STEPS)
    args = parser.parse_args()
    steps = args.step or list(STEPS)
    if args.inner:
        tree = Path(args.tree).resolve() if args.tree else HERE.parent
        sys.path.insert(0, str(tree))
        run(args.steps.split(","), [int(n) for n in args.counts.split(",")])
        return
    if not args.callgrind:
        parser.error("the steps are only counted: give --callgrind")
    label = f"tree {args.tree}" if args.tree else "this tree"
    for number in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory(prefix="tongban-audit-seal-cg-") as tmp:
            figures = callgrind_steps.counted(
                __file__, steps, small=100, count=args.count, out=Path(tmp) / "cg.out",
                tree=args.tree,
            )  # fmt: skip
        shown = ", ".join(f"{step} {n / 1000:,.2f} k" for step, n in figures.items())
        print(f"{label}: run {number}: instructions per call: {shown}", flush=True)


if __name__ == "__main__":
    main()
