"""The independent audit verifier: recomputes every chain and names the first bad record and why.

It shares nothing with the writer except ``canonical.py``: records are read as stored text, parsed
here, and every hash, link and checkpoint signature is recomputed. It reads a live store or an
export file (JSON Lines, see docs/audit.md), and never trusts a column it can recompute.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.audit.canonical import (
    GENESIS_HASH,
    HASH_ALGS,
    CanonicalError,
    has_canonical_encoding,
    hash_constructor,
    parse_canonical,
)
from gateway.audit.query import LOOKUP_FIELDS, record_subjects
from gateway.audit.store import DerivedRow, StoredSubjectRow

CHECKPOINT_ALGORITHMS: Final = ["ES256"]
EXPORT_FORMAT: Final = "tongban-audit-export"
PAGE: Final = 5000


class ProblemKind(enum.StrEnum):
    CHANGED = "changed"
    """A record's text or stored hash differs from what was chained."""
    MISSING = "missing"
    """A sequence number is absent."""
    REORDERED = "reordered"
    """A record sits at another record's position (swapped, moved, duplicated)."""
    LINK_BROKEN = "link_broken"
    """A record is self-consistent but does not follow its predecessor (one was replaced)."""
    TRUNCATED = "truncated"
    """The chain ends before a sequence a signed checkpoint or witness vouches for."""
    BAD_SIGNATURE = "bad_signature"
    """A checkpoint's signature does not verify, or its key is unknown."""
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    """A validly signed checkpoint disagrees with the chain (or with its own row)."""
    WITNESS_MISMATCH = "witness_mismatch"
    """Another chain's signed checkpoint saw a different hash at this position."""
    UNANCHORED = "unanchored"
    """An export range does not start at the genesis or at a signed checkpoint."""
    TIME_MOVED = "time_moved"
    """The stored time a record is found by (time windows, exports) is not the record's."""
    LOOKUP_MISSING = "lookup_missing"
    """A record has no lookup row: queries and the citizen's access log cannot find it."""
    LOOKUP_MISMATCH = "lookup_mismatch"
    """A record's lookup row says other things than the record (queries find it wrongly)."""
    LOOKUP_ORPHAN = "lookup_orphan"
    """A lookup row names a record that does not exist."""
    SUBJECTS_MISMATCH = "subjects_mismatch"
    """A record's subject rows are not the data subjects it names (a subject's access log
    misses it, or shows it to someone it did not touch, or at another time)."""
    SUBJECTS_ORPHAN = "subjects_orphan"
    """A subject row names a record that does not exist."""


DERIVED_KINDS: Final = frozenset(
    {
        ProblemKind.TIME_MOVED,
        ProblemKind.LOOKUP_MISSING,
        ProblemKind.LOOKUP_MISMATCH,
        ProblemKind.LOOKUP_ORPHAN,
        ProblemKind.SUBJECTS_MISMATCH,
        ProblemKind.SUBJECTS_ORPHAN,
    }
)
"""Problems of the store's derived data, not of the chain itself."""


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    sequence: int
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"chain {self.chain} record {self.sequence}: {self.kind.value}: {self.detail}"


@dataclass(slots=True)
class ChainSummary:
    chain: str
    records: int = 0
    first_sequence: int = 0
    last_sequence: int = 0
    head_hash: str = GENESIS_HASH
    checkpoints: int = 0
    last_checkpoint: int = 0
    """Highest sequence covered by a valid checkpoint."""
    unsigned_tail: int = 0
    """Records after the last valid checkpoint: intact, but their deletion would go unnoticed."""


