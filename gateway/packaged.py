"""Files the package carries with it: the demo's configuration and the ticket face's WSDL.

The demo's configuration is the repository's top-level ``config/`` directory. The package reaches
it as ``gateway/demo/config``: in a checkout (and an editable install) that path is a symbolic
link to ``../../config``; building a wheel follows the link and copies the files in (the
package-data patterns of pyproject.toml), so an installed gateway finds the same files at the
same place and `tongban demo` runs from any folder. docs/operations.md says why a link rather
than a copy step.

Must not: read these files at request time (callers load them at start-up), or serve as a
deployment's configuration (``tongban init`` writes that; the demo's is for the demo).
"""

from __future__ import annotations

from pathlib import Path

DEMO_CONFIG_DIR = Path(__file__).resolve().parent / "demo" / "config"
"""The demo's configuration directory, in a checkout and in an installed package alike."""

TICKET_FACE_WSDL = DEMO_CONFIG_DIR / "wsdl" / "identity-ticket.wsdl"
"""The signed-ticket service description the legacy face publishes (gateway/http/legacy.py);
the demo's ticket platforms speak the same service."""
