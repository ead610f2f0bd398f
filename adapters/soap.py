"""Shared SOAP adapter: zeep on the system's aiohttp session, vendored WSDL, any address.

``map_zeep_errors`` is the only place where zeep exceptions become ours; the HTTP layer under
zeep falls through to the same table as the REST adapter (``adapters.rest``):

    foreign exception                             ours                     reached_backend
    Fault soap:Client / soap12 Sender             BackendFault(client)     True
    Fault with any other code                     BackendFault(server)     True
    TransportError, non-SOAP HTTP status          by status, as for REST   True (429: False)
    TransportError on a 2xx, malformed XML        BackendBadResponse       True
    a DOCTYPE or entity declaration in the answer BackendBadResponse       True
    answer not of an XML media type               BackendBadResponse       True
    payload the WSDL refuses (nothing sent)       BackendRejected          False
    network failures                              as for REST

The exact envelope bytes sent and received are captured in the transport, after WS-Security
is applied and before anything is parsed, so the digests match the wire.

zeep's ``AsyncTransport`` is written for httpx; ``_AiohttpTransport`` overrides the one method
the async binding calls (``post_xml``) and WSDL loading (local files only), so no httpx client
exists: the whole adapter call cost 1.5× (sequential) to 1.9× (100 concurrent) the CPU on the
httpx-on-aiohttp transport it replaced (see docs/performance.md).

zeep stays the contract engine (WSDL, validation, faults), but the common shape, a record of
string fields in and a record of simple fields out, skips its per-call machinery: a plan made
once per operation at start-up (``FlatRequest``, ``soap_answers.FlatAnswer``) builds the
envelope in zeep's own lxml steps (the same bytes) and reads the answer with lxml alone (the
same data). Any payload or answer a plan does not take, a fault included, goes through zeep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import aiohttp
import zeep
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]
from lxml.builder import ElementMaker  # type: ignore[import-untyped]
from multidict import CIMultiDictProxy
from pydantic import Field, field_validator
from yarl import URL
from zeep.transports import AsyncTransport
from zeep.wsdl.messages.base import SerializedMessage
from zeep.wsdl.messages.soap import DocumentMessage
from zeep.wsdl.utils import etree_to_string
from zeep.wsse.username import UsernameToken
from zeep.xsd.types.builtins import String
from zeep.xsd.types.simple import AnySimpleType

from adapters.lean_read import LeanAnswer
from adapters.lean_send import LeanSender
from adapters.rest import (
    ConfigModel,
    NoAuth,
    SecretValue,
    UnexpectedContentType,
    check_status,
    error_for_status,
    media_type,
    open_session,
    parse_blocks,
    read_limited,
    translate_aiohttp_error,
    whole_body,
)
from adapters.soap_answers import (
    AnswerShapeError,
    FlatAnswer,
    content_json,
    flat_elements,
    response_content,
)
from adapters.soap_contract import (
    WsdlError,
    element_fields,
    header_element,
    load_wsdl,
    operation_contract,
    output_body_type,
    pick_binding,
    row_shape_problems,
)
from gateway.adapter import (
    AdapterConfigError,
    BackendBadResponse,
    BackendError,
    BackendFault,
    BackendRejected,
    Call,
    CallContext,
    Reply,
    Secret,
    SystemContract,
    SystemSpec,
    digest,
    suggestion,
)

__all__ = [
    "CONTEXT_NS",
    "FlatRequest",
    "SoapAdapter",
    "SoapAdapterFactory",
    "build_soap_adapter",
    "context_header",
    "map_zeep_errors",
]

CONTEXT_NS = "urn:tongban:context:v1"
_CONTEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("RequestId", "request_id"),
    ("Purpose", "purpose"),
    ("Service", "service"),
    ("CaseId", "case_id"),
    ("AuthorisationRef", "authorisation_ref"),
    ("IdempotencyKey", "idempotency_key"),
    ("Principal", "principal"),
    ("Actor", "actor"),
    ("Level", "level"),
    ("Assertion", "identity_assertion"),
    ("Subjects", "subject_hashes"),
    ("SourceProvince", "receiving_province"),
    ("Client", "client"),
)
_XML_TYPES = frozenset({"text/xml", "application/soap+xml", "application/xml"})
# Statuses whose XML body zeep must see: SOAP 1.1 faults come as 500, SOAP 1.2 Sender faults as 400.
_FAULT_STATUSES = frozenset({400, 500})


# --- configuration ----------------------------------------------------------------------------


class WsSecurityAuth(ConfigModel):
    type: Literal["ws_security"]
    username: str = Field(min_length=1)
    """WS-Security UsernameToken user name."""
    password: SecretValue
    """Its password."""
    digest: bool = False
    """Send PasswordDigest (with nonce and created) instead of PasswordText."""


_CREDENTIAL_WORDS = ("pass", "pwd", "secret", "token", "key", "sign")


class SoapHeaderAuth(ConfigModel):
    """Credentials in a SOAP header element the WSDL declares (an ASMX ``SoapHeader`` class such
    as ``AuthHeader{UserName, Password}``), sent with every call."""

    type: Literal["soap_header"]
    element: str = Field(min_length=1)
    """The header element: '{namespace}Name', or a name unique in the WSDL."""
    fields: dict[str, str | Secret]
    """Its fields; a credential ({env} / {file}) for every field whose name says it is one
    (password, pwd, secret, token, key, sign)."""

    @field_validator("fields")
    @classmethod
    def _credentials_are_secrets(cls, value: dict[str, str | Secret]) -> dict[str, str | Secret]:
        for name, field in value.items():
            credential = any(word in name.lower() for word in _CREDENTIAL_WORDS)
            if credential and not isinstance(field, Secret):
                raise ValueError(
                    f"{name}: a credential is given as {{env: NAME}} or {{file: PATH}}"
                )
        return value


SoapAuth = NoAuth | WsSecurityAuth | SoapHeaderAuth
_AUTH_MODELS: Mapping[str, type[ConfigModel]] = {
    "none": NoAuth,
    "ws_security": WsSecurityAuth,
    "soap_header": SoapHeaderAuth,
}


class SoapOptions(ConfigModel):
    binding: str | None = Field(None, pattern=r"^\{[^}]*\}[^{}]+$")
    """Binding QName as '{namespace}Name'; may be left out when the WSDL has one SOAP binding."""


class SoapOperation(ConfigModel):
    """What the WSDL cannot say about an operation's answer."""

    rows: tuple[str, ...] = ()
    """Dotted paths in the answer that hold rows: always arrays of objects, even with one row
    or none (a DataSet's tables, ``QueryResult.Table``; repeated elements of xs:any content)."""

    @field_validator("rows", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("rows")
    @classmethod
    def _dotted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path or any(not part for part in path.split(".")):
                raise ValueError(f"{path!r} is not a dotted path")
        return value


@dataclass(frozen=True, slots=True)
class SoapConfig:
    auth: SoapAuth
    options: SoapOptions
    operations: Mapping[str, SoapOperation]


def parse_soap_config(spec: SystemSpec) -> SoapConfig:
    """The system's blocks validated; ``AdapterConfigError`` carries every problem found."""
    missing = [] if spec.wsdl else [AdapterConfigError("wsdl", "a SOAP system needs a WSDL file")]
    blocks = parse_blocks(
        spec, _AUTH_MODELS, SoapOptions, SoapOperation, protocol="SOAP", problems=missing
    )
    auth = blocks.auth
    assert isinstance(auth, NoAuth | WsSecurityAuth | SoapHeaderAuth)
    return SoapConfig(auth=auth, options=blocks.options, operations=blocks.operations)


# --- the one translation boundary -------------------------------------------------------------


def fault_side(code: str | None) -> str:
    """'client' for soap:Client (SOAP 1.1, also 'Client.Sub') and Sender (SOAP 1.2)."""
    local = (code or "").rsplit(":", 1)[-1].rsplit("}", 1)[-1].split(".", 1)[0]
    return "client" if local in ("Client", "Sender") else "server"


def _from_fault(exc: BaseException, system: str) -> BackendError:
    assert isinstance(exc, zeep.exceptions.Fault)
    side = fault_side(exc.code)
    # The fault string may name the citizen or the back-end's internals: it stays out of detail.
    return BackendFault(f"SOAP {side} fault from system {system}.", fault_side=side)


def _from_transport_error(exc: BaseException, system: str) -> BackendError:
    assert isinstance(exc, zeep.exceptions.TransportError)
    status = int(exc.status_code or 0)
    if status >= 300:
        return error_for_status(status, None, system)
    return _malformed(exc, system)


def _malformed(exc: BaseException, system: str) -> BackendError:
    return BackendBadResponse(
        f"System {system} sent an answer that could not be read.", reached_backend=True
    )


def _refused_payload(exc: BaseException, system: str) -> BackendError:
    # zeep validates while building the envelope, before anything is sent.
    return BackendRejected(
        f"The payload does not fit the WSDL of system {system}.", reached_backend=False
    )


# Most specific first; the first row whose type matches wins. HTTP failures fall through to
# the REST table.
ZEEP_ERROR_TABLE: tuple[tuple[type[BaseException], Any], ...] = (
    (zeep.exceptions.Fault, _from_fault),
    (zeep.exceptions.TransportError, _from_transport_error),
    (zeep.exceptions.ValidationError, _refused_payload),
    (UnexpectedContentType, _malformed),
    # forbid_dtd / forbid_entities refused the answer: a broken or hostile system, a failure.
    (zeep.exceptions.DTDForbidden, _malformed),
    (zeep.exceptions.EntitiesForbidden, _malformed),
    (zeep.exceptions.XMLSyntaxError, _malformed),
    (zeep.exceptions.XMLParseError, _malformed),
    (zeep.exceptions.UnexpectedElementError, _malformed),
    (etree.XMLSyntaxError, _malformed),
)


def translate_zeep_error(exc: BaseException, system: str) -> BackendError | None:
    for foreign, build in ZEEP_ERROR_TABLE:
        if isinstance(exc, foreign):
            error: BackendError = build(exc, system)
            return error
    return translate_aiohttp_error(exc, system)


@contextlib.contextmanager
def map_zeep_errors(system: str) -> Iterator[None]:
    """Translate zeep, lxml and aiohttp failures into BackendErrors with safe details."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        error = translate_zeep_error(exc, system)
        if error is None:
            raise
        raise error from exc


# --- transport --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Exchange:
    """One call's wire facts, shared between the adapter and the transport."""

    http_headers: dict[str, str]
    sent: bytes = b""
    received: bytes = b""
    status: int = 0


@dataclass(frozen=True, slots=True)
class _Answer:
    """The part of a requests.Response that zeep's process_reply reads."""

    status_code: int
    content: bytes
    headers: CIMultiDictProxy[str]
    encoding: str


_LEAN_SENDERS = 64
"""Senders a transport keeps, by address and header names (a system has few of each)."""

# The transport is shared by all concurrent calls of a system; each call's task sees its own.
_EXCHANGE: ContextVar[_Exchange] = ContextVar("soap_exchange")


class _AiohttpTransport(AsyncTransport):
    """zeep's AsyncTransport on the system's aiohttp session: streams the answer against the
    size limit, adds per-call HTTP headers and records the exact bytes of both envelopes."""

    def __init__(self, session: aiohttp.ClientSession, spec: SystemSpec) -> None:
        # Not AsyncTransport.__init__: it would build two httpx clients that are never used.
        self.cache = None
        self.load_timeout = None
        self.operation_timeout = None
        self.logger = logging.getLogger(__name__)
        self._close_session = False
        self._session = session
        self._system = spec.id
        self._limit = spec.max_response_bytes
        self._urls: dict[str, URL] = {}
        self._lean: dict[tuple[str, tuple[str, ...]], LeanSender | None] = {}
        """By address and header names: the sender past ``ClientSession._request``'s general
        layers when it sends what ``session.post`` sends (adapters/lean_send.py), else None."""

    async def aclose(self) -> None:
        await self._session.close()

    def _load_remote_data(self, url: str) -> NoReturn:
        # WSDL and XSD files are vendored; zeep reads local paths itself.
        raise zeep.exceptions.TransportError(  # type: ignore[no-untyped-call]
            "the WSDL must be vendored; remote loading is disabled"
        )

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> NoReturn:
        raise NotImplementedError("the SOAP adapter only posts envelopes (post_xml)")

    async def get(self, address: str, params: Any, headers: dict[str, str]) -> NoReturn:
        raise NotImplementedError("the SOAP adapter only posts envelopes (post_xml)")

    def _url(self, address: str) -> URL:
        url = self._urls.get(address)
        if url is None:
            url = self._urls[address] = URL(address)
        return url

    def _lean_sender(self, address: str, url: URL, headers: dict[str, str]) -> LeanSender | None:
        key = (address, tuple(headers))
        try:
            return self._lean[key]
        except KeyError:
            lean = LeanSender.for_(self._session, url, headers)
            if len(self._lean) < _LEAN_SENDERS:
                self._lean[key] = lean
            return lean

    async def post_xml(self, address: str, envelope: Any, headers: dict[str, str]) -> _Answer:
        exchange = _EXCHANGE.get()
        message: bytes = etree_to_string(envelope)  # type: ignore[no-untyped-call]
        exchange.sent = message
        url = self._url(address)
        headers = {**headers, **exchange.http_headers}
        lean = self._lean_sender(address, url, headers)
        if lean is not None:
            response = await lean.fetch_call("POST", url, headers, message)
            if isinstance(response, LeanAnswer):  # read whole, its connection released
                return await self._answer(response, exchange)
            try:
                return await self._answer(response, exchange)
            finally:  # what leaving ``async with session.post(...)`` does
                response.release()
                await response.wait_for_close()
        async with self._session.post(
            url, data=message, headers=headers, allow_redirects=False
        ) as response:
            return await self._answer(response, exchange)

    async def _answer(
        self, response: aiohttp.ClientResponse | LeanAnswer, exchange: _Exchange
    ) -> _Answer:
        status = response.status
        exchange.status = status
        kind = media_type(response.headers)
        if not (status in _FAULT_STATUSES and kind in _XML_TYPES):
            check_status(response)
        if isinstance(response, LeanAnswer):  # read whole (adapters/lean_read.py)
            body = whole_body(response, self._limit, self._system)
        else:
            body = await read_limited(response, self._limit, self._system)
        exchange.received = body
        if kind not in _XML_TYPES and not (status == 202 and not body):
            raise UnexpectedContentType(kind)
        return _Answer(
            status_code=status,
            content=body,
            headers=response.headers,
            encoding=response.charset or "utf-8",
        )


# --- the adapter ------------------------------------------------------------------------------


def context_header(context: CallContext) -> Any:
    """The CallContext SOAP header element; a field that is None is left out."""
    root = etree.Element(f"{{{CONTEXT_NS}}}CallContext", nsmap={"tb": CONTEXT_NS})
    for name, attribute in _CONTEXT_FIELDS:
        value = getattr(context, attribute)
        if value is not None:
            etree.SubElement(root, f"{{{CONTEXT_NS}}}{name}").text = str(value)
    return root


class FlatRequest:
    """The envelope of a document/literal operation whose request element is a plain sequence
    of string fields (each once, no attributes), built with lxml in the steps zeep takes, so
    the bytes are zeep's; once per operation, for a client with no WS-Security, plugins,
    WS-Addressing, custom prefixes or extra HTTP headers, and no SOAP header but the call
    context.

    ``envelope`` takes a payload of exactly those fields, each a ``str``, and gives None for
    any other (a field missing, added or of another type), or where lxml refuses a value:
    zeep then builds, or refuses, the envelope as it always has.
    """

    __slots__ = ("_fields", "_http_headers", "_maker", "_names", "_request")

    def __init__(
        self,
        envelope_ns: str,
        request: Any,
        fields: tuple[tuple[Any, str], ...],
        http_headers: Mapping[str, str],
    ):
        self._maker = ElementMaker(namespace=envelope_ns, nsmap={"soap-env": envelope_ns})
        self._request = request
        self._fields = fields
        self._names = frozenset(name for _, name in fields)
        self._http_headers = dict(http_headers)

    @classmethod
    def of(cls, client: Any, binding: Any, operation: Any) -> FlatRequest | None:
        message = getattr(operation, "input", None)
        settings = client.settings
        if (
            client.wsse is not None
            or client.plugins
            or settings.extra_http_headers
            or client.wsdl.types._prefix_map_custom
            or operation.abstract.wsa_action
            or not isinstance(message, DocumentMessage)
            or message._is_body_wrapped
            or message.body is None
        ):
            return None
        plain = flat_elements(message.body.type)
        if plain is None:
            return None
        fields: list[tuple[Any, str]] = []
        for name, element in plain:
            kind = element.type
            if (
                not isinstance(kind, String)
                or type(kind).xmlvalue is not String.xmlvalue
                or type(kind).render is not AnySimpleType.render
            ):
                return None
            fields.append((element.qname, name))
        action = operation.soapaction
        serialized = SerializedMessage(
            path=None, headers={"SOAPAction": f'"{action}"' if action else '""'}, content=None
        )
        binding._set_http_headers(serialized, operation)
        return cls(message.nsmap["soap-env"], message.body.qname, tuple(fields), serialized.headers)

    def envelope(
        self, payload: Mapping[str, Any], header: Any
    ) -> tuple[Any, dict[str, str]] | None:
        """The envelope (with ``header``, the call context, in its SOAP Header) and the HTTP
        headers for ``payload``, or None."""
        if len(payload) != len(self._names) or not self._names.issuperset(payload):
            return None
        soap = self._maker
        envelope = soap.Envelope()
        headers = soap.Header()
        headers.append(header)
        envelope.append(headers)
        body = soap.Body()
        envelope.append(body)
        request = etree.SubElement(body, self._request)
        try:
            for tag, name in self._fields:
                value = payload[name]
                if type(value) is not str:
                    return None
                etree.SubElement(request, tag).text = value
        except ValueError:
            return None  # a character XML cannot carry: zeep's path refuses it
        return envelope, dict(self._http_headers)


@dataclass(frozen=True, slots=True)
class _Answering:
    """How one operation's answer becomes ``Reply.data`` (adapters/soap_answers.py)."""

    operation: Any
    """zeep's binding operation."""
    body_type: Any
    rows: tuple[str, ...]
    flat: FlatAnswer | None
    """The operation's answer read without zeep when it is a flat record (or None)."""
    request: FlatRequest | None
    """The operation's envelope built without zeep's serialiser when it is a flat record."""


class SoapAdapter:
    """One SOAP system: ``call`` invokes the WSDL operation at the province's address."""

    def __init__(
        self,
        spec: SystemSpec,
        client: Any,
        binding: Any,
        answering: Mapping[str, _Answering],
        headers: tuple[Any, ...] = (),
    ):
        self._system = spec.id
        self._client = client
        self._binding = binding
        self._address = spec.address
        self._options = {"address": spec.address}
        self._answering = dict(answering)
        self._headers = headers

    async def call(self, call: Call) -> Reply:
        answering = self._answering.get(call.operation)
        if answering is None:
            raise BackendRejected(
                f"System {self._system} has no operation {call.operation!r}.",
                reached_backend=False,
            )
        # User-Agent and Accept-Encoding are the session's; these are the call's own.
        http_headers = {"X-Request-ID": call.context.request_id}
        if call.context.idempotency_key is not None:
            http_headers["Idempotency-Key"] = call.context.idempotency_key
        exchange = _Exchange(http_headers=http_headers)
        token = _EXCHANGE.set(exchange)
        try:
            with map_zeep_errors(self._system):
                content = await self._send(call, answering)
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            # zeep's own slips on a payload it cannot serialise or an answer it cannot read
            # (an empty Body, say; an xs:decimal it cannot convert raises decimal's
            # InvalidOperation, an ArithmeticError): ours, not a crash.
            raise _unusable(self._system, exchange) from exc
        finally:
            _EXCHANGE.reset(token)
        try:
            data = content_json(content, answering.rows)
        except AnswerShapeError:
            raise BackendBadResponse(
                f"System {self._system} sent an answer that could not be read.",
                reached_backend=True,
            ) from None
        return Reply(
            data=data,
            status=exchange.status,
            request_digest=digest(exchange.sent),
            response_digest=digest(exchange.received),
        )

    async def _send(self, call: Call, answering: _Answering) -> Any:
        """The response element's content (``response_content``) of the operation's answer.

        zeep's ``SoapBinding.send_async`` step by step (the adapter sets no default SOAP
        headers, no plugins and no raw responses), so that an answer ``FlatAnswer`` takes is
        read without zeep's generic parse; any other answer, a fault included, goes to zeep's
        ``process_reply`` as before.
        """
        binding, client = self._binding, self._client
        built = None
        if answering.request is not None:
            built = answering.request.envelope(call.payload, context_header(call.context))
        if built is None:
            built = binding._create(
                call.operation,
                (),
                {**call.payload, "_soapheaders": [context_header(call.context), *self._headers]},
                client=client,
                options=self._options,
            )
        envelope, headers = built
        answer: _Answer = await client.transport.post_xml(self._address, envelope, headers)
        if answering.flat is not None and answer.status_code == 200:
            content = answering.flat.read(answer.content)
            if content is not None:
                return content
        result = binding.process_reply(client, answering.operation, answer)
        return response_content(result, answering.body_type)

    async def aclose(self) -> None:
        await self._client.transport.aclose()


def _unusable(system: str, exchange: _Exchange) -> BackendError:
    if exchange.status:
        return BackendBadResponse(
            f"System {system} sent an answer that could not be read.", reached_backend=True
        )
    return BackendRejected(
        f"The payload does not fit the WSDL of system {system}.", reached_backend=False
    )


def _operation_problems(
    binding: Any, config: SoapConfig
) -> tuple[dict[str, Any], list[AdapterConfigError]]:
    """The configured operations found in ``binding``, and a problem for each one missing or
    whose declared rows cannot be in its answer."""
    found: dict[str, Any] = {}
    problems: list[AdapterConfigError] = []
    known = binding.all()
    for name, operation in config.operations.items():
        if name not in known:
            problems.append(
                AdapterConfigError(
                    f"operations.{name}",
                    f"not an operation of binding {binding.name}{suggestion(name, known)}",
                )
            )
            continue
        found[name] = known[name]
        answer = operation_contract(known[name]).output
        for path in operation.rows:
            why = row_shape_problems(answer, path)
            if why is not None:
                problems.append(AdapterConfigError(f"operations.{name}.rows", why))
    return found, problems


def _header_problems(client: Any, auth: SoapAuth) -> list[AdapterConfigError]:
    if not isinstance(auth, SoapHeaderAuth):
        return []
    try:
        element = header_element(client, auth.element)
    except WsdlError as exc:
        return [AdapterConfigError("auth.element", str(exc))]
    known = element_fields(element)
    return [
        AdapterConfigError(
            f"auth.fields.{name}", f"no field {name!r} in {auth.element}{suggestion(name, known)}"
        )
        for name in auth.fields
        if name not in known
    ]


def _header_value(client: Any, auth: SoapAuth) -> tuple[Any, ...]:
    if not isinstance(auth, SoapHeaderAuth):
        return ()
    element = header_element(client, auth.element)
    values = {
        name: value.reveal() if isinstance(value, Secret) else value
        for name, value in auth.fields.items()
    }
    return (element(**values),)


class SoapAdapterFactory:
    """Entry point ``soap``: validates a system's blocks, loads its WSDL, opens its adapter."""

    def check(self, spec: SystemSpec) -> None:
        parse_soap_config(spec)

    def contract(self, spec: SystemSpec) -> SystemContract:
        """The system's blocks checked against its WSDL (blocking: call it off the loop)."""
        problems: list[AdapterConfigError] = []
        try:
            config = parse_soap_config(spec)
        except AdapterConfigError as exc:
            problems += exc.all()
            config = None
        if not spec.wsdl:
            raise AdapterConfigError.of(problems)
        try:
            client = load_wsdl(spec.config_dir / spec.wsdl)
        except WsdlError as exc:
            raise AdapterConfigError.of([*problems, AdapterConfigError("wsdl", str(exc))]) from None
        if config is None:
            raise AdapterConfigError.of(problems)
        try:
            binding = pick_binding(client.wsdl, config.options.binding)
        except AdapterConfigError as exc:
            raise AdapterConfigError.of([*problems, exc]) from None
        found, more = _operation_problems(binding, config)
        problems += more + _header_problems(client, config.auth)
        if problems:
            raise AdapterConfigError.of(problems)
        return SystemContract(
            {
                name: operation_contract(operation, config.operations[name].rows)
                for name, operation in found.items()
            }
        )

    async def open(self, spec: SystemSpec) -> SoapAdapter:
        config = parse_soap_config(spec)
        assert spec.wsdl is not None
        wsdl_path = spec.config_dir / spec.wsdl
        # Accept as aiohttp would add it after the envelope's headers, named here so that it
        # goes first and the envelopes can be sent past the session's general layers (the
        # lean sender needs every default header known before the call's).
        session = open_session(spec, headers={"Accept": "*/*"})
        transport = _AiohttpTransport(session, spec)
        wsse = None
        if isinstance(config.auth, WsSecurityAuth):
            wsse = UsernameToken(  # type: ignore[no-untyped-call]
                config.auth.username, config.auth.password.reveal(), use_digest=config.auth.digest
            )
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_external=True)
        try:
            # WSDL parsing is synchronous file and CPU work: keep it off the event loop.
            try:
                client = await asyncio.to_thread(
                    zeep.AsyncClient,
                    str(wsdl_path),
                    transport=transport,
                    wsse=wsse,
                    settings=settings,
                )
            except (OSError, zeep.exceptions.Error, etree.XMLSyntaxError) as exc:
                raise AdapterConfigError(
                    "wsdl", f"{spec.wsdl} cannot be loaded ({type(exc).__name__})"
                ) from None
            binding = pick_binding(client.wsdl, config.options.binding)
            found, problems = _operation_problems(binding, config)
            problems += _header_problems(client, config.auth)
            if problems:
                raise AdapterConfigError.of(problems)
            headers = _header_value(client, config.auth)
        except BaseException:
            await session.close()
            raise
        answering = {
            name: _Answering(
                operation,
                output_body_type(operation),
                config.operations[name].rows,
                FlatAnswer.of(operation) if _flat_answers(client) else None,
                None if headers else FlatRequest.of(client, binding, operation),
            )
            for name, operation in found.items()
        }
        return SoapAdapter(spec, client, binding, answering, headers)


def _flat_answers(client: Any) -> bool:
    """Whether zeep's reading of an answer does nothing ``FlatAnswer`` skips: no ingress
    plugins, and no WS-Security but a UsernameToken (whose ``verify`` checks nothing)."""
    wsse = client.wsse
    return not client.plugins and (wsse is None or type(wsse) is UsernameToken)


build_soap_adapter = SoapAdapterFactory()
