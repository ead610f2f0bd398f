"""`tongban demo` as a person starts it: from a folder that is not the repository, with no
--config. The banner opens with the portals and the demo accounts, puts no token on the
terminal, and names the file of ready-made requests, which holds the curl lines."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from gateway.demo import legal_idp, qinghai_idp, staff_directory
from gateway.demo.banner import REQUESTS_FILE
from tests.demo_process import running_demo

_URL = re.compile(r"http://127\.0\.0\.1:\d+")


def test_banner_starts_with_portals_and_accounts_and_names_the_requests_file(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = tmp_path / "data"
    with running_demo(data_dir, cwd=elsewhere) as demo:
        with urllib.request.urlopen(demo.base_url + "/readyz", timeout=5) as answer:
            assert answer.status == 200
        lines = demo.banner

    banner = "\n".join(lines)
    # The first addresses after the gateway's own line are the portals and the window console.
    urls = [(i, line) for i, line in enumerate(lines) if _URL.search(line)]
    assert "gateway on" in urls[0][1]
    assert [("portal" in line or "console" in line) for _, line in urls[1:4]] == [True] * 3
    first_other = urls[4][0]
    # Every account is listed before any other server's address.
    accounts = (
        [c.user_id for c in qinghai_idp.CITIZENS]
        + [a.user_id for a in legal_idp.ACCOUNTS]
        + [s.staff_id for s in staff_directory.STAFF]
    )
    for account in accounts:
        where = next(i for i, line in enumerate(lines) if account in line)
        assert where < first_other, f"{account} is listed after the other servers"
    assert "every password is 'demo'" in banner
    # No curl line and no token on the terminal; the file it names has them.
    assert "curl " not in banner
    assert "dev." not in banner
    named = data_dir / REQUESTS_FILE
    assert str(named) in banner
    assert named.stat().st_mode & 0o777 == 0o600
    requests = named.read_text(encoding="utf-8")
    assert requests.count("curl -s") >= 10
    assert "Authorization: Bearer dev." in requests
    assert "/api/v1/services/degree-verification/calls" in requests
    assert "/api/v1/cases" in requests
    # Every line of the file is a shell command or a comment.
    for line in requests.splitlines():
        # (the 亮证 lines keep the code the first one answers in a shell variable)
        assert not line or line.startswith(("#", "curl ", "CODE=$(curl ")), line
