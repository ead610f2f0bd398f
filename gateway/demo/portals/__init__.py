"""Two demo portals (Qinghai and Shaanxi 政务服务网) that sign people in through the gateway,
and the Shaanxi window clerks' console: what a citizen, an enterprise's operator or a clerk
sees, in Chinese first.

- ``catalogue.py``: 首页 with separate entries for persons and enterprises; 事项目录 (only the
  services this portal may call), 办事指南, the portal's service calls and their answers;
- ``cases.py``: 我的办件, status and timeline in Beijing time, 补齐补正;
- ``signin.py``: sign-in and sign-out through the gateway, back-channel logout;
- ``window.py``: 窗口受理, the clerk's sign-in, intake by token exchange, the window queue.

Around them: ``state.py`` (a portal's registration and sessions), ``tokens.py`` (calls to the
gateway with the session's token, refreshed; ``SessionEnded`` when it cannot be), ``layout.py``
(the page shell and navigation), ``results.py`` (answers as labelled fields), ``words.py``
(levels, statuses, provinces, Beijing time), ``forms.py`` (CSRF), ``pages.py`` (how a page
and its navigation entry join), ``app.py`` (the app; ``PAGE_MODULES`` lists the page modules).
"""

from gateway.demo.portals.app import build_portal_app
from gateway.demo.portals.state import (
    ClerkSession,
    PortalSession,
    PortalState,
    Tokens,
    WindowDesk,
    qinghai_portal,
    shaanxi_portal,
)

__all__ = [
    "ClerkSession",
    "PortalSession",
    "PortalState",
    "Tokens",
    "WindowDesk",
    "build_portal_app",
    "qinghai_portal",
    "shaanxi_portal",
]
