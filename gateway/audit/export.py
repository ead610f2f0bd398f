"""Export a time window of the audit trail as JSON Lines that verify offline.

Each chain's range is widened to start right after a signed checkpoint (or at the genesis) and
to end at a signed checkpoint when one exists, so the verifier can anchor and close the range
without the database. Line order: header, keys, chain lines, checkpoints, records, end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
from joserfc.jwk import KeySet

from gateway.audit.record import format_time, utc_now
from gateway.audit.store import AuditStore, iter_records

EXPORT_FORMAT: Final = "tongban-audit-export"
EXPORT_VERSION: Final = 1


@dataclass(slots=True)
class ExportSummary:
    records: int = 0
    checkpoints: int = 0
    chains: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Exported (first, last) sequence per chain."""
    unsigned: dict[str, int] = field(default_factory=dict)
    """Records per chain after the last checkpoint (exported, but not closed by a signature)."""
    moved_times: list[tuple[str, int]] = field(default_factory=list)
    """Exported records whose stored time (what the time window is chosen by) is not their
    own: the store was tampered with, and the window may have lost records."""


def _own_time(text: str) -> object:
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return body.get("time") if isinstance(body, dict) else None


def _line(out: IO[bytes], value: dict[str, Any]) -> None:
    out.write(orjson.dumps(value))
    out.write(b"\n")


async def export_jsonl(
    store: AuditStore,
    destination: Path | IO[bytes],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    chains: list[str] | None = None,
    public_keys: KeySet | None = None,
) -> ExportSummary:
    """Write records with ``since <= time < until`` (widened to checkpoints) to ``destination``.

    ``public_keys`` are embedded for convenience; an auditor should verify with keys obtained
    independently.
    """
    if isinstance(destination, Path):
        with destination.open("wb") as out:
            return await _export(store, out, since, until, chains, public_keys)
    return await _export(store, destination, since, until, chains, public_keys)


async def _export(
    store: AuditStore,
    out: IO[bytes],
    since: datetime | None,
    until: datetime | None,
    chains: list[str] | None,
    public_keys: KeySet | None,
) -> ExportSummary:
    summary = ExportSummary()
    since_text = format_time(since) if since else None
    until_text = format_time(until) if until else None
    plan: list[tuple[str, int, int, int, list[Any]]] = []
    for chain in chains if chains is not None else await store.chains():
        window = await store.sequence_range(chain, since_text, until_text)
        if window is None:
            continue
        first, last = window
        before = await store.checkpoints(chain, 0, first - 1)
        anchor = before[-1].sequence if before else 0
        after = await store.checkpoints(chain, last)
        if after:
            end = after[0].sequence
        else:
            head = await store.head(chain)
            end = head.sequence if head else last
        checkpoints = await store.checkpoints(chain, anchor if anchor else 1, end)
        plan.append((chain, anchor, anchor + 1, end, checkpoints))
        summary.unsigned[chain] = end - max([c.sequence for c in checkpoints], default=anchor)
    _line(
        out,
        {
            "type": "header",
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "created": format_time(utc_now()),
            "since": since_text,
            "until": until_text,
        },
    )
    if public_keys is not None:
        _line(out, {"type": "keys", "keys": public_keys.as_dict(private=False)})
    for chain, anchor, first, last, _ in plan:
        _line(
            out, {"type": "chain", "chain": chain, "anchor": anchor, "first": first, "last": last}
        )
    for chain, _, _, _, checkpoints in plan:
        for cp in checkpoints:
            _line(
                out, {"type": "checkpoint", "chain": chain, "sequence": cp.sequence, "jws": cp.jws}
            )
            summary.checkpoints += 1
    for chain, _, first, last, _ in plan:
        async for row in iter_records(store, chain, first, last):
            _line(
                out,
                {
                    "type": "record",
                    "chain": chain,
                    "sequence": row.sequence,
                    "hash": row.hash,
                    "record": row.text,
                },
            )
            summary.records += 1
            if _own_time(row.text) != row.time:
                summary.moved_times.append((chain, row.sequence))
        summary.chains[chain] = (first, last)
    _line(out, {"type": "end", "records": summary.records})
    return summary
