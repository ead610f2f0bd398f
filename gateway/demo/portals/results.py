"""An answer from a provincial system as people read it: labelled fields, not JSON.

Labels come from the service file (``result_fields`` of the operation, read from the gateway's
service guide): dotted paths into the answer, a list's items under the list's own path
(``contributions.year``). A field without a label keeps its name. Values: yes/no for booleans,
the label's word for a coded value (``status: "02"`` → 封存), Beijing time for instants, and
anything long (a sealed certificate's Base64, a signature) folded behind a summary, wrapped to
the screen's width and copyable.

Must not: drop a field (what came back is shown), or render a value as HTML.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import Any

from gateway.demo.portals.words import beijing, e

LONG = 120
"""Characters above which a value is folded."""
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$")


def _label(labels: Mapping[str, Any], path: str, key: str) -> str:
    label = labels.get(path)
    if isinstance(label, Mapping) and label.get("zh"):
        en = f"<span class='en'> {e(label['en'])}</span>" if label.get("en") else ""
        return f"{e(label['zh'])}{en}"
    return e(key)


def _scalar(value: Any, label: Any) -> str:
    if isinstance(label, Mapping) and isinstance(label.get("values"), Mapping):
        if isinstance(value, bool):
            word = label["values"].get("true" if value else "false")
            if word:
                return e(word)
        elif (word := label["values"].get(str(value))) is not None:
            return f"{e(word)} <span class='en'>({e(value)})</span>"
    if value is None:
        return "<span class='en'>—</span>"
    if isinstance(value, bool):
        return "是" if value else "否"
    text = str(value)
    if isinstance(value, str) and _INSTANT.match(text):
        return f"<time datetime='{e(text)}'>{e(beijing(text))}</time>（北京时间）"
    if len(text) > LONG:
        ident = "v-" + secrets.token_hex(6)
        return (
            f"<details class='long'><summary>展开查看（{len(text):,} 字符）"
            "<span class='en'> Show</span></summary>"
            f"<pre class='long' id='{ident}'>{e(text)}</pre>"
            f"<button type='button' class='secondary' data-copy='{ident}'>复制"
            "<span class='en'> Copy</span></button></details>"
        )
    return e(text)


def render_value(value: Any, labels: Mapping[str, Any], path: str = "") -> str:
    """``value`` (part of an answer at ``path``) as HTML."""
    if isinstance(value, Mapping):
        if not value:
            return "<span class='en'>—</span>"
        rows = "".join(
            f"<dt>{_label(labels, _join(path, str(k)), str(k))}</dt>"
            f"<dd>{render_value(v, labels, _join(path, str(k)))}</dd>"
            for k, v in value.items()
        )
        return f"<dl class='fields'>{rows}</dl>"
    if isinstance(value, list):
        if not value:
            return "无 <span class='en'>none</span>"
        if all(isinstance(item, Mapping) for item in value):
            return _table(value, labels, path)
        return (
            "<ul>" + "".join(f"<li>{render_value(v, labels, path)}</li>" for v in value) + "</ul>"
        )
    return _scalar(value, labels.get(path))


def _table(items: list[Any], labels: Mapping[str, Any], path: str) -> str:
    columns: list[str] = []
    for item in items:
        columns += [str(k) for k in item if str(k) not in columns]
    head = "".join(f"<th scope='col'>{_label(labels, _join(path, c), c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{render_value(item.get(c), labels, _join(path, c))}</td>" for c in columns)
        + "</tr>"
        for item in items
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='table-wrap'>{table}</div>"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