@dataclass(slots=True)
class VerificationReport:
    chains: dict[str, ChainSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    records: int = 0
    seconds: float = 0.0
    unchecked_witnesses: int = 0
    derived_checked: bool = False
    """The store's derived data (stored times, lookup rows) was compared with the records."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


@dataclass(frozen=True, slots=True)
class Progress:
    chain: str
    done: int
    """Records verified in this chain so far."""
    total: int | None
    """Records expected in this chain, when known."""
    records: int
    """Records verified in all chains so far."""


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class _Signed:
    """A checkpoint whose signature verified: only its signed payload counts."""

    chain: str
    sequence: int
    hash: str
    witness: tuple[tuple[str, int, str], ...]


class _CheckpointRow(Protocol):
    @property
    def chain(self) -> str: ...
    @property
    def sequence(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def jws(self) -> str: ...


def _check_checkpoint(
    chain: str, sequence: int, hash_: str | None, token: str, keys: KeySet
) -> _Signed | Problem:
    def bad(kind: ProblemKind, detail: str) -> Problem:
        return Problem(chain, sequence, kind, f"checkpoint: {detail}")

    try:
        kid = jws.extract_compact(token.encode("ascii")).headers().get("kid")
    except (JoseError, ValueError, UnicodeError):
        return bad(ProblemKind.BAD_SIGNATURE, "not a JWS compact value")
    try:
        key = keys.get_by_kid(kid)
    except JoseError:
        return bad(ProblemKind.BAD_SIGNATURE, f"unknown key id {kid!r}")
    try:
        payload = jws.deserialize_compact(token, key, algorithms=CHECKPOINT_ALGORITHMS).payload
        body = parse_canonical(payload)
    except (JoseError, CanonicalError, ValueError):
        return bad(ProblemKind.BAD_SIGNATURE, "signature does not verify")
    if body.get("chain") != chain or body.get("sequence") != sequence:
        return bad(
            ProblemKind.CHECKPOINT_MISMATCH,
            f"signed for chain {body.get('chain')!r} sequence {body.get('sequence')!r}",
        )
    if hash_ is not None and body.get("hash") != hash_:
        return bad(ProblemKind.CHECKPOINT_MISMATCH, "stored hash differs from the signed one")
    signed_hash = body.get("hash")
    if not isinstance(signed_hash, str):
        return bad(ProblemKind.CHECKPOINT_MISMATCH, "no hash in the signed payload")
    witness: list[tuple[str, int, str]] = []
    for item in body.get("witness") or ():
        if isinstance(item, dict) and type(item.get("sequence")) is int:
            witness.append((str(item.get("chain")), item["sequence"], str(item.get("hash"))))
    return _Signed(chain, sequence, signed_hash, tuple(witness))


class _ChainCheck:
    """Streams one chain's records in order and stops at the first bad one."""

    def __init__(
        self,
        chain: str,
        *,
        start: int,
        anchor: str,
        checkpoints: dict[int, str],
        claims: dict[int, list[tuple[str, str]]],
        strict: bool,
    ) -> None:
        self.chain = chain
        self.next = start
        self.prev = anchor
        self.checkpoints = checkpoints
        self.claims = claims
        self.strict = strict
        self.problem: Problem | None = None
        self.summary = ChainSummary(chain, first_sequence=start)
        self._hashes = {alg: hash_constructor(alg) for alg in HASH_ALGS}

    def _fail(self, sequence: int, kind: ProblemKind, detail: str) -> bool:
        self.problem = Problem(self.chain, sequence, kind, detail)
        return False

    def feed(self, sequence: int, raw: bytes, stored_hash: str) -> bool:
        """Check one record; False once the chain is broken (later records prove nothing)."""
        if self.problem is not None:
            return False
        expected = self.next
        if sequence != expected:
            if sequence > expected:
                last = f"–{sequence - 1}" if sequence - 1 > expected else ""
                return self._fail(expected, ProblemKind.MISSING, f"record {expected}{last} missing")
            return self._fail(
                sequence, ProblemKind.REORDERED, f"sequence {sequence} appears after {expected - 1}"
            )
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._fail(sequence, ProblemKind.CHANGED, "the record is not valid JSON")
        if type(body) is not dict:
            return self._fail(sequence, ProblemKind.CHANGED, "the record is not a JSON object")
        inner = body.get("sequence")
        if inner != sequence:
            if type(inner) is int:
                return self._fail(
                    sequence,
                    ProblemKind.REORDERED,
                    f"position {sequence} holds the record of sequence {inner}",
                )
            return self._fail(sequence, ProblemKind.CHANGED, "the sequence field was altered")
        if body.get("chain") != self.chain:
            return self._fail(sequence, ProblemKind.CHANGED, "the record names another chain")
        new = self._hashes.get(body.get("alg"))  # type: ignore[arg-type]
        if new is None:
            return self._fail(sequence, ProblemKind.CHANGED, "unknown hash algorithm")
        if self.strict and not has_canonical_encoding(body, raw):
            return self._fail(sequence, ProblemKind.CHANGED, "not in canonical form")
        inner_digest = new(raw).digest()
        computed = new(bytes.fromhex(self.prev) + inner_digest).digest().hex()
        if computed != stored_hash or body.get("prev_hash") != self.prev:
            claimed_prev = body.get("prev_hash")
            consistent = False
            if isinstance(claimed_prev, str) and len(claimed_prev) == len(self.prev):
                try:
                    relinked = new(bytes.fromhex(claimed_prev) + inner_digest).digest()
                    consistent = relinked.hex() == stored_hash
                except ValueError:
                    consistent = False
            if consistent and claimed_prev != self.prev:
                return self._fail(
                    sequence,
                    ProblemKind.LINK_BROKEN,
                    f"does not follow record {sequence - 1}: one of the two was replaced",
                )
            return self._fail(sequence, ProblemKind.CHANGED, "content does not match its hash")
        signed = self.checkpoints.get(sequence)
        if signed is not None and signed != computed:
            return self._fail(
                sequence, ProblemKind.CHECKPOINT_MISMATCH, "a signed checkpoint holds another hash"
            )
        for claimed, by in self.claims.get(sequence, ()):
            if claimed != computed:
                return self._fail(
                    sequence,
                    ProblemKind.WITNESS_MISMATCH,
                    f"chain {by} signed another hash for this record",
                )
        self.prev = computed
        self.next = sequence + 1
        return True

    def feed_many(self, rows: Iterable[tuple[int, bytes, str]]) -> int:
        """Check records in order; return how many passed. The hot loop of the verifier: any
        doubt hands the record to ``feed``, which names the problem precisely."""
        if self.problem is not None:
            return 0
        loads, dumps, sort_keys = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
        hashes, chain, strict = self._hashes, self.chain, self.strict
        special = self.checkpoints.keys() | self.claims.keys()
        expected, prev = self.next, self.prev
        prev_raw = bytes.fromhex(prev)
        done = 0
        rows = iter(rows)
        for sequence, raw, stored in rows:
            try:
                body = loads(raw)
                # Non-objects and missing fields raise TypeError / KeyError: the slow path.
                if (
                    sequence == expected
                    and body["sequence"] == sequence
                    and body["prev_hash"] == prev
                    and body["chain"] == chain
                    and (not strict or dumps(body, option=sort_keys) == raw)
                ):
                    new = hashes[body["alg"]]
                    current = new(prev_raw + new(raw).digest()).digest()
                    computed = current.hex()
                    if computed == stored and (
                        sequence not in special or self._vouched(sequence, computed)
                    ):
                        prev, prev_raw, expected = computed, current, sequence + 1
                        done += 1
                        continue
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass
            self.next, self.prev = expected, prev
            if not self.feed(sequence, raw, stored):
                self._reordered_or_missing(sequence, next(rows, None))
                return done
            done += 1
            expected, prev = self.next, self.prev
            prev_raw = bytes.fromhex(prev)
        self.next, self.prev = expected, prev
        return done

    def _reordered_or_missing(self, found: int, following: tuple[int, bytes, str] | None) -> None:
        """A gap followed at once by the missing record is a swap, not a deletion."""
        problem = self.problem
        if (
            problem is not None
            and problem.kind is ProblemKind.MISSING
            and following is not None
            and following[0] == problem.sequence
        ):
            self.problem = Problem(
                self.chain,
                problem.sequence,
                ProblemKind.REORDERED,
                f"record {problem.sequence} comes after record {found}",
            )

    def _vouched(self, sequence: int, computed: str) -> bool:
        """Do the signed checkpoint and the witnesses at this position agree with the chain?"""
        if self.checkpoints.get(sequence, computed) != computed:
            return False
        return all(claimed == computed for claimed, _ in self.claims.get(sequence, ()))

    def finish(self) -> ChainSummary:
        summary = self.summary
        last = self.next - 1
        summary.records = max(0, last - summary.first_sequence + 1)
        summary.last_sequence = last
        summary.head_hash = self.prev
        covered = [s for s in self.checkpoints if s <= last]
        summary.checkpoints = len(self.checkpoints)
        summary.last_checkpoint = max(covered, default=0)
        summary.unsigned_tail = last - max(summary.last_checkpoint, summary.first_sequence - 1)
        if self.problem is None:
            beyond = [s for s in self.checkpoints if s > last]
            witnessed = [s for s in self.claims if s > last]
            if beyond:
                self.problem = Problem(
                    self.chain,
                    last + 1,
                    ProblemKind.TRUNCATED,
                    f"the chain ends at {last} but a signed checkpoint covers {max(beyond)}",
                )
            elif witnessed:
                self.problem = Problem(
                    self.chain,
                    last + 1,
                    ProblemKind.TRUNCATED,
                    f"the chain ends at {last} but another chain witnessed {max(witnessed)}",
                )
        return summary


def check_chain(
    chain: str,
    rows: Iterable[tuple[int, bytes, str]],
    *,
    start: int = 1,
    anchor: str = GENESIS_HASH,
    signed: dict[int, str] | None = None,
    strict: bool = False,
) -> tuple[ChainSummary, Problem | None]:
    """Pure check of one chain's ``(sequence, record bytes, hash)`` rows; no I/O.

    ``signed`` maps sequences to hashes vouched for by valid checkpoints."""
    check = _ChainCheck(
        chain, start=start, anchor=anchor, checkpoints=signed or {}, claims={}, strict=strict
    )
    check.feed_many(rows)
    summary = check.finish()
    return summary, check.problem


def _collect(
    report: VerificationReport,
    signed_by_chain: dict[str, list[_Signed]],
    problems: list[Problem],
) -> tuple[dict[str, dict[int, str]], dict[str, dict[int, list[tuple[str, str]]]]]:
    """Signed hashes per chain and the witness claims other chains make about it."""
    checkpoints: dict[str, dict[int, str]] = {}
    claims: dict[str, dict[int, list[tuple[str, str]]]] = {}
    for chain, signed in signed_by_chain.items():
        checkpoints[chain] = {cp.sequence: cp.hash for cp in signed}
        for cp in signed:
            for other, sequence, hash_ in cp.witness:
                claims.setdefault(other, {}).setdefault(sequence, []).append((hash_, chain))
    report.problems.extend(problems)
    return checkpoints, claims


def _finish(report: VerificationReport, checks: Iterable[_ChainCheck], started: float) -> None:
    for check in checks:
        report.chains[check.chain] = check.finish()
        if check.problem is not None:
            report.problems.append(check.problem)
    # Per chain, the earliest position first: that is "the first bad record". Problems of the
    # export file as a whole (chain "*") come last.
    # At one position a record's own problem comes before what follows from it in the derived
    # data (a deleted record also leaves an orphan lookup row).
    report.problems.sort(
        key=lambda p: (p.chain == "*", p.chain, p.sequence, p.kind in DERIVED_KINDS)
    )
    report.seconds = time.perf_counter() - started


class _RecordSource(Protocol):
    def read_raw_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[tuple[int, bytes, str]]]: ...

    async def checkpoints(
        self, chain: str, start: int = 0, end: int | None = None
    ) -> list[Any]: ...

    async def chains(self) -> list[str]: ...

    async def heads(self) -> dict[str, Any]: ...


