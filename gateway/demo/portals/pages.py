"""How a page joins a portal: a ``PortalPage`` (route and handler) with an optional ``NavEntry``.

Each page module exports ``PAGES``, a tuple of ``PortalPage``; ``gateway/demo/portals/app.py``
mounts the modules listed in its ``PAGE_MODULES`` and builds the navigation from their entries,
in ``order``, for whoever is signed in. Adding a page is a module with its own ``PAGES`` and one
line in that list; no other page changes.

Must not: hold state (pages read ``STATE`` from the app), or render a whole document (the
layout in ``layout.py`` does, around what a handler returns).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Audience = Literal["anonymous", "person", "enterprise", "clerk"]
"""Who a navigation entry is for: nobody signed in, a person, an enterprise's operator (LP),
a window clerk at the console."""
SIGNED_IN: frozenset[Audience] = frozenset({"person", "enterprise"})


@dataclass(frozen=True, slots=True)
class NavEntry:
    """One link of the portal's navigation."""

    zh: str
    en: str
    order: int
    """Position among the entries (lower first)."""
    audience: frozenset[Audience] = SIGNED_IN
    window_only: bool = False
    """Shown only on a portal with a window desk (the console's entries)."""


@dataclass(frozen=True, slots=True)
class PortalPage:
    """A route of the portal; ``nav`` puts its path in the navigation (GET pages only)."""

    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    nav: NavEntry | None = None
