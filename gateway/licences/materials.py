"""免证办 at intake: the licences a service's materials name, found and verified for the case.

For each material a service declares with ``licence:`` (services/*.yaml), whether or not the
application names it (``{"code": ..., "licence": {"number": ...}}``; the number only when the
holder has several), the hook:

- reads the holder's identifier at the material's ``holder_id`` in the application data: the
  case's data subject, whose licence it must be;
- finds, seal-checks and verifies the licence at its issuer (gateway/licences/verify.py);
- adds the material to the case by reference (``elicence:<province>:<type>:<number>``) and data
  digest, and a timeline entry with number, data digest, seal digest and verification time;
- fills ``deliver_as`` in the application data with the verification results (and the
  licence's fields where ``with_data`` says the province pair's agreement allows it), which
  the handling province receives with the case.

Any refusal (not found, not valid, another holder's, a seal that does not hold, the issuer
unreachable) is raised before the case exists, and recorded in the audit trail.

A licence of someone else's is used under the holder's grant (gateway/licences/access.py); a
counted use of it is spent only by an application that is taken in. When a verification fails,
the uses spent for the application's licences are given back, but for one whose issuer may have
been asked and did not answer (a timeout, an error of unknown extent: the rule of a routed call,
gateway/unsent.py), which stays spent. The uses of an application whose licences all passed are
handed to the case service, which gives them back when the case is then not written.

Must not: import aiohttp; keep or log the holder's identifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.adapter import CallContext
from gateway.audit.record import AuditEvent, EventType
from gateway.cases.model import CaseStatus, MaterialRef, NewCase
from gateway.cases.store import TransitionDraft
from gateway.catalog import Catalog
from gateway.errors import ClientError, GatewayError, ValidationFailed
from gateway.licences.access import HolderCheck, Spent
from gateway.licences.config import LicenceUse
from gateway.licences.verify import Holder, IssuerContact, LicenceVerifier, Verification
from gateway.principal import Principal

Record = Callable[[AuditEvent], Awaitable[None]]


def _at(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


class LicenceMaterials:
    """The materials hook of ``CaseService`` (``MaterialsHook``)."""

    def __init__(
        self,
        verifier: LicenceVerifier,
        catalog: Callable[[], Catalog],
        *,
        record: Record | None,
        holders: HolderCheck | None = None,
    ) -> None:
        self._verifier = verifier
        self._catalog = catalog
        self._record = record
        self._holders = holders or HolderCheck()

    async def bind(
        self, new: NewCase, body: Mapping[str, Any], status: CaseStatus, principal: Principal
    ) -> tuple[NewCase, list[TransitionDraft], list[Spent]]:
        spent: list[Spent] = []
        try:
            new, drafts = await self._bind(new, body, status, principal, spent)
        except Exception:
            # Nothing is taken in: the uses spent for it go back (but one kept by _verify).
            await self._holders.give_back(spent)
            raise
        return new, drafts, spent

    async def give_back(self, spent: list[Spent]) -> None:
        """The uses ``bind`` handed over, for an application that was then not taken in."""
        await self._holders.give_back(spent)

    async def _bind(
        self,
        new: NewCase,
        body: Mapping[str, Any],
        status: CaseStatus,
        principal: Principal,
        spent: list[Spent],
    ) -> tuple[NewCase, list[TransitionDraft]]:
        service = self._catalog().service(new.service)
        uses = {m.code: (m, m.licence) for m in service.materials if m.licence is not None}
        if not uses:
            return new, []
        data = dict(new.data)
        targets = {use.deliver_as for _m, use in uses.values() if use.deliver_as}
        sent = sorted(targets & data.keys())
        if sent:
            raise ValidationFailed(
                "The verified licences are filled in by the gateway, not the applicant.",
                errors=[
                    {"path": f"/data/{name}", "message": "filled by the gateway"} for name in sent
                ],
            )
        given: dict[str, Mapping[str, Any]] = {}
        for index, item in enumerate(body.get("materials") or ()):
            if not isinstance(item, Mapping) or item.get("code") not in uses:
                continue
            code = str(item["code"])
            if "licence" in item:
                given[code] = item.get("licence") or {}
            else:
                # A licence given by reference is verified like one given by number.
                given[code] = _from_ref(code, uses[code][1], str(item.get("ref")), index)
        # What the applicant said of a licence is replaced by what the issuer confirmed.
        kept = tuple(m for m in new.materials if m.code not in uses)
        refs: list[MaterialRef] = []
        drafts: list[TransitionDraft] = []
        deliver: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for code, (material, use) in uses.items():
            ask = given.get(code)
            if ask is None and not material.required:
                continue
            verification = await self._verify(new, code, use, ask or {}, data, principal, spent)
            refs.append(MaterialRef(code, verification.ref, verification.data_digest))
            drafts.append(
                TransitionDraft(
                    status, status, actor="gateway", reason=_timeline(code, verification)
                )
            )
            if use.deliver_as:
                entry = {"material": code, **verification.summary()}
                if use.with_data and self._agreed(new):
                    entry["data"] = dict(verification.licence.data.get("fields") or {})
                deliver[use.deliver_as].append(entry)
        data.update(deliver)
        return dataclasses.replace(new, materials=(*kept, *refs), data=data), drafts

    def _agreed(self, new: NewCase) -> bool:
        """Every route the case travels lets licence data go with it (the province pairs'
        agreements); otherwise only references and verifications travel."""
        catalog = self._catalog()
        return all(
            catalog.route(
                new.service, p.operation, new.receiving_province, p.handling_province
            ).licence_data
            for p in new.parts
        )

    async def _verify(
        self,
        new: NewCase,
        code: str,
        use: LicenceUse,
        ask: Mapping[str, Any],
        data: Mapping[str, Any],
        principal: Principal,
        spent: list[Spent],
    ) -> Verification:
        where = f"/materials/{code}"
        province_asked = ask.get("issuing_province")
        licence_type = use.type or _at(data, str(use.type_from))
        if not isinstance(licence_type, str):
            raise ValidationFailed(
                f"Name the licence type at data.{use.type_from}.",
                errors=[
                    {"path": "/data/" + str(use.type_from).replace(".", "/"), "message": "required"}
                ],
            )
        if ask.get("type") not in (None, licence_type):
            raise ValidationFailed(
                f"Material {code!r} is a {licence_type!r} licence.",
                errors=[{"path": f"{where}/licence/type", "message": f"expected {licence_type!r}"}],
            )
        licence = self._verifier.licence_type(licence_type)  # client.unknown_licence_type
        holder_id = _at(data, use.holder_id)
        if not isinstance(holder_id, str) or not holder_id:
            raise ValidationFailed(
                f"The holder of the {licence.name.zh} is named at data.{use.holder_id}.",
                errors=[
                    {"path": "/data/" + use.holder_id.replace(".", "/"), "message": "required"}
                ],
            )
        province = use.issuing_province or (
            _at(data, use.issuing_province_from) if use.issuing_province_from else None
        )
        if province is None and len(licence.issued_in) == 1:
            province = next(iter(licence.issued_in))
        if province_asked is not None and province_asked != province:
            raise ValidationFailed(
                f"Material {code!r} is a licence issued in province {province}.",
                errors=[{"path": f"{where}/ref", "message": f"expected an issuer in {province}"}],
            )
        if not isinstance(province, str):
            raise ValidationFailed(
                f"Name the province that issued the {licence.name.zh}.",
                errors=[
                    {
                        "path": "/data/" + str(use.issuing_province_from).replace(".", "/"),
                        "message": "required",
                    }
                ],
            )
        if use.at_issuer and any(p.handling_province != province for p in new.parts):
            raise ValidationFailed(
                f"This goes to the licence's issuer: handle it in province {province}.",
                errors=[{"path": "/handling_province", "message": f"expected {province}"}],
            )
        holder = self._verifier.holder(licence.holder, use.holder_id_type, holder_id)
        context = CallContext(
            request_id=new.request_id or new.case_id,
            purpose=new.purpose,
            service=new.service,
            receiving_province=new.receiving_province,
            handling_province=province,
            principal=new.subject,
            actor=new.actor or new.subject,
            level=new.level,
            case_id=new.case_id,
            client=new.client_id,
        )
        number = ask.get("number")
        granted: Spent | None = None
        contact = IssuerContact()
        try:
            # The holder is the caller, or the holder's grant covers the caller (授权用证). A
            # holder the data-subject rule already verified for this application (the caller, or
            # a co-applicant whose grant it used) is not asked again: a counted grant is spent
            # once per application.
            if holder.subject.key not in new.applicants:
                granted = await self._holders.authorise(
                    principal,
                    holder.subject,
                    grant_id=new.authorisation_ref,
                    service=new.service,
                    operation=None,
                    purpose=new.purpose,
                )
                if granted is not None and granted[1].uses_left is not None:
                    spent.append(granted)
            found = await self._verifier.find(
                licence_type,
                province,
                holder,
                context,
                number=number if isinstance(number, str) else None,
                contact=contact,
            )
        except Exception as exc:
            if granted in spent and contact.asked and not isinstance(exc, ClientError):
                # The issuer may have handled a request for the holder's licence and its
                # outcome is unknown: as for a routed call, this use stays spent.
                spent.remove(granted)
            if isinstance(exc, GatewayError):
                await self._audit(
                    new,
                    code,
                    licence_type,
                    province,
                    outcome="denied",
                    error=exc.code,
                    holder=holder,
                )
            raise
        await self._audit(
            new, code, licence_type, province, outcome="ok", found=found, holder=holder
        )
        return found

    async def _audit(
        self,
        new: NewCase,
        code: str,
        licence_type: str,
        province: str,
        *,
        outcome: str,
        error: str | None = None,
        found: Verification | None = None,
        holder: Holder | None = None,
    ) -> None:
        if self._record is None:
            return
        extra: dict[str, Any] = {"material": code, "licence_type": licence_type}
        if holder is not None:
            extra["subjects"] = [holder.subject.key]  # the holder's access log finds it
        if found is not None:
            extra.update(
                number=found.number,
                seal_digest=found.seal_digest,
                seal_kid=found.seal_kid,
                from_cache=found.from_cache,
            )
        await self._record(
            AuditEvent(
                type=EventType.LICENCE_VERIFIED,
                request_id=new.request_id,
                case_id=new.case_id,
                actor=new.actor,
                principal=new.subject,
                identity_level=new.level,
                client=new.client_id,
                service=new.service,
                receiving_province=new.receiving_province,
                handling_province=province,
                purpose=new.purpose,
                outcome=outcome,
                error_code=error,
                response_digest=found.data_digest if found is not None else None,
                extra=extra,
            )
        )


def _timeline(code: str, found: Verification) -> str:
    cached = f"; a cached answer of the issuer from {found.verified_at}" if found.from_cache else ""
    return (
        f"免证办 {code}: {found.licence_type} {found.number} of province {found.province} is"
        f" {found.status} at its issuer (verified {found.verified_at}{cached}); data"
        f" {found.data_digest}; seal {found.seal_digest} (key {found.seal_kid})"
    )


def _from_ref(code: str, use: LicenceUse, ref: str, index: int) -> dict[str, str]:
    """``elicence:<province>:<type>:<number>`` → the licence it names; anything else for a
    material the gateway finds as a licence is refused."""
    parts = ref.split(":", 3)
    if (
        len(parts) != 4
        or parts[0] != "elicence"
        or parts[2] != (use.type or parts[2])
        or not parts[3]
    ):
        raise ValidationFailed(
            f"Material {code!r} is a licence the gateway verifies at its issuer:"
            ' give it as {"licence": {"number": ...}} or elicence:<province>:<type>:<number>.',
            errors=[
                {"path": f"/materials/{index}/ref", "message": "not a reference to this licence"}
            ],
        )
    return {"issuing_province": parts[1], "number": parts[3]}