async def verify_store(
    store: _RecordSource,
    keys: KeySet,
    *,
    chains: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    strict: bool = False,
    page_size: int = PAGE,
    derived: bool = True,
) -> VerificationReport:
    """Verify every chain in the store (or the named ones) from its first record to its head.

    ``derived`` (the default) also proves what the store derived from the records: every
    record's stored time is its own, every record has its lookup row and that row says what
    the record says, and no lookup row lacks its record (stores that keep no derived data,
    like the in-memory one, are not asked).

    ``keys`` are the trusted public checkpoint keys. ``strict`` also proves each record is in
    canonical form: a conformance check of the writer, about 15 % slower. Tampering is caught
    either way, because every hash is computed over the exact stored bytes. CPU-bound: from the
    event loop of a serving gateway, prefer a separate process (the CLI).
    """
    started = time.perf_counter()
    report = VerificationReport()
    names = list(chains) if chains is not None else await store.chains()
    heads = await store.heads()
    signed_by_chain: dict[str, list[_Signed]] = {}
    problems: list[Problem] = []
    for chain in names:
        signed_by_chain[chain] = []
        for row in await store.checkpoints(chain):
            result = _check_checkpoint(chain, row.sequence, row.hash, row.jws, keys)
            if isinstance(result, Problem):
                problems.append(result)
            else:
                signed_by_chain[chain].append(result)
    checkpoints, claims = _collect(report, signed_by_chain, problems)
    for other in sorted(set(claims) - set(names)):
        if chains is None:
            sequence = min(claims[other])
            report.problems.append(
                Problem(other, sequence, ProblemKind.TRUNCATED, "a witnessed chain is missing")
            )
    checks: list[_ChainCheck] = []
    total_done = 0
    for chain in names:
        check = _ChainCheck(
            chain,
            start=1,
            anchor=GENESIS_HASH,
            checkpoints=checkpoints.get(chain, {}),
            claims=claims.get(chain, {}),
            strict=strict,
        )
        checks.append(check)
        head = heads.get(chain)
        total = head.sequence if head is not None else 0
        done = 0
        async for page in store.read_raw_pages(chain, 1, page_size=page_size):
            passed = check.feed_many(page)
            done += passed
            if passed < len(page):
                break
            if progress is not None:
                progress(Progress(chain, done, total, total_done + done))
        total_done += done
        if progress is not None:
            progress(Progress(chain, done, total, total_done))
    report.records = total_done
    if derived and isinstance(store, _DerivedSource):
        for chain in names:
            report.problems.extend(await _check_derived(store, chain, page_size))
        report.derived_checked = True
    _finish(report, checks, started)
    return report


