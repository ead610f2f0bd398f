"""The signed-ticket kind of ``UpstreamIdP`` : the Zhejiang / Gansu shape.

1. Login redirect: ``login_url?{servicecode}=app&{goto}=callback?state=…`` (parameter names per
   platform); the gateway's ``state`` rides in the return address, which the platform echoes.
2. Callback: ``?state=…&ticket=…``; the gateway checks ``state`` first (sso.py), then the ticket
   goes server-to-server only.
3. ``ticketValidation(st)`` → token and platform user id; ``getUserInfo(token)`` → attributes.
   Each call is signed (signing.py: md5 / sm3 of code+secret+time, or HMAC-SHA256 headers,
   which over SOAP sign the HTTP request of the SOAP post). Optional: ``proxy_ticket`` asks for
   a one-time proxy ticket for a second app (``generateST(proxyapp)`` / ``generateTicket``).
4. Transport: HTTP form posts (``datatype=json``) or SOAP through zeep with a vendored WSDL;
   a SOAP answer may be a JSON *string* in the body, or a structure.
5. Errors: result codes with HTTP 200 (ticket 6001–6099, token 6501–6599), ``errormsg``,
   ``success: false``; each becomes a clear ``UpstreamError`` reason, never a crash.

Must not: import aiohttp (the web layer hands in httpx clients); log a ticket, token, signature
or secret (zeep's own debug logging of envelopes is bypassed by the transport below).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import structlog
import zeep
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]
from zeep.helpers import serialize_object
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

from gateway.identity.citizen import FederatedIdentity, MappingError, _lookup, map_claims
from gateway.identity.identifiers import LinkKeyer
from gateway.identity.signing import DATE_HEADER, sign_request
from gateway.identity.ticket_soap import header_signed_fields
from gateway.identity.upstream import AvailabilityCache, UpstreamError, UpstreamLogin
from gateway.identity.upstream_kinds import ResultCodes, TicketIdpSettings

log = structlog.get_logger("tongban.identity")

_MAX_RESPONSE = 256 * 1024
# HTTP headers of the SOAP post in progress (HMAC-SHA256 header signatures); per task.
_SOAP_HEADERS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "tongban_soap_headers", default=None
)


class HttpxSoapTransport(AsyncTransport):
    """zeep's AsyncTransport on a given httpx client: no header rewriting (zeep's own replaces
    the client's headers), no remote WSDL, no envelope logging, a bounded timeout per call."""

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        # Not AsyncTransport.__init__: it would replace the client's headers and build more.
        self.cache = None
        self.client = client
        self.wsdl_client = None
        self._timeout = timeout
        self._close_session = False
        self.logger = logging.getLogger("tongban.zeep")

    def _load_remote_data(self, url: str) -> bytes:
        raise zeep.exceptions.TransportError(  # type: ignore[no-untyped-call]
            "the WSDL must be vendored; remote loading is disabled"
        )

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        response = await self.client.post(
            address,
            content=message,
            headers={**headers, **(_SOAP_HEADERS.get() or {})},
            timeout=self._timeout,
        )
        if len(response.content) > _MAX_RESPONSE:
            raise zeep.exceptions.TransportError("answer too large")  # type: ignore[no-untyped-call]
        return response


def result_error(body: Any, results: ResultCodes) -> str | None:
    """The reason a platform's answer is an error, or None (§1.6: errors often come as 200)."""
    if not isinstance(body, Mapping):
        return "upstream_answer_malformed"
    success = body.get(results.success_field)
    if success is False or (isinstance(success, str) and success.lower() == "false"):
        return "upstream_error"
    if body.get(results.error_field):
        return "upstream_error"
    if results.code_field in body:
        code = str(body[results.code_field]).strip()
        if code in results.ok:
            return None
        number = int(code) if code.isdigit() else -1
        if results.ticket_errors[0] <= number <= results.ticket_errors[1]:
            return "ticket_invalid"
        if results.token_errors[0] <= number <= results.token_errors[1]:
            return "token_invalid"
        return "upstream_error"
    return None


