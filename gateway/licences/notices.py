"""Status changes pushed by an issuer (变更、注销、吊销同步): signed notices that drop cached
answers and reach the cases that rely on the licence.

``POST /api/v1/callbacks/licences/{province}`` carries ``{"sequence", "licenceType", "number",
"status", "changedAt"}``, signed like a case callback: ``X-Tongban-Timestamp`` (Unix seconds,
within five minutes) and ``X-Tongban-Signature: sha256=<hex HMAC-SHA256 over timestamp + "." +
body>`` with the issuer's ``notice_secret`` (licences.yaml). A notice:

- drops every cached verification of the licence at once, so the next use asks the issuer
  (a revoked licence fails every later verification);
- adds a timeline entry and a ``licence_status_changed`` event to every case not yet closed
  that has the licence among its materials (the handling province decides what follows).

Notices are ordered per issuer by ``sequence``: one not newer than the last applied is a
duplicate and changes nothing (the timestamp window bounds replays across restarts).

Must not: import aiohttp; log licence numbers with holders.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from gateway.cases.errors import CallbackInvalid, CallbackRefused
from gateway.cases.lifecycle import case_event, iso_now
from gateway.cases.model import Case
from gateway.cases.store import CaseStore, Step, TransitionDraft
from gateway.licences.config import LICENCE_STATUSES, LicenceCatalogue
from gateway.licences.verify import LicenceVerifier

log = structlog.get_logger("tongban.licences")

NOTICE_SKEW = 300.0


@dataclass(frozen=True, slots=True)
class LicenceNotice:
    province: str
    sequence: int
    licence_type: str
    number: str
    status: str
    changed_at: str | None

    @property
    def ref(self) -> str:
        return f"elicence:{self.province}:{self.licence_type}:{self.number}"


@dataclass(frozen=True, slots=True)
class NoticeOutcome:
    status: Literal["applied", "duplicate"]
    forgotten: int = 0
    cases: tuple[str, ...] = ()


class LicenceNotices:
    def __init__(
        self,
        catalogue: LicenceCatalogue,
        verifier: LicenceVerifier,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalogue = catalogue
        self._verifier = verifier
        self._clock = clock
        self._keys = {
            province: issuer.notice_secret.get_secret_value().encode()
            for province, issuer in catalogue.issuers.items()
            if issuer.notice_secret is not None
        }
        self._last: dict[str, int] = {}

    def verify_signature(self, province: str, raw: bytes, timestamp: str, signature: str) -> None:
        key = self._keys.get(province)
        if key is None:
            raise CallbackRefused("This province's issuer is not registered for licence notices.")
        try:
            moment = float(timestamp)
        except ValueError:
            raise CallbackRefused("X-Tongban-Timestamp must be Unix seconds.") from None
        if abs(self._clock() - moment) > NOTICE_SKEW:
            raise CallbackRefused("The notice's timestamp is too far from now.")
        expected = hmac.new(key, timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.removeprefix("sha256=")):
            raise CallbackRefused("The notice's signature does not match.")

    def read(self, province: str, body: Mapping[str, Any]) -> LicenceNotice:
        sequence, licence_type = body.get("sequence"), body.get("licenceType")
        number, status = body.get("number"), body.get("status")
        licence = self._catalogue.licence_types.get(str(licence_type))
        if (
            not isinstance(sequence, int)
            or isinstance(sequence, bool)
            or sequence < 1
            or not isinstance(number, str)
            or not 0 < len(number) <= 64
            or status not in LICENCE_STATUSES
            or licence is None
            or province not in licence.issued_in
        ):
            raise CallbackInvalid(
                "A licence notice carries sequence (≥1), licenceType (a type this issuer"
                f" issues), number and a status in {list(LICENCE_STATUSES)}."
            )
        changed = body.get("changedAt")
        return LicenceNotice(
            province,
            sequence,
            str(licence_type),
            number,
            str(status),
            changed if isinstance(changed, str) else None,
        )

    async def apply(self, notice: LicenceNotice, store: CaseStore | None) -> NoticeOutcome:
        if notice.sequence <= self._last.get(notice.province, 0):
            return NoticeOutcome("duplicate")
        self._last[notice.province] = notice.sequence
        return await self.changed(notice, store)

    async def changed(self, notice: LicenceNotice, store: CaseStore | None) -> NoticeOutcome:
        """A change learnt (pushed, or found by polling): cached answers dropped, the open
        cases relying on the licence told."""
        forgotten = self._verifier.forget(notice.province, notice.licence_type, notice.number)
        touched: list[str] = []
        if store is not None:
            for case_id in await store.open_cases_with_material(notice.ref):
                applied = await store.apply(case_id, lambda case: self._step(case, notice))
                if applied is not None and applied.step is not None:
                    touched.append(case_id)
        log.info(
            "licence_notice_applied",
            province=notice.province,
            licence_type=notice.licence_type,
            status=notice.status,
            cases=len(touched),
        )
        return NoticeOutcome("applied", forgotten, tuple(touched))

    def _step(self, case: Case, notice: LicenceNotice) -> Step:
        at = iso_now()
        when = f" on {notice.changed_at}" if notice.changed_at else ""
        how = f"notice #{notice.sequence}" if notice.sequence else "found by polling the issuer"
        reason = (
            f"licence {notice.licence_type} {notice.number} of province {notice.province} is now"
            f" {notice.status} at its issuer{when} ({how})"
        )
        return Step(
            case_id=case.case_id,
            expected_version=case.version,
            status=case.status,
            at=at,
            transitions=(
                TransitionDraft(case.status, case.status, actor="gateway", reason=reason),
            ),
            events=(
                case_event(
                    case,
                    "licence_status_changed",
                    case.status,
                    at,
                    licence=notice.ref,
                    licence_status=notice.status,
                ),
            ),
            now=self._clock(),
        )
