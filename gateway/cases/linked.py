"""联动办理: the linked parts of a case, as one service declares them (``linked:``).

    checks     every part's operation, province, dependencies (no cycle) and input mapping,
               against each operation's input schema, when the configuration loads
    input      a part's input, from the application data and the answers of the parts it
               waits for (``data.<path>``, ``parts.<name>.<path>``)
    settle     how the case stands after its parts moved: parts whose dependencies are done
               are released (sent), parts that can no longer run are cancelled, and when a
               required part fails the parts already accepted are undone (compensated) and the
               rest is never sent; the case ends with one combined outcome

Pure functions, no I/O: the planner (``gateway.cases.lifecycle.plan_step``) calls ``settle`` on
the case as stored under its lock, so concurrent answers see each other's releases.
Must not: send anything, read configuration at request time, or look at a part's data beyond
the fields its input mapping names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.cases.config import LinkedCase, carrier_operations
from gateway.cases.model import (
    ACCEPTED,
    FAILED,
    Case,
    CaseStatus,
    Part,
    PartStatus,
)
from gateway.cases.store import EntryKind, NewEntry, PartChange
from gateway.mapping import MappingError, compile_mapping

P = PartStatus
S = CaseStatus
_ACTIVE: Final = frozenset(
    {
        P.WAITING,
        P.PENDING,
        P.FORWARDED,
        P.PROCESSING,
        P.SUPPLEMENT_REQUESTED,
        P.OUTCOME_UNKNOWN,
        P.COMPENSATING,
    }
)
_CANNOT_FEED: Final = frozenset({*FAILED, P.CANCELLED, P.COMPENSATING, P.COMPENSATED})
_FINAL_OF: Final = {
    P.NOT_ACCEPTED: S.NOT_ACCEPTED,
    P.RETURNED: S.RETURNED,
    P.DEAD_LETTERED: S.DEAD_LETTERED,
}
_ANY: Final[dict[str, Any]] = {}
"""What a schema says of a path it does not describe: anything goes."""


# --- configuration checks ----------------------------------------------------------------------


def _schema_at(schema: Any, path: Iterable[str]) -> dict[str, Any] | None:
    """The subschema at ``path``; ``_ANY`` where the schema does not describe it (no
    ``properties``, or extra properties allowed); None where it forbids it."""
    node = schema
    for segment in path:
        if not isinstance(node, Mapping):
            return _ANY
        properties = node.get("properties")
        if not isinstance(properties, Mapping):
            return _ANY
        if segment in properties:
            node = properties[segment]
            continue
        return None if node.get("additionalProperties", True) is False else _ANY
    return dict(node) if isinstance(node, Mapping) else _ANY


def _ancestors(name: str, after: Mapping[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(after.get(name, ()))
    while todo:
        current = todo.pop()
        if current not in seen and current in after:
            seen.add(current)
            todo.extend(after[current])
    return seen


def _cycle(after: Mapping[str, list[str]]) -> list[str] | None:
    """One dependency cycle as a path (first name repeated at the end), if there is one."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in after.get(name, ()):
            if dep not in after or dep == name:  # unknown parts and self-waits: said apart
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                found = visit(dep, [*path, dep])
                if found:
                    return found
        state[name] = 2
        return None

    for name in after:
        if name not in state:
            found = visit(name, [name])
            if found:
                return found
    return None


def linked_problems(linked: LinkedCase, operations: Mapping[str, Any]) -> list[str]:
    """Every problem of a service's ``linked`` block, each naming ``linked.parts.<name>`` and the
    field (the settings loader adds the file and the service)."""
    problems: list[str] = []
    carriers = carrier_operations(operations)
    after = {name: list(part.after) for name, part in linked.parts.items()}
    for name, part in linked.parts.items():
        where = f"linked.parts.{name}"
        operation = operations.get(part.operation)
        if operation is None:
            problems.append(f"{where}.operation: no operation {part.operation!r}")
        elif part.operation in carriers:
            problems.append(
                f"{where}.operation: {part.operation!r} carries supplements or undos of another"
                " operation, never a part of its own"
            )
        if part.handling_from is not None:
            found = _schema_at(linked.input_schema, part.handling_from.split("."))
            if found is None:
                problems.append(
                    f"{where}.handling_from: {part.handling_from!r} is not a field of"
                    " linked.input_schema"
                )
        for dep in part.after:
            if dep == name:
                problems.append(f"{where}.after: a part cannot wait for itself")
            elif dep not in linked.parts:
                problems.append(f"{where}.after: no part {dep!r}")
            elif part.required and not linked.parts[dep].required:
                problems.append(
                    f"{where}.after: a required part cannot wait for the optional part {dep!r}"
                )
        if len(set(part.after)) != len(part.after):
            problems.append(f"{where}.after: a part is named twice")
        if operation is not None:
            problems += _input_problems(where, name, part.input, linked, operation, after)
    cycle = _cycle(after)
    if cycle:
        problems.append(f"linked.parts: the parts wait for each other: {' → '.join(cycle)}")
    return problems


