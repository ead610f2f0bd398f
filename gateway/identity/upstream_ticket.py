"""The signed-ticket kind of ``UpstreamIdP``: ticket → ticketValidation → token → getUserInfo.

The kind as deployed platforms really behave (docs/identity-platforms.md):
1. Login redirect: ``login_url?{app}=code&{return_to}=callback?state=…`` (parameter names per
   platform). A platform that echoes the return address gives ``state`` back; one that sends the
   browser to the app's *registered* address carries the return address nested, unencoded, in a
   parameter (``?ticket=T&gotoUrl=<callback?state=…>``) or drops it (``state_echo: false``: the
   return leg is then bound to the browser's login cookie, sso.py). ``callback_values`` reads the
   ticket and ``state`` wherever they arrive.
2. The ticket goes server-to-server only, after the gateway's own checks: every ticket is
   claimed once in the session store (``claim_once``, kept ``used_ticket_retention`` seconds,
   shared by every instance), because some platforms neither consume tickets nor bind them to
   the app that asked; and its age is bounded by ``max_ticket_age``, against the issue time the
   platform states (``answer.issued_at``) and against the login's start.
3. ``ticketValidation`` → token and platform user id; ``getUserInfo(token)`` → attributes. Every
   parameter and SOAP element name is per operation (``TicketCall``). Each call is signed by a
   named scheme (signing.py: md5 / sm3 / the reversible legacy cipher in parameters, or
   HMAC-SHA256 headers, which over SOAP sign the HTTP request of the SOAP post). Optional:
   ``proxy_ticket`` asks for a one-time proxy ticket for a second app.
4. Transport: HTTP form posts or SOAP through zeep with a vendored WSDL; a SOAP answer may be a
   JSON *string* in the body, or a structure.
5. Errors: result codes with HTTP 200 (ticket 6001–6099, token 6501–6599), only ``errormsg``,
   ``success: false``; each becomes a clear ``UpstreamError`` reason, never a crash.

Must not: import aiohttp (the web layer hands in httpx clients); log a ticket, token, signature
or secret (zeep's own debug logging of envelopes is bypassed by the transport below); store a
ticket (the used-ticket record keeps its SHA-256).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import structlog
import zeep
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]
from zeep.helpers import serialize_object
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport
from zeep.wsdl.bindings.soap import SoapBinding

from gateway.identity.citizen import FederatedIdentity, MappingError, _lookup, map_claims
from gateway.identity.identifiers import LinkKeyer
from gateway.identity.signing import CST, DATE_HEADER, HEADER_SCHEME, TIME_FORMAT, sign_request
from gateway.identity.upstream import AvailabilityCache, UpstreamError, UpstreamLogin
from gateway.identity.upstream_kinds import ResolvedCall, ResultCodes, TicketIdpSettings

ClaimOnce = Callable[[str, float], Awaitable[bool]]
"""(key, seconds) → True the first time: the session store's ``claim_once``."""

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


