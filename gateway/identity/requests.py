"""Framework-free HTTP request and response values for the provider, and parameter parsing.

The web layer reads the body asynchronously, then builds an ``IdentityRequest``; the provider
answers with an ``IdentityResponse``. Parsing enforces RFC 6749 §3.1 / §3.2: parameters sent
more than once are refused, token-endpoint bodies must be form-encoded (Appendix B), and every
parameter is bounded in size and number so an oversized request is refused before any lookup.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

MAX_PARAMETERS = 48
"""More parameters than this in one request is refused (invalid_request)."""
MAX_PARAMETER_LENGTH = 4096
"""A longer parameter value is refused (an id_token_hint or JWT assertion fits)."""
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class ParameterError(ValueError):
    """The request's parameters break RFC 6749 §3.1/§3.2 rules; the message is safe to show."""


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header mapping (authlib reads ``Authorization``)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items = {k.lower(): v for k, v in (items or {}).items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items


def parse_parameters(encoded: str) -> dict[str, str]:
    """Decode a query string or form body; refuse repeats, oversize values and floods."""
    try:
        pairs = parse_qsl(
            encoded,
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_PARAMETERS,
            errors="strict",
        )
    except (ValueError, UnicodeDecodeError):
        raise ParameterError("The request has too many or malformed parameters.") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if len(name) > 64 or len(value) > MAX_PARAMETER_LENGTH:
            raise ParameterError("A request parameter is too large.")
        if name in params:
            raise ParameterError("A request parameter was sent more than once.")
        params[name] = value
    return params


@dataclass(frozen=True, slots=True)
class IdentityRequest:
    """One request to a provider endpoint, already read off the wire."""

    method: str
    url: str
    """Absolute URL as the client addressed it (built from the issuer, not from Host)."""
    headers: Headers = field(default_factory=Headers)
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        query_string: str,
        body: bytes,
        content_type: str,
    ) -> IdentityRequest:
        """Parse query and form; raises ``ParameterError`` on a request no endpoint accepts."""
        query = parse_parameters(query_string)
        form: dict[str, str] = {}
        if method == "POST" and body:
            if content_type != FORM_CONTENT_TYPE:
                raise ParameterError(f"Send the parameters as {FORM_CONTENT_TYPE}.")
            try:
                text = body.decode("ascii")
            except UnicodeDecodeError:
                raise ParameterError("A form body must be percent-encoded ASCII.") from None
            form = parse_parameters(text)
        return cls(method=method, url=url, headers=Headers(headers), query=query, form=form)

    @property
    def params(self) -> Mapping[str, str]:
        """Parameters of this request: the form for POST, the query string otherwise."""
        return self.form if self.method == "POST" else self.query


@dataclass(frozen=True, slots=True)
class IdentityResponse:
    """What the web layer sends back, verbatim."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def location(self) -> str | None:
        for name, value in self.headers:
            if name.lower() == "location":
                return value
        return None
