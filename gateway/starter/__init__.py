"""`tongban init DIR`: a commented starter configuration for a real deployment.

One province, one system, one service, one route, one portal and one identity platform, every
secret an ``{env: NAME}`` reference, with ``FILL IN`` marking what only the operator knows. The
files (``template/``, shipped as package data) pass ``tongban config check --no-secrets`` as
written, and the whole check once the secrets they name are exported. The model is
``kong config init``: write a file that runs, and say what to change.

Must not: write secrets, generate keys (the gateway makes its signing keys in its data
directory on first start), or overwrite anything that exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

FILL_IN = "FILL IN"
_ENV_REF = re.compile(r"\{env:\s*([A-Z][A-Z0-9_]*)\}")


class StarterError(Exception):
    """The starter cannot be written (the target exists and is not empty, or is a file)."""


@dataclass(frozen=True, slots=True)
class Starter:
    """What ``write_starter`` wrote and what the operator must do next."""

    directory: Path
    files: tuple[Path, ...]
    fill_in: tuple[tuple[Path, int, str], ...]
    """(file, line number, the line) for every line marked FILL IN."""
    env: tuple[str, ...]
    """Environment variables the configuration reads its secrets from, in file order."""

    def report(self) -> str:
        """The text ``tongban init`` prints."""
        lines = [f"wrote a starter configuration to {self.directory}:"]
        lines += [f"  {path.relative_to(self.directory)}" for path in self.files]
        lines += ["", "fill in (marked FILL IN in the files):"]
        for path, number, text in self.fill_in:
            lines.append(f"  {path.relative_to(self.directory)}:{number}: {text}")
        lines += [
            "",
            "before `tongban serve`, export these secrets (never write them in the files):",
            *(f"  export {name}=..." for name in self.env),
            "  (TONGBAN_PAIRWISE_SECRET and TONGBAN_LINK_SECRET: 32+ characters; client",
            "  secrets: 16+ characters, e.g. `python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)",
            "",
            f"check without the secrets: tongban config check --config {self.directory} "
            "--no-secrets",
            f"check everything:          tongban config check --config {self.directory}",
            f"run:                       tongban serve --config {self.directory}",
        ]
        return "\n".join(lines)


def _template_files() -> list[tuple[str, bytes]]:
    """(relative path, content) of every template file, from the package."""
    root = resources.files(__package__).joinpath("template")
    found: list[tuple[str, bytes]] = []
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                pending.append((f"{prefix}{entry.name}/", entry))
            elif entry.name.endswith(".yaml"):
                found.append((prefix + entry.name, entry.read_bytes()))
    return sorted(found)


def write_starter(directory: Path) -> Starter:
    """Write the starter into ``directory`` (created; it must not hold anything yet)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise StarterError(f"{directory} exists and is not an empty directory: nothing written")
    written: list[Path] = []
    fill_in: list[tuple[Path, int, str]] = []
    env: dict[str, None] = {}
    for relative, content in _template_files():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        written.append(target)
        for number, line in enumerate(content.decode().splitlines(), start=1):
            if f"{FILL_IN}:" in line or line.rstrip().endswith(FILL_IN):
                fill_in.append((target, number, line.strip()))
            if not line.lstrip().startswith("#"):  # a commented alternative is not read
                env.update(dict.fromkeys(_ENV_REF.findall(line)))
    return Starter(directory, tuple(written), tuple(fill_in), tuple(env))
