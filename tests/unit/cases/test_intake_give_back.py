"""Counted grant uses spent for an application go back when the case is certainly not written.

The materials hook (免证办) hands the case service the counted uses it spent for licences of
someone else's. The service gives them back when the application is then not taken in: the
intake record failing closed, the case store failing before its commit, the key taken by another
application, or a twin request that took the same application in first. A case whose commit may
have landed (``CommitUnknown``), and a case taken in, keep them. On both stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.record import AuditEvent
from gateway.cases.audit import MemoryCaseAudit
from gateway.cases.errors import CaseStoreDown, IdempotencyKeyReused
from gateway.cases.model import Case, CaseStatus, NewCase
from gateway.cases.service import CaseService
from gateway.cases.store import (
    CaseStore,
    CaseStoreUnavailable,
    CommitUnknown,
    CreateResult,
    TransitionDraft,
)
from gateway.consent.contract import DataSubject, GrantAsk, GrantUse, Requester
from gateway.errors import AuditUnavailable
from gateway.principal import Principal
from tests.unit.cases.catalog_fixtures import build_catalog

CITIZEN = Principal("citizen-a", "L3", "portal-63")
MATERIALS = [{"code": "id-card", "ref": "urn:elicence:1", "digest": "sha256:" + "b" * 64}]
ASK = GrantAsk(
    grant_id="g-holder",
    subject=DataSubject("person", "pk-holder"),
    requester=Requester(client_id="portal-63"),
    service="filing",
    operation=None,
    purpose="test",
)
USE = GrantUse("g-holder", "consent", 0)


class Hook:
    """A materials hook that spends one counted use of a licence holder's grant."""

    def __init__(self) -> None:
        self.given_back: list[tuple[GrantAsk, GrantUse]] = []

    async def bind(
        self, new: NewCase, body: Mapping[str, Any], status: CaseStatus, principal: Principal
    ) -> tuple[NewCase, list[TransitionDraft], list[tuple[GrantAsk, GrantUse]]]:
        return new, [], [(ASK, USE)]

    async def give_back(self, spent: list[tuple[GrantAsk, GrantUse]]) -> None:
        self.given_back.extend(spent)


class FailingIntake(MemoryCaseAudit):
    async def record(self, event: AuditEvent, *, required: bool) -> None:
        if required:
            raise AuditUnavailable("The audit trail cannot be written.")
        await super().record(event, required=required)


def body(n: int = 1) -> dict[str, Any]:
    return {
        "service": "filing",
        "operation": "apply",
        "receiving_province": "63",
        "handling_province": "61",
        "purpose": "test",
        "data": {"n": n},
        "materials": MATERIALS,
    }


def service(store: CaseStore, tmp_path: Path, hook: Hook, **kwargs: Any) -> CaseService:
    catalog, _fakes = build_catalog(tmp_path)
    return CaseService(store, lambda: catalog, materials=hook, **kwargs)


async def test_a_case_taken_in_keeps_the_use(store: CaseStore, tmp_path: Path) -> None:
    hook = Hook()
    cases = service(store, tmp_path, hook, audit=MemoryCaseAudit())
    submitted = await cases.submit(CITIZEN, body(), idempotency_key="key-00000001")
    assert submitted.created
    assert hook.given_back == []
    # The same application again: found before anything is spent.
    again = await cases.submit(CITIZEN, body(), idempotency_key="key-00000001")
    assert (again.case.case_id, again.created) == (submitted.case.case_id, False)
    assert hook.given_back == []


async def test_the_intake_record_failing_closed_gives_the_use_back(
    store: CaseStore, tmp_path: Path
) -> None:
    hook = Hook()
    cases = service(store, tmp_path, hook, audit=FailingIntake())
    with pytest.raises(AuditUnavailable):
        await cases.submit(CITIZEN, body(), idempotency_key="key-00000002")
    assert hook.given_back == [(ASK, USE)]


@pytest.mark.parametrize(
    ("failure", "given_back"),
    [
        # Before its commit: certainly no case, the use goes back.
        (CaseStoreUnavailable("OperationalError"), [(ASK, USE)]),
        # The commit's answer lost: the case may exist, the use stays spent.
        (CommitUnknown("ConnectionDoesNotExistError"), []),
    ],
    ids=["before-the-commit", "commit-unknown"],
)
async def test_the_store_failing_gives_the_use_back_unless_the_case_may_exist(
    store: CaseStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: CaseStoreUnavailable,
    given_back: list[Any],
) -> None:
    hook = Hook()
    cases = service(store, tmp_path, hook)

    async def down(*args: Any, **kwargs: Any) -> CreateResult:
        raise failure

    monkeypatch.setattr(store, "create", down)
    with pytest.raises(CaseStoreDown):
        await cases.submit(CITIZEN, body(), idempotency_key="key-00000003")
    assert hook.given_back == given_back


async def test_a_key_taken_meanwhile_gives_the_use_back(
    store: CaseStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another application took the key between the look-up and the write."""
    hook = Hook()
    cases = service(store, tmp_path, hook)
    await cases.submit(CITIZEN, body(1), idempotency_key="key-00000005")
    hook.given_back.clear()

    async def not_yet(owner: str, key: str) -> Case | None:
        return None  # what the look-up saw before the other one committed

    monkeypatch.setattr(store, "find", not_yet)
    with pytest.raises(IdempotencyKeyReused):
        await cases.submit(CITIZEN, body(2), idempotency_key="key-00000005")
    assert hook.given_back == [(ASK, USE)]

    # The same application, taken in first by a twin request: this one spent for nothing.
    again = await cases.submit(CITIZEN, body(1), idempotency_key="key-00000005")
    assert not again.created
    assert hook.given_back == [(ASK, USE), (ASK, USE)]
