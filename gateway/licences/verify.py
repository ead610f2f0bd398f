"""谁制发谁核验: find a holder's licence at its issuer, check the issuer's seal, ask its status.

``LicenceVerifier.find`` is the one path every licence access takes:

1. the type must be in the catalogue and issued in the province asked (else a client error);
2. a fresh cached answer for this holder and licence is used, and says so (``from_cache``);
3. otherwise the issuer's licence system is asked (through the same call stack as a routed
   call: audit, retries of what is safe, breaker, concurrency limit, timeouts): *search* the
   holder's licences of the type (when no number is given), *fetch* the sealed licence;
4. the gateway checks the seal itself against the issuer's published keys: a forged or altered
   seal is refused whatever the issuer says, and before asking it anything more;
5. the licence must be the data subject's (the subject key of the identifier its issuer sealed,
   gateway/identity/subject_keys.py, compared with the subject's; never the identifier itself);
6. the issuer *verifies* it (status: valid, changed, expired, revoked, cancelled), and only a
   valid licence within its validity passes;
7. a valid answer is cached for ``cache_seconds``; a change notice drops it (``forget``).

``check_document`` is the file verification (文件核验) of a sealed licence someone presents: the
seal first (no issuer needed, so a forgery is refused while the issuer is down), then the
issuer's status, failing closed (or a cached answer inside its window).

Must not: import aiohttp; log licence data or holder identifiers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol

import structlog

from gateway.adapter import CallContext
from gateway.consent.contract import DataSubject
from gateway.errors import BackendError, BackendRejected, ClientError, GatewayError
from gateway.licences.bulk import BulkLimits
from gateway.licences.config import LICENCE_STATUSES, LicenceCatalogue, LicenceType
from gateway.licences.errors import (
    NOT_VALID,
    LicenceAmbiguous,
    LicenceAnswerMalformed,
    LicenceExpired,
    LicenceIssuerUnavailable,
    LicenceIssuerUnknown,
    LicenceNotFound,
    LicenceNotSubjects,
    LicenceSealInvalid,
    UnknownLicenceType,
)
from gateway.licences.seal import SealedLicence, SealKeyRing, SealRefused
from gateway.pipeline import CallTrace
from gateway.unsent import never_sent

log = structlog.get_logger("tongban.licences")


class SubjectNamer(Protocol):
    """Names data subjects by keyed hash from identifiers (gateway/identity/subject_keys.py:
    ``SubjectKeys``): the same keys the data-subject rule and the consent book use."""

    def person(self, number: str, id_type: str = ...) -> DataSubject: ...

    def enterprise(self, identifier: str) -> DataSubject: ...


IssuerStep = Literal["search", "fetch", "verify"]
MAX_CACHED = 10_000
"""Cached verifications kept at most (one instance's memory)."""


class IssuerCall(Protocol):
    """One call to an issuer's licence system: (province, type, step, payload, context) → the
    system's answer as data; raises the gateway's BackendError family. ``trace``: filled in
    by the call stack (attempts), so the caller can tell a call that never left."""

    def __call__(
        self,
        province: str,
        licence_type: str,
        step: IssuerStep,
        payload: Mapping[str, Any],
        context: CallContext,
        trace: CallTrace | None = None,
    ) -> Awaitable[Any]: ...


@dataclass(slots=True)
class IssuerContact:
    """Whether a ``find`` may have asked the issuer anything: False until a step answered, or
    failed without proof that it never left (gateway/unsent.py). A counted grant use spent for a
    verification that failed while this is False is given back (gateway/licences/materials.py)."""

    asked: bool = False


@dataclass(frozen=True, slots=True)
class Holder:
    """Whose licence is asked for: the data subject, and the identifier the issuer searches by
    (held only for the call, never stored or logged)."""

    subject: DataSubject
    id_type: str
    id_number: str

    def __repr__(self) -> str:
        return f"Holder({self.subject.kind}, {self.subject.key[:8]}…)"


@dataclass(frozen=True, slots=True)
class Verification:
    """A licence found, sealed by its issuer and valid at its issuer, for one holder."""

    licence_type: str
    province: str
    number: str
    status: str
    holder: DataSubject
    data_digest: str
    seal_digest: str
    seal_kid: str
    verified_at: str
    """When the issuer said so (RFC 3339 UTC); for a cached answer, when it was first said."""
    from_cache: bool
    licence: SealedLicence

    @property
    def ref(self) -> str:
        return f"elicence:{self.province}:{self.licence_type}:{self.number}"

    def summary(self) -> dict[str, Any]:
        """What travels with a case and is shown on it: references and digests, no data."""
        return {
            "type": self.licence_type,
            "issuing_province": self.province,
            "number": self.number,
            "status": self.status,
            "data_digest": self.data_digest,
            "seal_digest": self.seal_digest,
            "seal_kid": self.seal_kid,
            "verified_at": self.verified_at,
            "from_cache": self.from_cache,
        }


def holder_subject(names: SubjectNamer, kind: str, id_type: str, number: str) -> DataSubject:
    """The data subject an identifier names, as a keyed hash."""
    if kind == "enterprise":
        return names.enterprise(number)
    return names.person(number, id_type)


@dataclass(slots=True)
class _Cached:
    verification: Verification
    until: float


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class LicenceVerifier:
    def __init__(
        self,
        catalogue: LicenceCatalogue,
        call: IssuerCall,
        names: SubjectNamer,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.catalogue = catalogue
        self._call = call
        self._names = names
        self._clock = clock
        self._now = now
        self._rings: dict[str, SealKeyRing] = {
            province: issuer.key_ring() for province, issuer in catalogue.issuers.items()
        }
        self._cache: dict[tuple[str, str, str, str], _Cached] = {}
        self.bulk: BulkLimits | None = None
        """Volume limits per requester and type (批量用证), when configured."""

    # --- lookups --------------------------------------------------------------------------

    def licence_type(self, code: str) -> LicenceType:
        found = self.catalogue.licence_types.get(code)
        if found is None:
            raise UnknownLicenceType(
                f"There is no licence type {code!r}; known: {sorted(self.catalogue.licence_types)}."
            )
        return found

    def issuer_name(self, province: str) -> str:
        issuer = self.catalogue.issuers.get(province)
        return issuer.name.zh if issuer is not None else province

    def holder(self, kind: str, id_type: str, number: str) -> Holder:
        return Holder(holder_subject(self._names, kind, id_type, number), id_type, number)

    def _check_issued(self, code: str, province: str) -> LicenceType:
        licence = self.licence_type(code)
        if province not in licence.issued_in:
            raise LicenceIssuerUnknown(
                f"Licence type {code!r} is not issued in province {province} (it is in"
                f" {sorted(licence.issued_in)})."
            )
        return licence

    # --- the cache ------------------------------------------------------------------------

    def _cached(self, key: tuple[str, str, str, str]) -> Verification | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.until <= self._clock():
            del self._cache[key]
            return None
        return replace(entry.verification, from_cache=True)

    def _remember(self, verification: Verification, *keys: tuple[str, str, str, str]) -> None:
        ttl = self.catalogue.cache_seconds
        if ttl <= 0:
            return
        now = self._clock()
        if len(self._cache) >= MAX_CACHED:
            # Bounded: the expired go first, then the oldest (insertion order).
            for stale in [k for k, e in self._cache.items() if e.until <= now]:
                del self._cache[stale]
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]
        for key in keys:
            self._cache.pop(key, None)
            self._cache[key] = _Cached(verification, now + ttl)

    def forget(self, province: str, licence_type: str, number: str) -> int:
        """Drop every cached answer about one licence (the issuer reported a change)."""
        gone = [
            key
            for key, entry in self._cache.items()
            if entry.verification.province == province
            and entry.verification.licence_type == licence_type
            and entry.verification.number == number
        ]
        for key in gone:
            del self._cache[key]
        return len(gone)

    # --- the path every access takes ------------------------------------------------------

    async def find(
        self,
        licence_type: str,
        province: str,
        holder: Holder,
        context: CallContext,
        *,
        number: str | None = None,
        fresh: bool = False,
        contact: IssuerContact | None = None,
    ) -> Verification:
        """``fresh``: ask the issuer whatever is cached (a presentation's live status);
        ``contact``: told whether the issuer may have been asked anything, whatever the outcome."""
        licence = self._check_issued(licence_type, province)
        if licence.holder != holder.subject.kind:
            raise ClientError(
                f"A {licence_type!r} is held by a {licence.holder}, not a {holder.subject.kind}."
            )
        if self.bulk is not None:
            await self.bulk.hit(context.client or context.principal, licence_type)
        key = (province, licence_type, holder.subject.key, number or "")
        cached = None if fresh else self._cached(key)
        if cached is not None:
            return cached
        try:
            if number is None:
                number = await self._search(licence_type, province, holder, context, contact)
            sealed = await self._fetch(licence_type, province, number, context, contact)
        except BackendError as exc:
            raise self._unavailable(province, exc) from None
        self._check_seal(province, sealed)
        self._check_identity(sealed, licence_type, province, number)
        if self._holder_of(sealed, licence.holder) != holder.subject:
            raise LicenceNotSubjects(
                f"The {licence.name.zh} {number} is not the case's data subject's: a licence"
                " is used only for its holder and the matter at hand."
            )
        verification = await self._status(
            licence_type, province, number, sealed, holder, context, contact
        )
        self._remember(verification, key, (province, licence_type, holder.subject.key, number))
        return verification

    async def check_document(
        self, sealed: SealedLicence, context: CallContext, *, licence_type: str, province: str
    ) -> Verification:
        """File verification (文件核验) of a sealed licence someone presents."""
        licence = self._check_issued(licence_type, province)
        self._check_seal(province, sealed)  # first: a forgery needs no issuer to be refused
        number = sealed.data.get("number")
        if not isinstance(number, str):
            raise LicenceSealInvalid("The sealed licence has no number.", reason="malformed")
        self._check_identity(sealed, licence_type, province, number)
        subject = self._holder_of(sealed, licence.holder)
        key = (province, licence_type, subject.key, number)
        cached = self._cached(key)
        if cached is not None:
            if cached.data_digest != sealed.data_digest:
                raise NOT_VALID["changed"](
                    "This copy differs from the licence the issuer confirmed.", status="changed"
                )
            return cached
        holder = Holder(subject, "", "")
        verification = await self._status(licence_type, province, number, sealed, holder, context)
        self._remember(verification, key)
        return verification

    # --- the steps ------------------------------------------------------------------------

    def _unavailable(self, province: str, exc: BackendError) -> LicenceIssuerUnavailable:
        if isinstance(exc, LicenceAnswerMalformed):
            return exc  # type: ignore[return-value]
        name = self.issuer_name(province)
        log.warning("licence_issuer_unavailable", province=province, error_code=exc.code)
        return LicenceIssuerUnavailable(
            f"The licence system of {name} (province {province}) cannot be asked now"
            f" ({exc.code}); the licence cannot be verified, so nothing was done.",
            reached_backend=exc.reached_backend,
            issuer=province,
            cause=exc.code,
        )

    async def _ask(
        self,
        province: str,
        licence_type: str,
        step: IssuerStep,
        payload: Mapping[str, Any],
        context: CallContext,
        contact: IssuerContact | None,
    ) -> Any:
        """One step at the issuer; ``contact`` learns whether it may have reached the issuer
        (decided as for a routed call: gateway/unsent.py)."""
        trace = CallTrace()
        asked = True  # an answer, or a failure of unknown extent
        try:
            return await self._call(province, licence_type, step, payload, context, trace)
        except GatewayError as exc:
            asked = not never_sent(exc, trace)
            raise
        finally:
            if contact is not None and asked:
                contact.asked = True

    async def _search(
        self,
        licence_type: str,
        province: str,
        holder: Holder,
        context: CallContext,
        contact: IssuerContact | None = None,
    ) -> str:
        payload: dict[str, Any] = {"licenceType": licence_type, "holder": _holder_payload(holder)}
        answer = await self._ask(province, licence_type, "search", payload, context, contact)
        found = answer.get("licences") if isinstance(answer, Mapping) else None
        if not isinstance(found, list) or not all(
            isinstance(i, Mapping) and isinstance(i.get("number"), str) for i in found
        ):
            raise self._malformed(province, "search")
        if not found:
            raise LicenceNotFound(
                f"{self.issuer_name(province)} holds no {self.licence_type(licence_type).name.zh}"
                " for the case's data subject."
            )
        # A reissued licence leaves the revoked one behind: the holder means the valid one.
        valid = [str(i["number"]) for i in found if i.get("status", "valid") == "valid"]
        if not valid:
            status = str(found[0].get("status"))
            error = NOT_VALID.get(status, LicenceExpired)
            raise error(
                f"{self.issuer_name(province)} holds the holder's"
                f" {self.licence_type(licence_type).name.zh} only as {status}.",
                status=status,
                issuer=province,
            )
        if len(valid) > 1:
            raise LicenceAmbiguous(
                f"The holder has {len(valid)} valid licences of type {licence_type!r}: name the"
                " number.",
                numbers=len(valid),
            )
        return valid[0]

    async def _fetch(
        self,
        licence_type: str,
        province: str,
        number: str,
        context: CallContext,
        contact: IssuerContact | None = None,
    ) -> SealedLicence:
        payload = {"licenceType": licence_type, "number": number}
        try:
            answer = await self._ask(province, licence_type, "fetch", payload, context, contact)
        except BackendRejected as exc:
            # The issuer's "no such licence" (HTTP 404); any other refusal (our credentials,
            # say) is the issuer not answering: the caller fails closed, naming it.
            if not exc.detail.startswith("HTTP 404"):
                raise
            raise LicenceNotFound(
                f"{self.issuer_name(province)} holds no licence {number} of type {licence_type!r}."
            ) from None
        try:
            return SealedLicence.from_answer(answer)
        except SealRefused:
            raise self._malformed(province, "fetch") from None

    def _check_seal(self, province: str, sealed: SealedLicence) -> None:
        try:
            self._rings[province].check(sealed, self._now())
        except SealRefused as exc:
            log.warning("licence_seal_refused", province=province, reason=exc.reason)
            raise LicenceSealInvalid(
                f"The electronic seal of {self.issuer_name(province)} does not hold over this"
                f" licence ({exc.reason}): {exc}.",
                reason=exc.reason,
                issuer=province,
            ) from None

    def _check_identity(
        self, sealed: SealedLicence, licence_type: str, province: str, number: str
    ) -> None:
        data = sealed.data
        if data.get("type") != licence_type or data.get("issuer") != province:
            raise LicenceSealInvalid(
                "The sealed licence is of another type or issuer than asked for.",
                reason="mismatch",
                issuer=province,
            )
        if data.get("number") != number:
            raise LicenceSealInvalid(
                "The sealed licence carries another number than asked for.",
                reason="mismatch",
                issuer=province,
            )

    def _holder_of(self, sealed: SealedLicence, kind: str) -> DataSubject:
        holder = sealed.data.get("holder")
        if not isinstance(holder, Mapping):
            raise self._malformed(str(sealed.data.get("issuer")), "fetch")
        if kind == "enterprise":
            code = holder.get("creditCode")
            if not isinstance(code, str):
                raise self._malformed(str(sealed.data.get("issuer")), "fetch")
            return holder_subject(self._names, kind, "", code)
        id_type, number = holder.get("idType"), holder.get("idNumber")
        if not isinstance(id_type, str) or not isinstance(number, str):
            raise self._malformed(str(sealed.data.get("issuer")), "fetch")
        return holder_subject(self._names, kind, id_type, number)

    async def _status(
        self,
        licence_type: str,
        province: str,
        number: str,
        sealed: SealedLicence,
        holder: Holder,
        context: CallContext,
        contact: IssuerContact | None = None,
    ) -> Verification:
        payload = {"licenceType": licence_type, "number": number, "dataDigest": sealed.data_digest}
        try:
            answer = await self._ask(province, licence_type, "verify", payload, context, contact)
        except BackendError as exc:
            raise self._unavailable(province, exc) from None
        status = answer.get("status") if isinstance(answer, Mapping) else None
        if status not in LICENCE_STATUSES:
            raise self._malformed(province, "verify")
        if status == "valid" and _expired(sealed.data.get("validUntil"), self._now().date()):
            status = "expired"
        if status != "valid":
            error = NOT_VALID.get(str(status), LicenceExpired)
            raise error(
                f"{self.issuer_name(province)} says the {self.licence_type(licence_type).name.zh}"
                f" {number} is {status}.",
                status=status,
                issuer=province,
            )
        return Verification(
            licence_type=licence_type,
            province=province,
            number=number,
            status="valid",
            holder=holder.subject,
            data_digest=sealed.data_digest,
            seal_digest=sealed.seal_digest,
            seal_kid=sealed.kid,
            verified_at=_iso(self._now()),
            from_cache=False,
            licence=sealed,
        )

    def _malformed(self, province: str, step: str) -> LicenceAnswerMalformed:
        log.warning("licence_answer_malformed", province=province, step=step)
        return LicenceAnswerMalformed(
            f"The licence system of {self.issuer_name(province)} gave an answer to {step} that"
            " cannot be used; nothing was done.",
            reached_backend=True,
            issuer=province,
        )


def _holder_payload(holder: Holder) -> dict[str, str]:
    if holder.subject.kind == "enterprise":
        return {"creditCode": holder.id_number}
    return {"idType": holder.id_type, "idNumber": holder.id_number}


def _expired(valid_until: Any, today: date) -> bool:
    if not isinstance(valid_until, str):
        return False
    try:
        return date.fromisoformat(valid_until) < today
    except ValueError:
        return True
