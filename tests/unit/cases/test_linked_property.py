"""Random linked cases end consistent: any dependency graph, any mix of answers, crashes.

Hypothesis draws a part graph (dependencies, required or optional, undoable submissions,
submissions nobody can undo, checks), how each part's system answers (accepts, refuses, fails
for a while, stays down, processes and loses the answer) and when the worker dies between its
back-end call and recording the answer. After the outbox settles, whatever happened:

- nothing is left in flight; each part's submission was processed at most once, each undo at
  most once, and a part was sent only after every part it waits for was done;
- when a required part failed, everything accepted that can be undone was undone exactly once,
  nothing else was sent, and the case closed with that part's outcome;
- otherwise the case closed done (every required part done), or waits for an operator on an
  optional part's dead letter;
- each timeline line was audited exactly once.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cases.model import FAILED, Case, CaseStatus, PartStatus
from gateway.cases.store import Applied, CaseStore, CaseStoreUnavailable, FinishEntry, Step
from gateway.stores.sqlite_cases import SqliteCaseStore
from tests.unit.cases.linked_fixtures import CHECK, FINAL, UNDOABLE, PartSpec, ScriptedSystem
from tests.unit.cases.test_linked import make_rig

P = PartStatus
BEHAVIOURS = st.sampled_from(
    ["accept", "accept", "accept", "refuse", "down", "lost", ("flaky", 1), ("flaky", 3)]
)


@st.composite
def part_graphs(draw: st.DrawFn) -> tuple[PartSpec, ...]:
    count = draw(st.integers(2, 7))
    parts: list[PartSpec] = []
    for i in range(count):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3)))) if i else []
        required = draw(st.booleans()) and all(parts[d].required for d in deps)
        operation = draw(st.sampled_from([UNDOABLE, UNDOABLE, FINAL, CHECK]))
        parts.append(PartSpec(f"p{i}", operation, tuple(f"p{d}" for d in deps), required))
    return tuple(parts)


class CrashingStore:
    """A case store whose ``apply`` fails as if the worker died before recording an answer,
    at the moments ``crashes`` names (the n-th apply call crashes when crashes[n])."""

    def __init__(self, inner: CaseStore, crashes: list[bool]) -> None:
        self._inner = inner
        self._crashes = crashes
        self._calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def apply(
        self,
        case_id: str,
        plan: Callable[[Case], Step | None],
        *,
        otherwise: FinishEntry | None = None,
    ) -> Applied | None:
        crash = self._calls < len(self._crashes) and self._crashes[self._calls]
        self._calls += 1
        if crash:
            raise CaseStoreUnavailable("the worker died before recording the answer")
        return await self._inner.apply(case_id, plan, otherwise=otherwise)


@settings(
    max_examples=int(os.environ.get("TONGBAN_LINKED_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    parts=part_graphs(),
    script=st.lists(BEHAVIOURS, min_size=7, max_size=7),
    crashes=st.lists(st.booleans(), max_size=12),
    undo_flaky=st.integers(0, 2),
)
def test_random_linked_cases_end_consistent(
    parts: tuple[PartSpec, ...], script: list[Any], crashes: list[bool], undo_flaky: int
) -> None:
    asyncio.run(_run(parts, dict(enumerate(script)), crashes, undo_flaky))


async def _run(
    parts: tuple[PartSpec, ...], script: dict[int, Any], crashes: list[bool], undo_flaky: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        inner = SqliteCaseStore(Path(folder) / "cases.db")
        await inner.open()
        try:
            system = ScriptedSystem(script=script, undo_flaky=undo_flaky)
            store = CrashingStore(inner, crashes)
            rig = make_rig(store, Path(folder), parts, system)
            case_id = await rig.submit()
            await rig.settle(rounds=2000)
            case = await inner.get(case_id)
            assert case is not None
            _check(case, parts, system, len(rig.audit.events))
        finally:
            await inner.aclose()


def _check(case: Case, parts: tuple[PartSpec, ...], system: ScriptedSystem, audited: int) -> None:
    status = {p.number: p.status for p in case.parts}
    assert not {P.WAITING, P.PENDING, P.COMPENSATING, P.OUTCOME_UNKNOWN} & set(status.values())
    submitted = Counter(part for op, part in system.log if op == "submit")
    undone = Counter(part for op, part in system.log if op == "undo")
    assert all(n == 1 for n in submitted.values()), submitted
    assert all(n == 1 for n in undone.values()), undone
    # Sent only once every part it waits for was done (processed earlier in the log).
    seen: set[int] = set()
    names = {spec.name: n for n, spec in enumerate(parts)}
    for op, part in system.log:
        if op in ("submit", CHECK) and part not in seen:
            assert {names[d] for d in parts[part].after} <= seen, (part, system.log)
            seen.add(part)
    failed = [n for n, spec in enumerate(parts) if spec.required and status[n] in FAILED]
    if failed:
        for n, spec in enumerate(parts):
            if spec.operation == UNDOABLE and n in submitted:
                assert status[n] == P.COMPENSATED, (n, status)
                assert undone[n] == 1
            elif n not in submitted and spec.operation != CHECK:
                assert status[n] in (P.CANCELLED, *FAILED), (n, status)
        assert case.status == CaseStatus.CLOSED
        assert case.outcome is not None
        assert case.outcome["result"] == status[failed[0]].value
    elif P.DEAD_LETTERED in status.values():
        assert case.status == CaseStatus.DEAD_LETTERED
        assert not undone
    else:
        assert case.status == CaseStatus.CLOSED
        assert all(status[n] == P.DONE for n, spec in enumerate(parts) if spec.required)
        assert case.outcome is not None
        assert case.outcome["result"] == "done"
        assert not undone
    # Every timeline line was audited, once.
    assert audited == len(case.transitions)  # the intake record included