# --- derived data: stored times and lookup rows ----------------------------------------------


@runtime_checkable
class _DerivedSource(Protocol):
    def read_derived_pages(
        self, chain: str, start: int = 1, end: int | None = None, *, page_size: int = 5000
    ) -> AsyncIterator[list[tuple[int, str, str, tuple[str | None, ...] | None]]]: ...

    async def orphan_lookup_rows(self, chain: str) -> list[int]: ...

    async def subject_rows_between(
        self, chain: str, first: int, last: int
    ) -> list[StoredSubjectRow]: ...

    async def orphan_subject_rows(self, chain: str) -> list[int]: ...


def _text_field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None


async def _check_derived(store: _DerivedSource, chain: str, page_size: int) -> list[Problem]:
    """Every record's stored time and lookup row against its own text (which the chain check
    proves): what queries, time-window exports and the access log rely on. A tail of records
    past the chain's last lookup row is pending (the rows trail the records by a second, and
    the store makes any lost ones from the text when it opens), not a problem."""
    problems: list[Problem] = []
    missing: list[int] = []
    async for page in store.read_derived_pages(chain, 1, page_size=page_size):
        stored_subjects = await _subject_rows_by_record(store, chain, page)
        for sequence, text, stored_time, lookup in page:
            try:
                body = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue  # the chain check names a record that is not JSON
            if not isinstance(body, dict):
                continue
            own_time = _text_field(body, "time")
            if lookup is not None:  # subject rows are written with the lookup row
                problems.extend(
                    _subjects_problem(
                        chain, sequence, text, own_time, stored_subjects.get(sequence, [])
                    )
                )
            if stored_time != own_time:
                problems.append(
                    Problem(
                        chain,
                        sequence,
                        ProblemKind.TIME_MOVED,
                        f"stored time {stored_time} but the record says {own_time}",
                    )
                )
            if lookup is None:
                missing.append(sequence)
                continue
            if missing:
                # A lookup row after records without one: those were removed, not pending.
                problems.extend(
                    Problem(chain, gap, ProblemKind.LOOKUP_MISSING, "the record has no lookup row")
                    for gap in missing
                )
                missing.clear()
            expected = (own_time, *(_text_field(body, name) for name in LOOKUP_FIELDS))
            if tuple(lookup) != expected:
                names = ("time", *LOOKUP_FIELDS)
                wrong = [
                    n for n, got, want in zip(names, lookup, expected, strict=True) if got != want
                ]
                problems.append(
                    Problem(
                        chain,
                        sequence,
                        ProblemKind.LOOKUP_MISMATCH,
                        "the lookup row differs from the record in " + ", ".join(wrong),
                    )
                )
    if missing and not getattr(store, "lookup_rows_trail", True):
        # This store writes a record's lookup row in the record's own transaction.
        problems.extend(
            Problem(chain, gap, ProblemKind.LOOKUP_MISSING, "the record has no lookup row")
            for gap in missing
        )
    problems.extend(
        Problem(chain, orphan, ProblemKind.LOOKUP_ORPHAN, "a lookup row without its record")
        for orphan in await store.orphan_lookup_rows(chain)
    )
    problems.extend(
        Problem(chain, orphan, ProblemKind.SUBJECTS_ORPHAN, "a subject row without its record")
        for orphan in await store.orphan_subject_rows(chain)
    )
    return problems


