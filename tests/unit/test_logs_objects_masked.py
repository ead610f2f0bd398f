"""A value a log line carries that is neither text nor a number is masked as the text it shows."""

from __future__ import annotations

import dataclasses
import datetime
import io
import uuid

import orjson
import structlog

from gateway.logs import configure_logging


@dataclasses.dataclass
class _Applicant:
    id_number: str
    mobile: str


class _Opaque:
    def __repr__(self) -> str:
        return "Opaque(110101199003077777, 13812345678)"


def test_objects_in_a_line_are_masked_by_the_text_they_show() -> None:
    out = io.BytesIO()
    configure_logging("info", "json", stream=out)
    try:
        when = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
        key = uuid.UUID(int=7)
        structlog.get_logger("t").warning(
            "objects",
            applicant=_Applicant("110101199003077777", "13812345678"),
            opaque=_Opaque(),
            when=when,
            key=key,
            count=3,
            ratio=0.5,
            flag=True,
            nothing=None,
        )
    finally:
        configure_logging("warning", "json")
    text = out.getvalue().decode()
    assert "110101199003077777" not in text
    assert "13812345678" not in text
    line = orjson.loads(text.splitlines()[-1])
    assert "id_number='1****************7'" in line["applicant"]
    assert "mobile='138****5678'" in line["applicant"]
    assert line["opaque"].startswith("Opaque(1")
    assert line["when"] == "2026-12-07T12:00:00+00:00"
    assert line["key"] == str(key)
    assert (line["count"], line["ratio"], line["flag"], line["nothing"]) == (3, 0.5, True, None)
