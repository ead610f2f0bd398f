"""The outbound call's fast paths give what the rules they replace give.

``header_safe`` and ``add_context_headers`` check a value without the regular expression that
states the rule (``_VISIBLE_ASCII``): every value, the regular expression's answer.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from adapters.rest import _HEADER_SAFE, add_context_headers, header_safe
from gateway.adapter import CallContext

_RULE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def by_the_rule(value: str) -> str:
    return value if _RULE.fullmatch(value) else quote(value, safe=_HEADER_SAFE)


EDGES = [
    "",
    " ",
    "  ",
    "a",
    " a",
    "a ",
    " a ",
    "a b",
    "a  b",
    "~",
    "\x7f",
    "a\x7f",
    "\t",
    "a\tb",
    "a\n",
    "\x1f",
    "\x00",
    "核验",
    "核验 check",
    "é",
    "\u00a0",
    "a\u00a0",
    "\u2028",
    "person:" + "ab" * 32,
]


def test_every_edge_as_the_rule() -> None:
    for value in EDGES:
        assert header_safe(value) == by_the_rule(value), repr(value)


def test_every_single_character_as_the_rule() -> None:
    for code in range(0x3000):
        for value in (chr(code), "a" + chr(code), chr(code) + "a", "a" + chr(code) + "a"):
            assert header_safe(value) == by_the_rule(value), repr(value)


@given(st.text(alphabet=st.characters(max_codepoint=0x2100), max_size=40))
def test_any_text_as_the_rule(value: str) -> None:
    assert header_safe(value) == by_the_rule(value)


@given(st.text(alphabet=st.sampled_from(" ~a\x7f\t\x20\x21é核"), max_size=12))
def test_spaces_and_borders_as_the_rule(value: str) -> None:
    assert header_safe(value) == by_the_rule(value)


def test_context_headers_as_the_rule() -> None:
    for value in EDGES:
        context = CallContext(
            request_id="r1",
            purpose=value,
            service="s",
            receiving_province="63",
            handling_province="61",
            principal="p",
            actor="a",
            level="L2",
            client=value or None,
        )
        headers = add_context_headers({}, context)
        assert headers["X-Tongban-Purpose"] == by_the_rule(value), repr(value)
        if value:
            assert headers["X-Tongban-Client"] == by_the_rule(value), repr(value)
        else:
            assert "X-Tongban-Client" not in headers  # None: left out