async def _subject_rows_by_record(
    store: _DerivedSource, chain: str, page: list[DerivedRow]
) -> dict[int, list[tuple[str, str]]]:
    if not page:
        return {}
    found: dict[int, list[tuple[str, str]]] = {}
    for sequence, subject, recorded_at in await store.subject_rows_between(
        chain, page[0][0], page[-1][0]
    ):
        found.setdefault(sequence, []).append((subject, recorded_at))
    return found


def _subjects_problem(
    chain: str, sequence: int, text: str, own_time: str | None, stored: list[tuple[str, str]]
) -> list[Problem]:
    """The record's subject rows against the subjects its text names, at its own time (the
    subject's access log is read from these rows alone)."""
    expected = {(subject, own_time) for subject in record_subjects(text)}
    got = set(stored)
    if got == expected:
        return []
    wrong = []
    if expected - got:
        wrong.append(f"{len(expected - got)} missing")
    if got - expected:
        wrong.append(f"{len(got - expected)} not named by the record or at another time")
    return [
        Problem(
            chain,
            sequence,
            ProblemKind.SUBJECTS_MISMATCH,
            "the subject rows differ from the record: " + ", ".join(wrong),
        )
    ]


# --- export files -----------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("rb") as stream:
        for number, line in enumerate(stream, 1):
            if line.strip():
                value = orjson.loads(line)
                if not isinstance(value, dict):
                    raise ValueError(f"line {number}: not a JSON object")
                yield number, value