def _input_problems(
    where: str,
    name: str,
    spec: Mapping[str, Any] | None,
    linked: LinkedCase,
    operation: Any,
    after: Mapping[str, list[str]],
) -> list[str]:
    schema = getattr(operation, "input_schema", {})
    required = schema.get("required", []) if isinstance(schema, Mapping) else []
    if spec is None:
        # The application data goes as it is: it must hold what the operation requires.
        if not _declares(linked.input_schema):
            return []
        declared = _fields(linked.input_schema)
        return [
            f"{where}.input: the operation's input requires {f!r}, which"
            " linked.input_schema does not declare: map it with input"
            for f in required
            if f not in declared
        ]
    try:
        mapping = compile_mapping(spec)
    except MappingError as exc:
        return [f"{where}.input.{exc.field}: {exc.message}"]
    problems: list[str] = []
    reachable = _ancestors(name, after)
    targets: set[str] = set()
    for rule in mapping.rules:
        label = ".".join(rule.target)
        targets.add(rule.target[0])
        if _schema_at(schema, rule.target) is None:
            problems.append(
                f"{where}.input.{label}: not a field of operation input schema"
                f" ({', '.join(sorted(_fields(schema))) or 'no fields'})"
            )
        source = rule.source
        if source is None:
            continue
        if source[0] == "data" and len(source) > 1:
            if _schema_at(linked.input_schema, source[1:]) is None:
                problems.append(
                    f"{where}.input.{label}: {'.'.join(source)!r} is not a field of"
                    " linked.input_schema"
                )
        elif source[0] == "parts" and len(source) > 2:
            if source[1] not in reachable:
                problems.append(
                    f"{where}.input.{label}: {'.'.join(source)!r} reads part {source[1]!r},"
                    " which this part does not wait for (after)"
                )
        else:
            problems.append(
                f"{where}.input.{label}: a source is data.<field> or parts.<name>.<field>"
            )
    problems += [
        f"{where}.input: the operation's input requires {f!r}: map it"
        for f in required
        if f not in targets
    ]
    return problems


def _declares(schema: Any) -> bool:
    return isinstance(schema, Mapping) and isinstance(schema.get("properties"), Mapping)


def _fields(schema: Any) -> list[str]:
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    return list(properties) if isinstance(properties, Mapping) else []


# --- a part's input ----------------------------------------------------------------------------


def part_input(
    spec: Mapping[str, Any] | None, data: Any, results: Mapping[str, Mapping[str, Any] | None]
) -> Any:
    """The input of a linked part: ``spec`` over ``{"data": ..., "parts": {name: answer}}``,
    or the application data itself when the part maps nothing."""
    if spec is None:
        return data
    return compile_mapping(spec).apply({"data": data, "parts": dict(results)})


def unwinding(case: Case) -> bool:
    """A required part of the linked case failed: nothing more is sent but undos."""
    return case.linked and any(p.required and p.status in FAILED for p in case.parts)


def results_by_name(case: Case) -> dict[str, Mapping[str, Any] | None]:
    """The answers of the case's done parts, by their linked names."""
    return {p.name: p.result for p in case.parts if p.name is not None and p.status == P.DONE}


# --- settling the case -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settlement:
    """What the parts' new statuses imply: more part changes, entries, the case status."""

    changes: tuple[tuple[PartChange, str], ...] = ()
    """(change, reason) the parts' new statuses imply."""
    schedule: tuple[NewEntry, ...] = ()
    status: CaseStatus = S.RECEIVED
    close: bool = False
    """The case is finished: close it with ``outcome``."""
    outcome: Mapping[str, Any] | None = field(default=None)


def _accepted(case: Case, part: Part, status: PartStatus) -> bool:
    # A part back to pending for its supplement (补齐补正) was taken in by its back-end.
    return status in ACCEPTED or (status == P.PENDING and case.supplements_of(part.number) > 0)


