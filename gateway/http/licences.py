"""Electronic licences in the app: the verifier and the 免证办 hook of case intake, opened with
the app over the open systems (after the systems context, before the cases context)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from gateway.audit.calls import CallAuditor
from gateway.audit.record import AuditEvent
from gateway.http.keys import SETTINGS, STATE
from gateway.identity.identifiers import link_keyer
from gateway.licences.issuers import StackIssuerCall
from gateway.licences.materials import LicenceMaterials
from gateway.licences.verify import LicenceVerifier
from gateway.pipeline import Sleep


@dataclass(slots=True)
class LicenceRuntime:
    """Filled in when the app starts; empty when no licence type is configured."""

    verifier: LicenceVerifier | None = None
    materials: LicenceMaterials | None = None


LICENCES = web.AppKey("licences", LicenceRuntime)


def add_licences(app: web.Application, sleep: Sleep) -> None:
    app[LICENCES] = LicenceRuntime()

    async def context(app: web.Application) -> AsyncIterator[None]:
        settings, state, runtime = app[SETTINGS], app[STATE], app[LICENCES]
        catalogue = settings.licences
        identity = settings.gateway.identity
        if catalogue.licence_types and identity is not None and identity.link_secret is not None:
            writer = state.audit
            keyer = link_keyer(identity.link_secret.get_secret_value(), identity.link_algorithm)
            calls = StackIssuerCall(
                catalogue,
                state.systems,
                auditor=CallAuditor(writer) if writer is not None else None,
                sleep=sleep,
            )
            runtime.verifier = LicenceVerifier(catalogue, calls, keyer)

            async def record(event: AuditEvent) -> None:
                if writer is not None:
                    await writer.append(event)

            runtime.materials = LicenceMaterials(
                runtime.verifier, lambda: state.catalog, record=record
            )
        yield

    app.cleanup_ctx.append(context)
