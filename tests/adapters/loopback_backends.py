"""Loopback test back-ends (REST, SOAP, Shaanxi degree) whose misbehaviour each test scripts.

Real aiohttp servers on 127.0.0.1, port 0. They record what they received and the exact bytes
they answered with, and check each auth kind independently of the adapter's code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote_plus

from aiohttp import web
from lxml import etree  # type: ignore[import-untyped]
from multidict import CIMultiDict

from adapters.rest import build_rest_adapter
from adapters.shaanxi_degree import build_shaanxi_degree_adapter
from adapters.soap import build_soap_adapter
from gateway.adapter import Adapter, AdapterFactory, Call, CallContext, SystemSpec

Kind = Literal["rest", "soap", "shaanxi_degree"]
KINDS: tuple[Kind, ...] = ("rest", "soap", "shaanxi_degree")
WSDL_DIR = Path(__file__).parent / "wsdl"

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
DEGREE_NS = "urn:example:degree:v1"
CONTEXT_NS = "urn:tongban:context:v1"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)

# What every kind answers on success; the adapter must hand back exactly this data.
DEGREE: dict[str, Any] = {
    "valid": True,
    "degree": "工学学士",
    "institution": "西北大学",
    "awarded": "2020-07-01",
    "fee": "12.50",
}
# Back-end internals and personal data that must never reach an error's detail.
LEAK_MARKERS = ("10.9.8.7", "张三", "ORA-00942")

CONTEXT = CallContext(
    request_id="req-0001",
    purpose="学历核验 hiring check",
    service="degree-verification",
    receiving_province="63",
    handling_province="61",
    principal="pw-3f9a1c",
    actor="pw-77b2d0",
    level="L2",
    case_id="case-2024-0042",
    authorisation_ref="auth-5521",
)

PAYLOADS: dict[Kind, dict[str, Any]] = {
    "rest": {"certificate_no": "10697-2020/0042", "holder_name": "张三"},
    "shaanxi_degree": {"certificate_no": "10697-2020/0042", "holder_name": "张三"},
    "soap": {"certificateNo": "10697-2020/0042", "holderName": "张三"},
}
OPERATIONS: dict[Kind, str] = {"rest": "verify", "shaanxi_degree": "verify", "soap": "VerifyDegree"}
REST_OPERATIONS = {
    "verify": {"method": "POST", "path": "/api/degrees/{certificate_no}/verify"},
    "lookup": {"method": "GET", "path": "/api/accounts/{account_no}"},
}

Behaviour = Literal[
    "ok",
    "status",  # answer ``status`` with a text body full of internals
    "slow",  # headers only after ``delay`` seconds
    "drip",  # headers at once, then one byte every ``delay`` seconds
    "reset",  # half the declared body, then the connection is aborted
    "malformed",  # the kind's content type, broken JSON or XML
    "wrong_type",  # an HTML page with 200
    "oversize",  # a valid-looking body of ``size`` bytes with Content-Length
    "oversize_chunked",  # the same, streamed without Content-Length
    "fault_client",  # SOAP 1.1 soap:Client fault
    "fault_server",  # SOAP 1.1 soap:Server fault
    "code_not_found",  # Shaanxi envelope, code 1001
    "code_error",  # Shaanxi envelope, code 2001
]


@dataclass(frozen=True, slots=True)
class Plan:
    """How the back-end answers one request."""

    behaviour: Behaviour = "ok"
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 1.0
    size: int = 64 * 1024


@dataclass(slots=True)
class Seen:
    """One request as the back-end received it, and the body bytes it answered with."""

    method: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes
    sent: bytes = b""
    soap_context: dict[str, str] = field(default_factory=dict)


AuthCheck = Callable[[web.Request, bytes], bool]


class Backend:
    """One scripted back-end of one kind; ``script`` sets the plans, the last one repeats."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.seen: list[Seen] = []
        self.token_requests = 0
        self.tokens: set[str] = set()
        self.auth_check: AuthCheck | None = None
        self.oauth_client: tuple[str, str] | None = None
        self._plans: list[Plan] = [Plan()]
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/oauth/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancel handlers whose client went away, so slow plans do not delay shutdown.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return self.base_url + ("/ws/degree" if self.kind == "soap" else "")

    def script(self, *plans: Plan) -> None:
        self._plans = list(plans)

    @property
    def received(self) -> int:
        return len(self.seen)

    def _next_plan(self) -> Plan:
        return self._plans.pop(0) if len(self._plans) > 1 else self._plans[0]

    # --- handlers -----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        expected = self.oauth_client
        header = request.headers.get("Authorization", "")
        ok = header.startswith("Basic ") and form.get("grant_type") == "client_credentials"
        if ok and expected is not None:
            pair = base64.b64decode(header[6:]).decode()
            client_id, _, secret = pair.partition(":")
            ok = (unquote_plus(client_id), unquote_plus(secret)) == expected
        if not ok:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"tok-{self.token_requests}"
        self.tokens.add(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(request.method, request.raw_path, CIMultiDict(request.headers), body)
        self.seen.append(seen)
        if self.kind == "soap":
            seen.soap_context = _soap_context(body)
        if self.auth_check is not None and not self.auth_check(request, body):
            if self.kind == "soap":
                return self._answer(seen, 500, _fault("soap:Client", "auth failed"), "text/xml")
            return self._answer(seen, 401, b'{"error":"unauthorised"}', "application/json")
        plan = self._next_plan()
        kind = self.kind
        if plan.behaviour == "ok":
            return self._answer(seen, 200, success_body(kind), content_type(kind))
        if plan.behaviour == "status":
            internals = b"ORA-00942 at db 10.9.8.7 while looking up \xe5\xbc\xa0\xe4\xb8\x89"
            return self._answer(seen, plan.status, internals, "text/plain", plan.headers)
        if plan.behaviour == "slow":
            await asyncio.sleep(plan.delay)
            return self._answer(seen, 200, success_body(kind), content_type(kind))
        if plan.behaviour in ("drip", "reset", "oversize_chunked"):
            return await self._stream(request, seen, plan)
        if plan.behaviour == "malformed":
            broken = b'{"valid": tru' if kind != "soap" else b"<soap:Envelope><soap:Body><Verif"
            return self._answer(seen, 200, broken, content_type(kind))
        if plan.behaviour == "wrong_type":
            return self._answer(seen, 200, b"<html><body>maintenance</body></html>", "text/html")
        if plan.behaviour == "oversize":
            return self._answer(seen, 200, padded_body(kind, plan.size), content_type(kind))
        if plan.behaviour in ("fault_client", "fault_server"):
            code = "soap:Client" if plan.behaviour == "fault_client" else "soap:Server"
            fault = _fault(code, "ORA-00942 at 10.9.8.7 for 张三")
            return self._answer(seen, 500, fault, "text/xml; charset=utf-8")
        code = "1001" if plan.behaviour == "code_not_found" else "2001"
        envelope = {"code": code, "msg": "查无此人 张三 ORA-00942", "result": None}
        return self._answer(seen, 200, _json(envelope), "application/json")

    def _answer(
        self,
        seen: Seen,
        status: int,
        body: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        seen.sent = body
        response = web.Response(status=status, body=body, headers=headers or {})
        response.headers["Content-Type"] = ctype
        return response

    async def _stream(self, request: web.Request, seen: Seen, plan: Plan) -> web.StreamResponse:
        kind = self.kind
        body = padded_body(kind, plan.size) if plan.behaviour == "oversize_chunked" else b""
        if not body:
            body = success_body(kind)
        response = web.StreamResponse(status=200, headers={"Content-Type": content_type(kind)})
        if plan.behaviour == "oversize_chunked":
            response.enable_chunked_encoding()
        else:
            response.content_length = len(body)
        await response.prepare(request)
        if plan.behaviour == "reset":
            seen.sent = body[: len(body) // 2]
            await response.write(seen.sent)
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()
            return response
        step = 1 if plan.behaviour == "drip" else 1024
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            seen.sent += body[start : start + step]
            if plan.behaviour == "drip":
                await asyncio.sleep(plan.delay)
        await response.write_eof()
        return response


# --- bodies -----------------------------------------------------------------------------------


async def read_raw_request(reader: asyncio.StreamReader) -> bytes | None:
    """One HTTP/1.1 request's bytes as they came, its body framed by Content-Length; None when
    the client closed the connection instead of sending one (for back-ends on raw sockets)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def content_type(kind: Kind) -> str:
    return "text/xml; charset=utf-8" if kind == "soap" else "application/json; charset=utf-8"


def success_body(kind: Kind) -> bytes:
    if kind == "rest":
        return _json(DEGREE)
    if kind == "shaanxi_degree":
        return _json({"code": "0000", "msg": "成功", "result": json.dumps(DEGREE)})
    fields = "".join(
        f"<d:{name}>{str(value).lower() if isinstance(value, bool) else value}</d:{name}>"
        for name, value in DEGREE.items()
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?>'
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:d="{DEGREE_NS}"><soap:Body>'
        f"<d:VerifyDegreeResponse>{fields}</d:VerifyDegreeResponse>"
        f"</soap:Body></soap:Envelope>"
    ).encode()


def padded_body(kind: Kind, size: int) -> bytes:
    if kind == "soap":
        head = success_body(kind)
        return head.replace(b"<soap:Body>", b"<!--" + b"x" * size + b"--><soap:Body>")
    return _json({**DEGREE, "padding": "x" * size})


def _fault(code: str, text: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>'
        f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body><soap:Fault>'
        f"<faultcode>{code}</faultcode><faultstring>{text}</faultstring>"
        f"</soap:Fault></soap:Body></soap:Envelope>"
    ).encode()


def _soap_context(body: bytes) -> dict[str, str]:
    try:
        root = etree.fromstring(body)
    except etree.XMLSyntaxError:
        return {}
    found = root.find(f"{{{SOAP_ENV}}}Header/{{{CONTEXT_NS}}}CallContext")
    if found is None:
        return {}
    return {etree.QName(child).localname: child.text or "" for child in found}


# --- auth checks, written from the specs rather than from the adapter ----------------------


def api_key_check(header: str, key: str) -> AuthCheck:
    return lambda request, body: request.headers.get(header) == key


def bearer_check(backend: Backend) -> AuthCheck:
    def check(request: web.Request, body: bytes) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in backend.tokens

    return check


def hmac_check(key_id: str, secret: str) -> AuthCheck:
    def check(request: web.Request, body: bytes) -> bool:
        if request.headers.get("X-Tb-Key") != key_id:
            return False
        date = request.headers.get("X-Tb-Date", "")
        sent_at = email.utils.parsedate_to_datetime(date).timestamp()
        if abs(time.time() - sent_at) > 300:
            return False
        query = "&".join(
            f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(request.query.items())
        )
        to_sign = "\n".join(
            (
                request.method,
                request.raw_path.split("?", 1)[0],
                query,
                date,
                hashlib.sha256(body).hexdigest(),
            )
        )
        mac = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).digest()
        expected = base64.b64encode(mac).decode()
        return hmac.compare_digest(expected, request.headers.get("X-Tb-Signature", ""))

    return check


def ws_security_check(username: str, password: str) -> AuthCheck:
    """WS-Security UsernameToken Profile 1.0 §3.1: text or digest of nonce + created + password."""

    def check(request: web.Request, body: bytes) -> bool:
        root = etree.fromstring(body)
        token = root.find(f"{{{SOAP_ENV}}}Header/{{{WSSE_NS}}}Security/{{{WSSE_NS}}}UsernameToken")
        if token is None or token.findtext(f"{{{WSSE_NS}}}Username") != username:
            return False
        given = token.find(f"{{{WSSE_NS}}}Password")
        if given is None:
            return False
        if given.get("Type") == PASSWORD_DIGEST:
            nonce = base64.b64decode(token.findtext(f"{{{WSSE_NS}}}Nonce") or "")
            created = (token.findtext(f"{{{WSU_NS}}}Created") or "").encode()
            expected = hashlib.sha1(nonce + created + password.encode()).digest()
            return bool(given.text == base64.b64encode(expected).decode())
        return bool(given.text == password)

    return check


# --- unreachable addresses, loopback only -----------------------------------------------------


def refused_address() -> str:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def blackhole_address() -> Iterator[str]:
    """A loopback listener that never accepts, its backlog already full: new connections hang
    in SYN_SENT until the client's connect timeout, deterministically and without a real
    network."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


# --- specs ------------------------------------------------------------------------------------


def make_spec(
    kind: Kind,
    address: str,
    *,
    auth: dict[str, Any] | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 5.0,
    max_response_bytes: int = 16 * 1024,
) -> SystemSpec:
    """The test system of ``kind`` at ``address``. The timeouts are generous: on a loaded
    machine a call that should succeed must not become a timeout; a test about timeouts sets
    short ones itself."""
    if kind == "soap":
        return SystemSpec(
            id="shaanxi-degree-ws",
            province="61",
            address=address,
            config_dir=WSDL_DIR,
            wsdl="degree.wsdl",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_response_bytes=max_response_bytes,
            auth=auth or {"type": "none"},
            operations={"VerifyDegree": {}},
        )
    return SystemSpec(
        id="shaanxi-degree" if kind == "shaanxi_degree" else "shaanxi-housing",
        province="61",
        address=address,
        config_dir=WSDL_DIR,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_response_bytes=max_response_bytes,
        auth=auth or {"type": "none"},
        operations=REST_OPERATIONS,
    )


# The entry points may not be installed while the package is being built: import directly.
FACTORIES: dict[Kind, AdapterFactory] = {
    "rest": build_rest_adapter,
    "soap": build_soap_adapter,
    "shaanxi_degree": build_shaanxi_degree_adapter,
}


def make_call(kind: Kind, context: CallContext = CONTEXT) -> Call:
    return Call(OPERATIONS[kind], PAYLOADS[kind], context)


@contextlib.asynccontextmanager
async def opened_adapter(kind: Kind, address: str, **spec_options: Any) -> AsyncIterator[Adapter]:
    adapter = await FACTORIES[kind].open(make_spec(kind, address, **spec_options))
    try:
        yield adapter
    finally:
        await adapter.aclose()


@contextlib.asynccontextmanager
async def running_backend(kind: Kind) -> AsyncIterator[Backend]:
    backend = Backend(kind)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()
