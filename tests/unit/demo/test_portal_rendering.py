"""What the portals say and how they show an answer: Beijing time, provinces, levels in words,
labelled fields, folded long values, escaped content."""

from __future__ import annotations

import re

from gateway.demo.portals.results import LONG, render_value
from gateway.demo.portals.words import beijing, level_needed, province, status, time_tag


def test_times_are_shown_in_beijing_time() -> None:
    assert beijing("2026-12-06T08:20:27.349Z") == "2026-12-06 16:20:27"
    assert beijing("2026-12-31T23:30:00+00:00") == "2027-01-01 07:30:00"
    assert beijing("2026-12-06T16:20:27+08:00") == "2026-12-06 16:20:27"
    assert beijing("") == ""
    assert beijing("not a time") == "not a time"
    assert time_tag("2026-12-06T08:20:27Z") == (
        "<time datetime='2026-12-06T08:20:27Z'>2026-12-06 16:20:27</time>"
    )


def test_codes_become_words() -> None:
    assert province("61") == "陕西"
    assert province("63") == "青海"
    assert province("99") == "99"
    assert level_needed("L3") == "需实名认证（人脸核验）"
    assert level_needed("L2") == "需实名认证"
    assert status("supplement_requested") == "需补齐补正"


def test_an_answer_is_rendered_as_labelled_fields() -> None:
    labels = {
        "valid": {"zh": "核验结论", "en": "Valid", "values": {"true": "证书真实有效"}},
        "status": {"zh": "账户状态", "values": {"02": "封存"}},
        "records": {"zh": "缴费记录"},
        "records.year": {"zh": "年度"},
    }
    html = render_value(
        {
            "valid": True,
            "status": "02",
            "records": [{"year": 2020, "months": 12}],
            "unlabelled": "x",
            "issued_at": "2026-12-06T08:00:00Z",
        },
        labels,
    )
    assert "<dt>核验结论<span class='en'> Valid</span></dt><dd>证书真实有效</dd>" in html
    assert "封存 <span class='en'>(02)</span>" in html
    assert "<th scope='col'>年度</th>" in html
    assert "<th scope='col'>months</th>" in html  # no label: the field keeps its name
    assert "<dt>unlabelled</dt><dd>x</dd>" in html
    assert "2026-12-06 16:00:00</time>（北京时间）" in html


def test_long_values_fold_with_a_copy_button_and_nothing_is_raw_html() -> None:
    seal = "A" * (LONG + 1)
    html = render_value({"seal": seal, "note": "<script>alert(1)</script>"}, {})
    folded = re.search(r"<pre class='long' id='([^']+)'>(A+)</pre>", html)
    assert folded is not None
    assert folded.group(2) == seal
    assert f"data-copy='{folded.group(1)}'" in html
    assert "<details class='long'>" in html
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<details" not in render_value({"short": "A" * LONG}, {})
