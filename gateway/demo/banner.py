"""What `tongban demo` prints, and the file of ready-made requests it writes beside its stores.

The terminal shows what a person needs first: the portal addresses and the demo accounts of
every platform (citizens, enterprises, window clerks), then the other demo servers. The curl
lines for the scenarios, with this run's development tokens, go to ``demo-requests.sh`` in the
data directory (0600: it holds bearer tokens), whose path the banner names.

Must not: print a token or a secret on the terminal.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from gateway.demo import guangdong_idp, legal_idp, qinghai_idp, staff_directory, ticket_idp
from gateway.demo.backends import DemoBackends
from gateway.demo.examples import DEMO_CALLS, REFUSED_CALL, curl_line
from gateway.demo.federation import DemoIdentity

REQUESTS_FILE = "demo-requests.sh"
PASSWORD = "demo"
READY_LINE = "Ctrl-C stops everything."
"""The banner's last line: whoever reads the banner (a person, a test) knows it is complete."""

_QINGHAI_LEVELS = {1: "仅账号 account only", 2: "实名 real name", 3: "实人 face scan"}
_SHAANXI_LEVELS = {"1": "仅账号 account only", "2": "实名 real name", "3": "实人 face scan"}
_LEGAL_LEVELS = {"1": "数字证书 certificate", "2": "现场核验", "3": "网上核验", "4": "未核验"}


def _accounts(title: str, rows: Iterable[str]) -> list[str]:
    return [f"  {title}", *(f"    {row}" for row in rows)]


def account_lines() -> list[str]:
    """Every demo account, by the platform it signs in at; all share the password 'demo'."""
    lines = [f"demo accounts (every password is '{PASSWORD}'):"]
    lines += _accounts(
        "个人 citizens — Qinghai platform (63):",
        (
            f"{c.user_id}  {c.resident.name}  up to {_QINGHAI_LEVELS[c.max_level]}"
            for c in qinghai_idp.CITIZENS
        ),
    )
    lines += _accounts(
        "个人 citizens — Shaanxi ticket platform (61):",
        (
            f"{c.user_id}  {c.resident.name}  {_SHAANXI_LEVELS.get(c.level[0], c.level[0])}"
            for c in ticket_idp.SHAANXI_CITIZENS
        ),
    )
    lines += _accounts(
        "个人 citizens — Gansu ticket platform (62):",
        (f"{c.user_id}  {c.resident.name}" for c in ticket_idp.GANSU_CITIZENS),
    )
    lines += _accounts(
        "个人 citizens — Guangdong platform (44):",
        (f"{c.uid}  {c.resident.name}" for c in guangdong_idp.CITIZENS),
    )
    lines += _accounts(
        "法人 enterprises — Shaanxi legal-person platform (61), one account per agent (经办人):",
        (
            f"{a.user_id}  {a.enterprise.name}, 经办人 {a.agent.name}  "
            f"{_LEGAL_LEVELS.get(a.real_level, a.real_level)}"
            for a in legal_idp.ACCOUNTS
        ),
    )
    lines += _accounts(
        "窗口 window clerks — Shaanxi staff directory (61), at the window console:",
        (f"{s.staff_id}  {s.name}  {s.desk}" for s in staff_directory.STAFF),
    )
    return lines


def terminal_banner(
    base_url: str,
    identity: DemoIdentity,
    backends: DemoBackends,
    requests_file: Path,
) -> str:
    """The banner: portals and accounts first, then the other servers, then where the curl
    lines are."""
    portal_lines = [
        f"  {p.title + ' ' + p.title_en:<40} {p.base_url}/" for p in identity.portals.values()
    ] + [
        f"  {'窗口受理 window clerk console (Shaanxi)':<40} {p.base_url}/window"
        for p in identity.portals.values()
        if p.window is not None
    ]
    lines = [
        "",
        f"tongban demo: gateway on {base_url}",
        "",
        "portals (sign in through the gateway):",
        *portal_lines,
        "",
        *account_lines(),
        "",
        "identity platforms (the gateway sends you there to sign in):",
        f"  {'Qinghai identity platform (63)':<40} {identity.idp_url}",
    ]
    if identity.staff is not None:
        lines.append(f"  {'Shaanxi window staff directory (61)':<40} {identity.staff.issuer}")
    if identity.platforms is not None:
        lines += identity.platforms.banner()
    lines += [
        "",
        "demo provincial systems (real servers on loopback):",
        *(f"  {sid:<18} {addr}" for sid, addr in sorted(backends.addresses.items())),
        "",
        f"operations: {base_url}/healthz  {base_url}/readyz  {base_url}/metrics  "
        f"{base_url}/openapi.json",
        f"ready-made requests for every scenario (curl, with this run's tokens): {requests_file}",
        "",
        READY_LINE,
    ]
    return "\n".join(lines)


def requests_script(base_url: str, tokens: dict[str, dict[str, str]], cases: str) -> str:
    """The content of ``demo-requests.sh``: the development tokens, the calls, the cases."""
    lines = [
        "# Ready-made requests for the tongban demo running at " + base_url,
        "# Copy a line into a shell. The development tokens are valid for this run only.",
        "",
        "# development tokens:",
        *(f"#   {key}: {value['who']}\n#     {value['token']}" for key, value in tokens.items()),
        "",
        f"# catalogue: curl -s {base_url}/api/v1/services -H 'Authorization: Bearer "
        f"{tokens['citizen-l3']['token']}'",
        "",
        "# service calls (synchronous queries and verifications):",
    ]
    for call in DEMO_CALLS:
        lines += [f"# {call.scenario}: {call.title}", curl_line(base_url, call, tokens), ""]
    lines += [
        "# whose data: a call naming someone else's ID number is refused before any back-end",
        '# is asked; with their consent grant it would carry "consent": "<grant id>".',
        f"# {REFUSED_CALL.scenario}: {REFUSED_CALL.title}",
        curl_line(base_url, REFUSED_CALL, tokens),
        "",
    ]
    return "\n".join(lines) + cases + "\n"


def write_requests_file(data_dir: Path, text: str) -> Path:
    """Write ``demo-requests.sh`` readable by its owner only (it holds bearer tokens)."""
    path = data_dir / REQUESTS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    path.chmod(0o600)  # an older file keeps its mode through O_TRUNC
    return path
