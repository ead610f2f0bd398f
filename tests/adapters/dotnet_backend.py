"""A loopback SOAP server that answers like a deployed ASP.NET ASMX service
(wsdl/real-estate-asmx.wsdl): SOAP 1.1 and 1.2, a ``SoapHeader`` credential, body credentials,
a bare ``xs:boolean`` result, and ``DataSet`` results as a diffgram with the inline ``xs:schema``
in front, as ``DataSet.WriteXml`` inside a ``SoapDocumentMethod`` writes them. Faults are
``SoapException``s as the .NET runtime words them.

The ``mode`` switch makes it answer hostile or odd things on purpose; ``seen`` keeps what it
received. Written from the published shapes of these answers, not from the adapter's code.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from lxml import etree  # type: ignore[import-untyped]

WSDL_NAME = "real-estate-asmx.wsdl"
NS = "http://bdc.qh.example/ws/"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
BINDING = "{http://bdc.qh.example/ws/}RealEstateServiceSoap"
PATH = "/ws/RealEstateService.asmx"

Mode = Literal[
    "ok",
    "no_schema",  # the diffgram without the inline schema (a DataTable written bare)
    "deep",  # rows nested far deeper than any real DataSet
    "undeclared_column",  # a column the inline schema does not declare
    "wrong_element",  # the answer element of another operation
    "empty_body",  # a SOAP Body with nothing in it
    "doctype",  # a DOCTYPE before the envelope (XML entity tricks start with one)
    "entities",  # an internal entity declared and expanded in the answer
]

_PROLOGUES: dict[str, tuple[str, str]] = {
    "doctype": ('<!DOCTYPE Envelope SYSTEM "http://127.0.0.1:1/evil.dtd">', ""),
    "entities": (
        '<!DOCTYPE Envelope [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>',
        "&lol2;",
    ),
}


@dataclass(frozen=True, slots=True)
class Registration:
    """One row of the registration table (不动产登记), columns as the service names them."""

    unit: str  # BDCDYH 不动产单元号
    certificate: str  # BDCQZH 不动产权证书号
    address: str  # ZL 坐落
    area: str  # MJ 面积 (xs:decimal)
    owner_id: str  # QLRZJH 权利人证件号


REGISTRATIONS: tuple[Registration, ...] = (
    Registration("630102001001GB00001F00010001", "青(2021)西宁市不动产权第0012345号",
                 "西宁市城东区八一路12号3单元501室", "89.50", "630102199001011234"),
    Registration("630102001001GB00001F00010002", "青(2022)西宁市不动产权第0023456号",
                 "西宁市城东区八一路12号车库17号", "12.00", "630102199001011234"),
    Registration("630104002003GB00021F00030007", "青(2019)西宁市不动产权第0007788号",
                 "西宁市城西区胜利路5号2单元302室", "76.25", "630104198505052222"),
)  # fmt: skip


@dataclass
class DotnetService:
    """What the service accepts and how it answers; set ``mode`` to misbehave."""

    user: str = "tongban-gw-qh"
    password: str = "pw-for-tests-0001"
    mode: Mode = "ok"
    seen: list[bytes] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _envelope(soap_ns: str, body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soap:Envelope xmlns:soap="{soap_ns}" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
        f"<soap:Body>{body}</soap:Body></soap:Envelope>"
    ).encode()


def soap_fault(soap_ns: str, message: str, *, client: bool = False) -> bytes:
    """A SoapException as the ASMX runtime serialises it."""
    if soap_ns == SOAP12:
        code = "soap:Sender" if client else "soap:Receiver"
        return _envelope(
            soap_ns,
            f"<soap:Fault><soap:Code><soap:Value>{code}</soap:Value></soap:Code>"
            f'<soap:Reason><soap:Text xml:lang="zh-CN">{html.escape(message)}</soap:Text>'
            "</soap:Reason><soap:Detail /></soap:Fault>",
        )
    code = "soap:Client" if client else "soap:Server"
    return _envelope(
        soap_ns,
        f"<soap:Fault><faultcode>{code}</faultcode><faultstring>"
        f"System.Web.Services.Protocols.SoapException: 服务器无法处理请求。 ---&gt; "
        f"{html.escape(message)}</faultstring><detail /></soap:Fault>",
    )


_COLUMNS = (("BDCDYH", "xs:string"), ("BDCQZH", "xs:string"), ("ZL", "xs:string"),
            ("MJ", "xs:decimal"), ("QLRZJH", "xs:string"))  # fmt: skip


def dataset_schema(columns: Sequence[tuple[str, str]] = _COLUMNS) -> str:
    """The inline schema DataSet.WriteXmlSchema writes for one table named ``Table``."""
    elements = "".join(
        f'<xs:element name="{name}" type="{kind}" minOccurs="0" />' for name, kind in columns
    )
    return (
        '<xs:schema id="NewDataSet" xmlns="" xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        'xmlns:msdata="urn:schemas-microsoft-com:xml-msdata">'
        '<xs:element name="NewDataSet" msdata:IsDataSet="true" msdata:UseCurrentLocale="true">'
        '<xs:complexType><xs:choice minOccurs="0" maxOccurs="unbounded">'
        f'<xs:element name="Table"><xs:complexType><xs:sequence>{elements}</xs:sequence>'
        "</xs:complexType></xs:element></xs:choice></xs:complexType></xs:element></xs:schema>"
    )


def diffgram(rows: Sequence[Mapping[str, str]], table: str = "Table") -> str:
    """The rows as a DataSet diffgram (an empty DataSet writes an empty diffgram)."""
    body = "".join(
        f'<{table} diffgr:id="{table}{index + 1}" msdata:rowOrder="{index}">'
        + "".join(f"<{name}>{html.escape(value)}</{name}>" for name, value in row.items())
        + f"</{table}>"
        for index, row in enumerate(rows)
    )
    inner = f'<NewDataSet xmlns="">{body}</NewDataSet>' if rows else ""
    return (
        '<diffgr:diffgram xmlns:msdata="urn:schemas-microsoft-com:xml-msdata" '
        f'xmlns:diffgr="urn:schemas-microsoft-com:xml-diffgram-v1">{inner}</diffgr:diffgram>'
    )


def _row(registration: Registration) -> dict[str, str]:
    return {
        "BDCDYH": registration.unit,
        "BDCQZH": registration.certificate,
        "ZL": registration.address,
        "MJ": registration.area,
        "QLRZJH": registration.owner_id,
    }


SERVICE = web.AppKey("dotnet_service", DotnetService)


async def _asmx(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    raw = await request.read()
    service.seen.append(raw)
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError:
        return web.Response(status=400, text="Bad Request", content_type="text/html")
    soap_ns = etree.QName(root).namespace
    kind = "text/xml" if soap_ns == SOAP11 else "application/soap+xml"
    action = request.headers.get("SOAPAction", "").strip('"')
    service.actions.append(action)
    body = root.find(f"{{{soap_ns}}}Body")
    call = body[0] if body is not None and len(body) else None
    if call is None or etree.QName(call).namespace != NS:
        fault = soap_fault(soap_ns, "无法识别请求元素。", client=True)
        return web.Response(status=500, body=fault, content_type=kind, charset="utf-8")
    name = etree.QName(call).localname
    args = {etree.QName(c).localname: (c.text or "") for c in call}
    answer = _operate(service, root, soap_ns, name, args)
    if isinstance(answer, bytes):
        return web.Response(status=500, body=answer, content_type=kind, charset="utf-8")
    envelope = _envelope(soap_ns, answer)
    if service.mode in _PROLOGUES:
        doctype, expanded = _PROLOGUES[service.mode]
        head, _, rest = envelope.partition(b"?>")
        envelope = head + b"?>" + doctype.encode() + rest
        envelope = envelope.replace(
            b"</CheckCertificateResult>", expanded.encode() + b"</CheckCertificateResult>"
        )
    return web.Response(body=envelope, content_type=kind, charset="utf-8")


def _operate(
    service: DotnetService, root: object, soap_ns: str, name: str, args: Mapping[str, str]
) -> str | bytes:
    """The Body's content, or a fault envelope."""
    mode = service.mode
    if mode == "empty_body":
        return ""
    if mode == "wrong_element":
        return (
            f'<GetRegistrationCountResponse xmlns="{NS}"><GetRegistrationCountResult>1'
            "</GetRegistrationCountResult></GetRegistrationCountResponse>"
        )
    if name == "CheckCertificate":
        header = root.find(f"{{{soap_ns}}}Header/{{{NS}}}AuthHeader")  # type: ignore[attr-defined]
        user = header.findtext(f"{{{NS}}}UserName") if header is not None else None
        password = header.findtext(f"{{{NS}}}Password") if header is not None else None
        if (user, password) != (service.user, service.password):
            return soap_fault(soap_ns, "身份验证失败：AuthHeader 无效。")
        valid = any(
            r.certificate == args.get("certNo") and r.owner_id == args.get("ownerIdNo")
            for r in REGISTRATIONS
        )
        return (
            f'<CheckCertificateResponse xmlns="{NS}"><CheckCertificateResult>'
            f"{'true' if valid else 'false'}</CheckCertificateResult></CheckCertificateResponse>"
        )
    if name == "QueryRegistrations":
        if (args.get("userName"), args.get("password")) != (service.user, service.password):
            return soap_fault(soap_ns, "用户名或密码错误。")
        rows = [_row(r) for r in REGISTRATIONS if r.owner_id == args.get("ownerIdNo")]
        schema = dataset_schema()
        if mode == "no_schema":
            schema = ""
        elif mode == "undeclared_column":
            rows = [{**row, "BZ": "备注"} for row in rows]
        content = schema + diffgram(rows)
        if mode == "deep":
            nested = "<A>" * 300 + "x" + "</A>" * 300
            content = diffgram([{"BDCDYH": "1"}]).replace("<BDCDYH>1</BDCDYH>", nested)
        return (
            f'<QueryRegistrationsResponse xmlns="{NS}"><QueryRegistrationsResult>'
            f"{content}</QueryRegistrationsResult></QueryRegistrationsResponse>"
        )
    if name == "GetRegistrationCount":
        count = sum(r.owner_id == args.get("ownerIdNo") for r in REGISTRATIONS)
        return (
            f'<GetRegistrationCountResponse xmlns="{NS}"><GetRegistrationCountResult>{count}'
            "</GetRegistrationCountResult></GetRegistrationCountResponse>"
        )
    return soap_fault(soap_ns, f"服务器未能识别 HTTP 标头 SOAPAction 的值: {name}。", client=True)


@contextlib.asynccontextmanager
async def running_dotnet_service(
    service: DotnetService | None = None,
) -> AsyncIterator[DotnetService]:
    service = service or DotnetService()
    app = web.Application()
    app[SERVICE] = service
    app.router.add_post(PATH, _asmx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    service.port = runner.addresses[0][1]
    try:
        yield service
    finally:
        await runner.cleanup()