def settle(
    case: Case,
    statuses: Mapping[int, PartStatus],
    *,
    now: float,
    intake: CaseStatus,
    errors: Mapping[int, str | None] | None = None,
) -> Settlement:
    """How a linked case stands once its parts have ``statuses`` (``errors``: the error codes
    this step gives them); see the module docstring."""
    parts = {p.number: p for p in case.parts}
    codes = {p.number: p.error_code for p in case.parts} | dict(errors or {})
    status = dict(statuses)
    changes: list[tuple[PartChange, str]] = []
    schedule: list[NewEntry] = []

    def move(number: int, to: PartStatus, reason: str) -> None:
        status[number] = to
        changes.append((PartChange(number, to), reason))

    failed = [n for n in sorted(parts) if parts[n].required and status[n] in FAILED]
    if not failed:
        stuck = True
        while stuck:  # cancelling one part may strand the parts waiting for it
            stuck = False
            for n in sorted(parts):
                blockers = [d for d in parts[n].after if status[d] in _CANNOT_FEED]
                if status[n] == P.WAITING and blockers:
                    move(n, P.CANCELLED, f"not sent: {parts[blockers[0]].label} will not be done")
                    stuck = True
        for n in sorted(parts):
            if status[n] == P.WAITING and all(status[d] == P.DONE for d in parts[n].after):
                move(n, P.PENDING, "released: the parts it waits for are done")
                schedule.append(NewEntry(EntryKind.DELIVER, now, n))
        progress = _progress(parts, status, intake)
        if progress == S.RESULT_DELIVERED:
            outcome = outcome_of(case, status, None, codes)
            return Settlement(tuple(changes), tuple(schedule), progress, True, outcome)
        return Settlement(tuple(changes), tuple(schedule), progress)

    trigger = parts[failed[0]]
    for n in sorted(parts):
        part = parts[n]
        if _accepted(case, part, status[n]) and part.compensate_with is not None:
            move(n, P.COMPENSATING, f"undoing: {trigger.label} is {status[trigger.number]}")
            schedule.append(NewEntry(EntryKind.COMPENSATE, now, n))
        elif status[n] == P.WAITING or (
            status[n] == P.PENDING
            and not _accepted(case, part, status[n])
            and n not in case.in_flight
        ):
            move(n, P.CANCELLED, f"not sent: {trigger.label} is {status[trigger.number]}")
    if P.COMPENSATION_FAILED in status.values():
        return Settlement(tuple(changes), tuple(schedule), S.DEAD_LETTERED)
    if any(s in (P.COMPENSATING, P.OUTCOME_UNKNOWN, P.PENDING) for s in status.values()):
        # Undos on their way, or a send on the wire whose answer decides what to undo.
        return Settlement(tuple(changes), tuple(schedule), S.COMPENSATING)
    final = _FINAL_OF[status[trigger.number]]
    outcome = outcome_of(case, status, trigger, codes)
    return Settlement(tuple(changes), tuple(schedule), final, True, outcome)


def _progress(
    parts: Mapping[int, Part], status: Mapping[int, PartStatus], intake: CaseStatus
) -> CaseStatus:
    """A linked case's status while no required part has failed."""
    values = set(status.values())
    if P.DEAD_LETTERED in values:
        return S.DEAD_LETTERED  # an optional part: an operator replays it
    if P.OUTCOME_UNKNOWN in values:
        return S.OUTCOME_UNKNOWN
    if P.SUPPLEMENT_REQUESTED in values:
        return S.SUPPLEMENT_REQUESTED
    active = [n for n in parts if status[n] in _ACTIVE]
    if not active and all(status[n] == P.DONE for n in parts if parts[n].required):
        return S.RESULT_DELIVERED
    waiting = [n for n in active if status[n] in (P.WAITING, P.PENDING)]
    if waiting and len(waiting) == len(active) and not any(s == P.DONE for s in values):
        return intake
    if waiting:
        return S.FORWARDED
    if values & {P.PROCESSING, P.DONE}:
        return S.PROCESSING
    return S.FORWARDED


def outcome_of(
    case: Case,
    status: Mapping[int, PartStatus],
    trigger: Part | None,
    codes: Mapping[int, str | None],
) -> dict[str, Any]:
    """The combined outcome of a linked case: one line for the applicant and lists by label."""
    by: dict[str, list[str]] = {}
    for part in case.parts:
        by.setdefault(status[part.number].value, []).append(part.label)
    not_undone = [
        p.label
        for p in case.parts
        if trigger is not None
        and status[p.number] in ACCEPTED
        and p.compensate_with is None
        and not p.reads_only
    ]
    result = "done" if trigger is None else status[trigger.number].value
    outcome: dict[str, Any] = {"result": result, "parts": by}
    if trigger is not None:
        outcome["failed_part"] = trigger.label
        outcome["error_code"] = codes.get(trigger.number)
    if not_undone:
        outcome["not_undone"] = not_undone
    return outcome