class ExportFormatError(ValueError):
    """The file is not a readable audit export."""


def verify_export(
    path: Path,
    keys: KeySet | None = None,
    *,
    progress: ProgressCallback | None = None,
    strict: bool = False,
) -> VerificationReport:
    """Verify an export file offline; blocking (run it in a thread from async code).

    ``keys``: trusted public keys. Without them the keys embedded in the export are used, which
    proves integrity against accidents but not against whoever wrote the file.
    """
    started = time.perf_counter()
    report = VerificationReport()
    lines = _lines(Path(path))
    try:
        _, header = next(lines)
    except (StopIteration, orjson.JSONDecodeError) as exc:
        raise ExportFormatError("empty or unreadable export") from exc
    if header.get("type") != "header" or header.get("format") != EXPORT_FORMAT:
        raise ExportFormatError("not a tongban audit export")
    ranges: dict[str, tuple[int, int, int]] = {}  # chain -> (anchor, first, last)
    raw_checkpoints: list[dict[str, Any]] = []
    checks: dict[str, _ChainCheck] = {}
    current: _ChainCheck | None = None
    pending: list[tuple[int, bytes, str]] = []
    done = 0
    end_seen: dict[str, Any] | None = None

    def drain() -> None:
        if current is not None and pending:
            current.feed_many(pending)
            if progress is not None:
                progress(Progress(current.chain, current.next - 1, None, done))
        pending.clear()

    try:
        for number, item in lines:
            kind = item.get("type")
            if kind == "record":
                if current is None or current.chain != item["chain"]:
                    drain()
                    current = _start_export_chain(
                        report, item, ranges, raw_checkpoints, checks, keys, header, strict
                    )
                done += 1
                pending.append((item["sequence"], item["record"].encode("utf-8"), item["hash"]))
                if len(pending) >= PAGE:
                    drain()
                continue
            drain()
            if kind == "chain":
                ranges[str(item["chain"])] = (
                    int(item["anchor"]),
                    int(item["first"]),
                    int(item["last"]),
                )
            elif kind == "checkpoint":
                raw_checkpoints.append(item)
            elif kind == "keys":
                header["keys"] = item.get("keys")
            elif kind == "end":
                end_seen = item
            else:
                raise ExportFormatError(f"line {number}: unknown line type {kind!r}")
        drain()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportFormatError(f"malformed export: {exc}") from exc
    if not checks and ranges:
        # An export with chains but no records: still check the checkpoints.
        _prepare_export_checks(report, ranges, raw_checkpoints, checks, keys, header, strict)
    for chain, (_anchor, _first, last) in ranges.items():
        check = checks.get(chain)
        if check is None:
            continue
        if check.problem is None and check.next - 1 < last:
            check.problem = Problem(
                chain,
                check.next,
                ProblemKind.TRUNCATED,
                f"the export should hold records up to {last}",
            )
    if end_seen is None or end_seen.get("records") != done:
        report.problems.append(
            Problem("*", done + 1, ProblemKind.TRUNCATED, "the export file is incomplete")
        )
    report.records = done
    if progress is not None:
        progress(Progress(current.chain if current else "", done, done, done))
    _finish(report, checks.values(), started)
    return report


