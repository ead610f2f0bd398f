"""Polling the issuers that do not push their changes (变更、注销、吊销同步 by asking).

For each issuer with ``poll_seconds``, that often: the licences of that province held by cases
not yet closed are verified again at the issuer (the *verify* step, with the data digest bound
to the case); a licence no longer valid is handled as a pushed change would be
(gateway/licences/notices.py: cached answers dropped, the cases told), once per status.

Must not: import aiohttp; log licence numbers with holders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gateway.adapter import CallContext
from gateway.cases.store import CaseStore, CaseStoreError
from gateway.errors import GatewayError
from gateway.licences.config import LICENCE_STATUSES, LicenceCatalogue
from gateway.licences.notices import LicenceNotice, LicenceNotices
from gateway.licences.verify import IssuerCall

log = structlog.get_logger("tongban.licences")


class IssuerPoller:
    def __init__(
        self,
        catalogue: LicenceCatalogue,
        call: IssuerCall,
        notices: LicenceNotices,
        store: Callable[[], CaseStore | None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalogue = catalogue
        self._call = call
        self._notices = notices
        self._store = store
        self._clock = clock
        self._due: dict[str, float] = {}
        self._told: dict[str, str] = {}
        """Reference → the last status the cases were told (each change once)."""

    @property
    def interval(self) -> float | None:
        polled = [i.poll_seconds for i in self._catalogue.issuers.values() if i.poll_seconds]
        return min(polled) if polled else None

    async def poll_once(self) -> int:
        """Ask every due issuer; the number of changes found."""
        store = self._store()
        if store is None:
            return 0
        found = 0
        now = self._clock()
        for province, issuer in self._catalogue.issuers.items():
            if issuer.poll_seconds is None or self._due.get(province, 0.0) > now:
                continue
            self._due[province] = now + issuer.poll_seconds
            try:
                held = await store.open_case_materials(f"elicence:{province}:")
            except CaseStoreError:
                log.warning("licence_poll_store_unavailable", province=province)
                continue
            digests = {material.ref: material.digest for _case, material in held}
            for ref, digest in digests.items():
                found += await self._ask(ref, digest, store)
        return found

    async def _ask(self, ref: str, digest: str, store: CaseStore) -> int:
        _scheme, province, licence_type, number = ref.split(":", 3)
        if licence_type not in self._catalogue.licence_types:
            return 0
        context = CallContext(
            request_id=f"licence-poll-{int(time.time())}",
            purpose="证照状态同步",
            service=f"licence:{licence_type}",
            receiving_province=province,
            handling_province=province,
            principal="gateway",
            actor="gateway",
            level="system",
        )
        payload: Mapping[str, Any] = {
            "licenceType": licence_type,
            "number": number,
            "dataDigest": digest,
        }
        try:
            answer = await self._call(province, licence_type, "verify", payload, context)
        except GatewayError as exc:
            log.warning("licence_poll_failed", province=province, error_code=exc.code)
            return 0
        status = answer.get("status") if isinstance(answer, Mapping) else None
        if status not in LICENCE_STATUSES or status == "valid" or self._told.get(ref) == status:
            return 0
        self._told[ref] = str(status)
        await self._notices.changed(
            LicenceNotice(province, 0, licence_type, number, str(status), None), store
        )
        return 1

    async def run(self) -> None:
        """Poll until cancelled."""
        interval = self.interval
        if interval is None:
            return
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("licence_poll_round_failed")
            await asyncio.sleep(interval)
