"""What every portal page must be, checked in Chromium: Chinese first, nothing wider than the
screen at 1280 px and 390 px, no accessibility violation that axe-core finds, and every time
shown in Beijing time.

The accessibility check is axe-core (the axe-playwright-python package bundles its JavaScript,
so nothing is downloaded), run on the page as rendered at each width with every rule axe has
for WCAG 2.1 A/AA: labels, names, contrast, landmarks, headings, language, focusable order.

Screenshots: every page at 1280 px goes to a temporary directory, or to the directory named by
the environment variable TONGBAN_SCREENSHOTS (``docs/screenshots`` for the documentation).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

WIDTHS = (1280, 390)
HAN = re.compile(r"[\u4e00-\u9fff]")
_BEIJING = timezone(timedelta(hours=8))
_AXE = Axe()
_AXE_OPTIONS = {
    "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
    "resultTypes": ["violations"],
}


def screenshot_dir(default: Path) -> Path:
    chosen = Path(os.environ.get("TONGBAN_SCREENSHOTS") or default)
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


def check_page(page: Page, name: str, shots: Path, *, expect: tuple[str, ...] = ()) -> None:
    """The page now shown in ``page``: the checks above, and ``expect`` (Chinese words) in it."""
    assert page.get_attribute("html", "lang") == "zh-CN", name
    heading = page.inner_text("h1")
    assert HAN.search(heading), f"{name}: the heading is not Chinese: {heading!r}"
    body = page.inner_text("body")
    for words in expect:
        assert words in body, f"{name}: {words!r} missing"
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        wider = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert wider <= 0, f"{name} at {width} px is {wider} px wider than the screen"
        found = _AXE.run(page, options=_AXE_OPTIONS).response["violations"]
        assert not found, f"{name} at {width} px: " + "; ".join(
            f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}" for v in found
        )
        if width == WIDTHS[0]:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    for instant, shown in page.eval_on_selector_all(
        "time[datetime]", "els => els.map(e => [e.getAttribute('datetime'), e.textContent])"
    ):
        when = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(_BEIJING)
        assert shown == when.strftime("%Y-%m-%d %H:%M:%S"), f"{name}: {instant} shown {shown}"
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})