def decode_answer(value: Any) -> Any:
    """A SOAP or HTTP answer: JSON text (possibly inside the SOAP body) or a structure."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise UpstreamError("upstream_answer_malformed") from None
    return serialize_object(value, dict)  # type: ignore[no-untyped-call]


class TicketUpstream:
    """One signed-ticket platform."""

    def __init__(
        self,
        platform: str,
        settings: TicketIdpSettings,
        http: httpx.AsyncClient,
        *,
        config_dir: Path,
        timeout: float = 3.0,
        linker: LinkKeyer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.platform = platform
        self.province = settings.province
        self.display_name = (settings.name.zh, settings.name.en)
        self.for_enterprises = False
        self.settings = settings
        self._http = http
        self._config_dir = config_dir
        self._timeout = timeout
        self._linker = linker
        self._clock = clock
        self._availability = AvailabilityCache(self._probe, clock)
        self._soap: AsyncServiceProxy | None = None
        self._soap_lock = asyncio.Lock()

    # --- availability ------------------------------------------------------------------------

    async def available(self) -> bool:
        return await self._availability()

    async def _probe(self) -> bool:
        try:
            response = await self._http.get(self.settings.login_url, timeout=self._timeout)
            ok = response.status_code < 500
            if ok and self.settings.transport == "soap":
                await self._proxy()
        except (httpx.HTTPError, UpstreamError):
            ok = False
        return ok

    # --- the browser legs --------------------------------------------------------------------

    async def start_login(self, login: UpstreamLogin) -> str:
        names = self.settings.params
        back = f"{login.redirect_uri}?{urlencode({'state': login.state})}"
        query = urlencode({names.app: self.settings.app_code, names.return_to: back})
        url = self.settings.login_url
        return f"{url}{'&' if '?' in url else '?'}{query}"

    async def complete(self, params: Mapping[str, str], login: UpstreamLogin) -> FederatedIdentity:
        if params.get("state") != login.state:
            raise UpstreamError("state_mismatch")
        ticket = params.get(self.settings.params.ticket, "")
        if not ticket or len(ticket) > 512:
            raise UpstreamError("ticket_missing")
        answer = await self.call("validate", self.settings.params.validate_ticket, ticket)
        token = _lookup(answer, self.settings.answer.token)
        user_id = _lookup(answer, self.settings.answer.user_id)
        if not isinstance(token, str) or not token:
            raise UpstreamError("upstream_answer_malformed")
        info = await self.call("userinfo", self.settings.params.token, token)
        where = self.settings.answer.attributes
        attributes = _lookup(info, where) if where else info
        if not isinstance(attributes, Mapping):
            raise UpstreamError("userinfo_malformed")
        claims = dict(attributes)
        mapping = self.settings.claims
        seen = _lookup(claims, mapping.user_id)
        if user_id is not None and seen is not None and str(seen) != str(user_id):
            # getUserInfo answered for someone else than the ticket named.
            raise UpstreamError("userinfo_malformed")
        if seen is None and user_id is not None and "." not in mapping.user_id:
            claims[mapping.user_id] = user_id
        for name, parts in self.settings.answer.joined.items():
            values = [_lookup(claims, part) for part in parts]
            if all(v is not None and not isinstance(v, Mapping | list) for v in values):
                claims[name] = "/".join(str(v) for v in values)
        try:
            identity = map_claims(
                self.platform,
                mapping,
                claims,
                keep_id_number=self.settings.keep_id_number,
                linker=self._linker,
            )
        except MappingError as exc:
            log.warning("upstream_claims_unusable", platform=self.platform, reason=str(exc))
            raise UpstreamError("claims_unusable") from None
        log.info("upstream_login_completed", platform=self.platform, level=identity.level)
        return identity

    # --- the back channel --------------------------------------------------------------------

    async def proxy_ticket(self, token: str, proxy_app: str) -> str:
        """A one-time proxy ticket for ``proxy_app`` (the platform's ``generateST(proxyapp)`` /
        ``generateTicket``), from the token of a ticket login; the second app validates it with
        its own ``ticketValidation``. Never logged."""
        if "proxy" not in self.settings.operations:
            raise UpstreamError("proxy_not_supported")
        if not token or not proxy_app or len(proxy_app) > 128:
            raise UpstreamError("proxy_app_invalid")
        names = self.settings.params
        answer = await self.call("proxy", names.token, token, {names.proxy_app: proxy_app})
        ticket = _lookup(answer, self.settings.answer.proxy_ticket)
        if not isinstance(ticket, str) or not ticket or len(ticket) > 512:
            raise UpstreamError("upstream_answer_malformed")
        log.info("upstream_proxy_ticket_issued", platform=self.platform, proxy_app=proxy_app)
        return ticket

    async def call(
        self, operation: str, name: str, value: str, extra: Mapping[str, str] | None = None
    ) -> Mapping[str, Any]:
        """One signed back-channel call; the decoded answer, or ``UpstreamError``.

        ``extra``: further arguments (the proxy app); over SOAP, ``proxyapp`` is the WSDL's name.
        """
        op = self.settings.operations[operation]
        if self.settings.transport == "soap":
            answer = await self._call_soap(op, name, value, dict(extra or {}))
        else:
            answer = await self._call_http(op, name, value, dict(extra or {}))
        reason = result_error(answer, self.settings.results)
        if reason is not None:
            code = answer.get(self.settings.results.code_field) if isinstance(answer, dict) else ""
            log.warning(
                "upstream_call_refused",
                platform=self.platform,
                operation=op,
                reason=reason,
                error_code=str(code or ""),
            )
            raise UpstreamError(reason)
        assert isinstance(answer, Mapping)
        return answer

    async def _call_http(self, op: str, name: str, value: str, extra: dict[str, str]) -> Any:
        url = f"{self.settings.service_url.rstrip('/')}/{op}"
        params = {name: value, "datatype": "json", **extra}
        signed, headers = sign_request(
            self.settings.signature,
            self.settings.app_code,
            self.settings.app_secret.get_secret_value(),
            method="POST",
            path=urlsplit(url).path,
            params=params,
            now=self._clock(),
        )
        try:
            response = await self._http.post(
                url, data={**params, **signed}, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError:
            raise UpstreamError("upstream_unreachable", unavailable=True) from None
        if response.status_code >= 500:
            raise UpstreamError("upstream_unreachable", unavailable=True)
        if response.status_code != 200 or len(response.content) > _MAX_RESPONSE:
            raise UpstreamError("upstream_error")
        return decode_answer(response.content)

    async def _proxy(self) -> AsyncServiceProxy:
        async with self._soap_lock:
            if self._soap is None:
                assert self.settings.wsdl is not None
                path = self._config_dir / self.settings.wsdl
                transport = HttpxSoapTransport(self._http, self._timeout)
                zsettings = zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True)
                try:
                    # WSDL parsing is synchronous file and CPU work: off the event loop.
                    client = await asyncio.to_thread(
                        zeep.AsyncClient, str(path), transport=transport, settings=zsettings
                    )
                except (OSError, zeep.exceptions.Error, etree.XMLSyntaxError):
                    raise UpstreamError("upstream_wsdl_unusable", unavailable=True) from None
                binding = next(iter(client.wsdl.bindings.values()))
                self._soap = AsyncServiceProxy(  # type: ignore[no-untyped-call]
                    client, binding, address=self.settings.service_url
                )
            return self._soap

    async def _call_soap(self, op: str, name: str, value: str, extra: dict[str, str]) -> Any:
        proxy = await self._proxy()
        sig = self.settings.signature
        # The WSDL's element names are fixed: app, time, sign, the argument, datatype, proxyapp.
        fields = {"arg": value, "datatype": "json"}
        if extra:
            fields["proxyapp"] = next(iter(extra.values()))
        signed, headers = sign_request(
            sig,
            self.settings.app_code,
            self.settings.app_secret.get_secret_value(),
            method="POST",
            path=urlsplit(self.settings.service_url).path,
            params=header_signed_fields(op, fields) if sig.scheme == "hmac-sha256" else {},
            now=self._clock(),
        )
        if sig.scheme == "hmac-sha256":
            # The headers sign the HTTP request of the SOAP post; the elements stay for the WSDL.
            when = headers.get(DATE_HEADER, "")
            arguments = {"app": self.settings.app_code, "time": when, "sign": "", **fields}
        else:
            arguments = {
                "app": signed[sig.code_param],
                "time": signed[sig.time_param],
                "sign": signed[sig.sign_param],
                **fields,
            }
        scope = _SOAP_HEADERS.set(headers)
        try:
            result = await getattr(proxy, op)(**arguments)
        except httpx.HTTPError:
            raise UpstreamError("upstream_unreachable", unavailable=True) from None
        except zeep.exceptions.Fault:
            raise UpstreamError("upstream_error") from None
        except zeep.exceptions.TransportError as exc:
            status = getattr(exc, "status_code", 0) or 0
            raise UpstreamError("upstream_unreachable", unavailable=status >= 500) from None
        except (zeep.exceptions.Error, etree.XMLSyntaxError, AttributeError, TypeError):
            raise UpstreamError("upstream_answer_malformed") from None
        finally:
            _SOAP_HEADERS.reset(scope)
        return decode_answer(result)