class ProcessClaims:
    """``claim_once`` of one process, for a ``TicketUpstream`` built without a session store."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}

    async def __call__(self, key: str, ttl: float) -> bool:
        now = self._clock()
        if len(self._seen) > 10_000:
            self._seen = {k: until for k, until in self._seen.items() if until > now}
        if self._seen.get(key, 0.0) > now:
            return False
        self._seen[key] = now + ttl
        return True


def callback_values(params: Mapping[str, str], nested: str) -> dict[str, list[str]]:
    """Every value of every callback parameter, including those of the app's return address
    that the platform carried in ``nested`` (unencoded, or encoded once): the parameters of an
    unencoded nested address arrive partly at the top level, partly inside it."""
    values: dict[str, list[str]] = {key: [value] for key, value in params.items()}
    inner = params.get(nested, "")
    if "?" in inner:
        for key, value in parse_qsl(inner.split("?", 1)[1], keep_blank_values=False):
            values.setdefault(key, []).append(value)
    return values


def _issued_at(value: Any, form: str) -> float | None:
    try:
        text = str(value).strip()
        if form in ("epoch", "epoch_ms"):
            moment = float(text) / (1000 if form == "epoch_ms" else 1)
            # float() reads "NaN" and "inf": no moment, and NaN passes every window.
            return moment if math.isfinite(moment) else None
        if form == "iso8601":
            parsed = dt.datetime.fromisoformat(text)
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=CST)).timestamp()
        return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CST).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


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
        claim_once: ClaimOnce | None = None,
    ) -> None:
        self.platform = platform
        self.province = settings.province
        self.display_name = (settings.name.zh, settings.name.en)
        self.for_enterprises = False
        self.settings = settings
        self.binds_to_browser = not settings.state_echo
        """The return leg carries no ``state``: sso.py binds it to the login cookie."""
        self._http = http
        self._config_dir = config_dir
        self._timeout = timeout
        self._linker = linker
        self._clock = clock
        self._claim_once: ClaimOnce = claim_once or ProcessClaims(clock)
        self._availability = AvailabilityCache(self._probe, clock)
        self._soap: dict[tuple[str, str], AsyncServiceProxy] = {}
        self._soap_lock = asyncio.Lock()

    # --- availability ------------------------------------------------------------------------

    async def available(self) -> bool:
        return await self._availability()

    async def _probe(self) -> bool:
        try:
            response = await self._http.get(self.settings.login_url, timeout=self._timeout)
            ok = response.status_code < 500
            if ok and self.settings.transport == "soap":
                for operation in self.settings.operations:
                    await self._proxy(self.settings.call(operation))
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

    def callback_state(self, params: Mapping[str, str]) -> str | None:
        """The ``state`` the callback carries, at the top or in the nested return address; ''
        when two different ones arrive (never guess between them); None when there is none."""
        found = set(callback_values(params, self.settings.params.return_to).get("state", []))
        if not found:
            return None
        return found.pop() if len(found) == 1 else ""

    def _ticket(self, params: Mapping[str, str]) -> str:
        found = set(
            callback_values(params, self.settings.params.return_to).get(
                self.settings.params.ticket, []
            )
        )
        if len(found) != 1:
            raise UpstreamError("ticket_missing")
        ticket = found.pop()
        if not ticket or len(ticket) > 512:
            raise UpstreamError("ticket_missing")
        return ticket

    async def complete(self, params: Mapping[str, str], login: UpstreamLogin) -> FederatedIdentity:
        state = self.callback_state(params)
        if (state is None and self.settings.state_echo) or (
            state is not None and state != login.state
        ):
            raise UpstreamError("state_mismatch")
        ticket = self._ticket(params)
        now = self._clock()
        if login.started_at and now - login.started_at > self.settings.max_ticket_age:
            raise UpstreamError("ticket_expired")
        key = "ticket:" + hashlib.sha256(f"{self.platform}\0{ticket}".encode()).hexdigest()
        if not await self._claim_once(key, self.settings.used_ticket_retention):
            # Seen before, by this instance or another: the platform may well accept it again.
            log.warning("upstream_ticket_replayed", platform=self.platform)
            raise UpstreamError("ticket_replayed")
        answer = await self.call("validate", ticket)
        self._check_issued_at(answer)
        token = _lookup(answer, self.settings.answer.token)
        user_id = _lookup(answer, self.settings.answer.user_id)
        if not isinstance(token, str) or not token:
            raise UpstreamError("upstream_answer_malformed")
        info = await self.call("userinfo", token)
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

    def _check_issued_at(self, answer: Mapping[str, Any]) -> None:
        """The ticket's own age, when the platform says when it issued it: some platforms
        compare expiry in whole days, the gateway in seconds."""
        path = self.settings.answer.issued_at
        if path is None:
            return
        issued = _issued_at(_lookup(answer, path), self.settings.answer.issued_at_format)
        if issued is None:
            raise UpstreamError("upstream_answer_malformed")
        age = self._clock() - issued
        if age > self.settings.max_ticket_age or age < -self.settings.signature.window:
            log.warning("upstream_ticket_too_old", platform=self.platform, age_s=int(age))
            raise UpstreamError("ticket_expired")

    # --- the back channel --------------------------------------------------------------------

    async def proxy_ticket(self, token: str, proxy_app: str) -> str:
        """A one-time proxy ticket for ``proxy_app`` (the platform's ``generateST(proxyapp)`` /
        ``generateTicket``), from the token of a ticket login; the second app validates it with
        its own ``ticketValidation``. Never logged."""
        if "proxy" not in self.settings.operations:
            raise UpstreamError("proxy_not_supported")
        if not token or not proxy_app or len(proxy_app) > 128:
            raise UpstreamError("proxy_app_invalid")
        answer = await self.call("proxy", token, proxy_app=proxy_app)
        ticket = _lookup(answer, self.settings.answer.proxy_ticket)
        if not isinstance(ticket, str) or not ticket or len(ticket) > 512:
            raise UpstreamError("upstream_answer_malformed")
        log.info("upstream_proxy_ticket_issued", platform=self.platform, proxy_app=proxy_app)
        return ticket

    async def call(
        self, operation: str, value: str, *, proxy_app: str | None = None
    ) -> Mapping[str, Any]:
        """One signed back-channel call (``validate``, ``userinfo``, ``proxy``) about ``value``
        (the ticket or the token); the decoded answer, or ``UpstreamError``."""
        call = self.settings.call(operation)
        fields = {call.argument: value, **dict(call.extra)}
        if call.datatype is not None:
            fields[call.datatype] = call.datatype_value
        if proxy_app is not None:
            fields[call.proxy_app] = proxy_app
        if self.settings.transport == "soap":
            answer = await self._call_soap(call, fields)
        else:
            answer = await self._call_http(call, fields)
        reason = result_error(answer, self.settings.results)
        if reason is not None:
            code = answer.get(self.settings.results.code_field) if isinstance(answer, dict) else ""
            log.warning(
                "upstream_call_refused",
                platform=self.platform,
                operation=call.name,
                reason=reason,
                error_code=str(code or ""),
            )
            raise UpstreamError(reason)
        assert isinstance(answer, Mapping)
        return answer

    def _signed(
        self, call: ResolvedCall, fields: Mapping[str, str], path: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(the signature's parameters under this call's names, the headers to send)."""
        sig = self.settings.signature
        header = sig.scheme == HEADER_SCHEME
        signed, headers = sign_request(
            sig,
            self.settings.app_code,
            self.settings.app_secret.get_secret_value(),
            method="POST",
            path=path,
            params=fields if header else {},
            now=self._clock(),
        )
        if header:
            values = {
                "app": self.settings.app_code,
                "time": headers.get(DATE_HEADER, ""),
                "sign": "",
            }
        else:
            values = {
                "app": signed[sig.code_param],
                "time": signed[sig.time_param],
                "sign": signed[sig.sign_param],
            }
        named = {
            name: values[key]
            for key, name in (("app", call.app), ("time", call.time), ("sign", call.sign))
            if name is not None
        }
        return named, headers

    async def _call_http(self, call: ResolvedCall, fields: dict[str, str]) -> Any:
        url = f"{call.service_url.rstrip('/')}/{call.name}"
        signed, headers = self._signed(call, fields, urlsplit(url).path)
        try:
            response = await self._http.post(
                url, data={**fields, **signed}, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError:
            raise UpstreamError("upstream_unreachable", unavailable=True) from None
        if response.status_code >= 500:
            raise UpstreamError("upstream_unreachable", unavailable=True)
        if response.status_code != 200 or len(response.content) > _MAX_RESPONSE:
            raise UpstreamError("upstream_error")
        return decode_answer(response.content)

    async def _proxy(self, call: ResolvedCall) -> AsyncServiceProxy:
        """The zeep proxy of the call's WSDL at the call's address (one per web service)."""
        assert call.wsdl is not None
        key = (call.wsdl, call.service_url)
        async with self._soap_lock:
            if key not in self._soap:
                path = self._config_dir / call.wsdl
                transport = HttpxSoapTransport(self._http, self._timeout)
                zsettings = zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True)
                try:
                    # WSDL parsing is synchronous file and CPU work: off the event loop.
                    client = await asyncio.to_thread(
                        zeep.AsyncClient, str(path), transport=transport, settings=zsettings
                    )
                except (OSError, zeep.exceptions.Error, etree.XMLSyntaxError):
                    raise UpstreamError("upstream_wsdl_unusable", unavailable=True) from None
                binding = soap_binding(client.wsdl, self.settings.binding)
                if binding is None:
                    raise UpstreamError("upstream_wsdl_unusable", unavailable=True)
                self._soap[key] = AsyncServiceProxy(  # type: ignore[no-untyped-call]
                    client, binding, address=call.service_url
                )
            return self._soap[key]

    async def _call_soap(self, call: ResolvedCall, fields: dict[str, str]) -> Any:
        proxy = await self._proxy(call)
        # HMAC-SHA256 headers sign the HTTP request of the SOAP post: the operation and its
        # arguments; the signature elements stay for the WSDL (ticket_soap.py).
        signed, headers = self._signed(
            call,
            {"operation": call.name, **{k: v for k, v in fields.items() if v}},
            urlsplit(call.service_url).path,
        )
        scope = _SOAP_HEADERS.set(headers)
        try:
            result = await getattr(proxy, call.name)(**signed, **fields)
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


def soap_binding(document: Any, wanted: str | None) -> Any:
    """The SOAP binding named ``wanted``, or the WSDL's only one (None when that is not one)."""
    found = {
        str(name): binding
        for name, binding in document.bindings.items()
        if isinstance(binding, SoapBinding)
    }
    if wanted is not None:
        return found.get(wanted)
    return next(iter(found.values())) if len(found) == 1 else None