def _embedded_keys(header: dict[str, Any]) -> KeySet:
    embedded = header.get("keys")
    if not embedded:
        raise ExportFormatError("no trusted keys given and none embedded in the export")
    return KeySet.import_key_set(embedded)


def _start_export_chain(
    report: VerificationReport,
    item: dict[str, Any],
    ranges: dict[str, tuple[int, int, int]],
    raw_checkpoints: list[dict[str, Any]],
    checks: dict[str, _ChainCheck],
    keys: KeySet | None,
    header: dict[str, Any],
    strict: bool,
) -> _ChainCheck:
    if not checks:
        _prepare_export_checks(report, ranges, raw_checkpoints, checks, keys, header, strict)
    chain = str(item.get("chain"))
    check = checks.get(chain)
    if check is None:
        raise ExportFormatError(f"records of chain {chain!r} without a chain line")
    return check


def _prepare_export_checks(
    report: VerificationReport,
    ranges: dict[str, tuple[int, int, int]],
    raw_checkpoints: list[dict[str, Any]],
    checks: dict[str, _ChainCheck],
    keys: KeySet | None,
    header: dict[str, Any],
    strict: bool,
) -> None:
    trusted = keys if keys is not None else _embedded_keys(header)
    signed_by_chain: dict[str, list[_Signed]] = {chain: [] for chain in ranges}
    problems: list[Problem] = []
    for row in raw_checkpoints:
        chain = str(row["chain"])
        result = _check_checkpoint(chain, int(row["sequence"]), None, str(row["jws"]), trusted)
        if isinstance(result, Problem):
            problems.append(result)
        else:
            signed_by_chain.setdefault(chain, []).append(result)
    checkpoints, claims = _collect(report, signed_by_chain, problems)
    for chain, (anchor, first, last) in ranges.items():
        chain_checkpoints = checkpoints.get(chain, {})
        if first == 1:
            anchor_hash = GENESIS_HASH
        elif anchor == first - 1 and anchor in chain_checkpoints:
            anchor_hash = chain_checkpoints[anchor]
        else:
            report.problems.append(
                Problem(
                    chain,
                    first,
                    ProblemKind.UNANCHORED,
                    "the export does not start at a signed checkpoint",
                )
            )
            anchor_hash = GENESIS_HASH
        chain_claims = {s: c for s, c in claims.get(chain, {}).items() if first <= s <= last}
        report.unchecked_witnesses += sum(
            len(c) for s, c in claims.get(chain, {}).items() if not first <= s <= last
        )
        checks[chain] = _ChainCheck(
            chain,
            start=first,
            anchor=anchor_hash,
            checkpoints={s: h for s, h in chain_checkpoints.items() if s >= first},
            claims=chain_claims,
            strict=strict,
        )
    for other in set(claims) - set(ranges):
        report.unchecked_witnesses += sum(len(c) for c in claims[other].values())
