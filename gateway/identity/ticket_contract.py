"""A SOAP signed-ticket platform's configuration checked against its vendored WSDL.

Names differ per platform and per transport (docs/identity-platforms.md): a call configured
with ``ticket`` where the platform's WSDL says ``arg`` would fail on the first citizen's login.
``idp_contract_problems`` loads the WSDL (local files only, parsed once per file version) and
names every operation the binding lacks and every element a call would send that the
operation's request does not have, with the nearest name the WSDL does have.

Must not: load anything over the network; import aiohttp.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NoReturn

import zeep
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]
from zeep.transports import Transport

from gateway.config_problems import suggestion
from gateway.identity.upstream_kinds import AnyIdpSettings, TicketIdpSettings
from gateway.identity.upstream_ticket import soap_binding


class _LocalTransport(Transport):
    """Vendored files only: an import of a remote document is refused."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def _load_remote_data(self, url: str) -> NoReturn:
        raise zeep.exceptions.TransportError(  # type: ignore[no-untyped-call]
            f"the WSDL imports {url}: vendor it and refer to the local file"
        )


@functools.lru_cache(maxsize=16)
def _document(path: str, _mtime: int) -> Any:
    settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True)
    return zeep.Client(path, transport=_LocalTransport(), settings=settings).wsdl  # type: ignore[no-untyped-call]


def idp_contract_problems(idp: AnyIdpSettings, config_dir: Path) -> list[str]:
    """'field: message' for each way the platform's calls do not fit their WSDLs."""
    if not isinstance(idp, TicketIdpSettings) or idp.transport != "soap":
        return []
    problems: list[str] = []
    for key in idp.operations:
        call = idp.call(key)
        where = f"operations.{key}"
        if not call.wsdl:
            problems.append(f"{where}: a SOAP call needs a vendored WSDL (wsdl:)")
            continue
        path = config_dir / call.wsdl
        try:
            document = _document(str(path.resolve()), path.stat().st_mtime_ns)
        except OSError:
            problems.append(f"{where}: wsdl: file {call.wsdl} not found")
            continue
        except (zeep.exceptions.Error, etree.XMLSyntaxError, ValueError) as exc:
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            problems.append(f"{where}: wsdl: {call.wsdl} cannot be loaded: {detail}")
            continue
        binding = soap_binding(document, idp.binding)
        if binding is None:
            problems.append(f"binding: {call.wsdl} has no single SOAP binding to use: name one")
            continue
        operations = binding.all()
        operation = operations.get(call.name)
        if operation is None:
            problems.append(
                f"{where}: the WSDL's binding has no operation {call.name!r}"
                f"{suggestion(call.name, operations)}"
            )
            continue
        body = getattr(operation.input, "body", None)
        known = [name for name, _ in getattr(getattr(body, "type", None), "elements", [])]
        sent = {
            "argument": call.argument,
            "app": call.app,
            "time": call.time,
            "sign": call.sign,
            "datatype": call.datatype,
            **({"proxy_app": call.proxy_app} if key == "proxy" else {}),
            **{f"extra.{name}": name for name, _ in call.extra},
        }
        for field, name in sent.items():
            if name is not None and name not in known:
                problems.append(
                    f"{where}.{field}: {call.name} has no element {name!r}{suggestion(name, known)}"
                )
    return sorted(set(problems), key=problems.index)
