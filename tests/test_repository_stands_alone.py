"""The repository stands on its own: no file points a reader at something outside it.

Scanned: every file git tracks (or, outside a git checkout, every file under the root but the
virtual environment and caches), as text, except symbolic links (``gateway/demo/config`` points
at ``config/``, which is scanned itself), files that are not UTF-8 text, and this file (its
examples are what the check must catch).

Refused everywhere:
- a path that leaves the repository (a sibling folder reached through ``..``, an absolute path
  into the machine that wrote the code);
- a Markdown file name that names no file of the repository (looked up from the root, beside
  the file that names it, and in ``docs/``): a briefing or a note kept elsewhere is no
  reference a user of the project can read.

Refused everywhere but CHANGELOG.md: "issue N" (with or without a section). Code, comments,
configuration and docs say what they rely on in their own words; the changelog is history, and
the tracker's numbers are how history is told, so it may keep them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SKIPPED_DIRS = {".git", ".venv", "build", "dist", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
HISTORY = {"CHANGELOG.md"}
SELF = Path(__file__).resolve()

# Assembled, so this file does not itself hold what it refuses.
_SIBLING = "shared"
_OUTSIDE = re.compile(r"\.\./" + _SIBLING + r"\b|(?<![\w.])/work/[\w-]+")
_TRACKER = "iss" + "ue"
_UP = "." * 2 + "/"


def _brief(stem: str) -> str:
    """A Markdown file name in capitals, of the kind kept outside a repository."""
    return stem.upper() + ".md"


_MARKDOWN = re.compile(r"(?<![\w/.:-])((?:\.\.?/)*[\w.-]+(?:/[\w.-]+)*\.md)\b")
_ISSUE = re.compile(r"\b[Ii]ssues?\s+#?\d+")


def _tracked_files() -> list[Path]:
    git = shutil.which("git")
    if git is not None and (ROOT / ".git").exists():
        listed = subprocess.run(
            [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name]
    return [
        path
        for path in ROOT.rglob("*")
        if not _SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)
    ]


def _texts() -> Iterator[tuple[Path, str]]:
    for path in _tracked_files():
        if path.is_symlink() or not path.is_file() or path.resolve() == SELF:
            continue
        try:
            yield path, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def _names_a_repository_file(reference: str, source: Path) -> bool:
    candidates = (ROOT / reference, source.parent / reference, ROOT / "docs" / reference)
    return any(c.resolve().is_file() and c.resolve().is_relative_to(ROOT) for c in candidates)


def outside_references(path: Path, text: str) -> list[str]:
    """'file:line: what' for each reference in ``text`` to something outside the repository."""
    found = []
    name = path.relative_to(ROOT).as_posix()
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{name}:{number}"
        found += [f"{where}: leaves the repository: {m.group(0)}" for m in _OUTSIDE.finditer(line)]
        found += [
            f"{where}: names no file of the repository: {m.group(1)}"
            for m in _MARKDOWN.finditer(line)
            if not _in_url(line, m.start()) and not _names_a_repository_file(m.group(1), path)
        ]
        if name not in HISTORY:
            found += [
                f"{where}: names a tracker issue: {m.group(0)}" for m in _ISSUE.finditer(line)
            ]
    return found


def _in_url(line: str, start: int) -> bool:
    """Whether the match at ``start`` is part of a URL (its whitespace-delimited word has ://)."""
    word_start = max(
        line.rfind(" ", 0, start), line.rfind("(", 0, start), line.rfind("<", 0, start)
    )
    return "://" in line[word_start + 1 : start]


def test_nothing_points_outside_the_repository() -> None:
    problems = [problem for path, text in _texts() for problem in outside_references(path, text)]
    assert not problems, "references to things outside the repository:\n" + "\n".join(problems)


def test_the_check_finds_what_it_is_for(tmp_path: Path) -> None:
    """The patterns catch each kind of reference, and leave the repository's own files alone."""
    source = ROOT / "docs" / "example.md"
    caught = outside_references(
        source,
        f"see {_UP}{_SIBLING}/{_brief('scenarios')}\n"
        f"as {_brief('notes')} measured\n"
        f"({_TRACKER} 3 §5)\n"
        f"{_TRACKER.capitalize()} 6: the platforms\n"
        f"read /work/{_SIBLING}/{_brief('design')}\n",
    )
    assert len([c for c in caught if "leaves the repository" in c]) == 2
    assert len([c for c in caught if "names no file" in c]) == 2
    assert len([c for c in caught if "tracker issue" in c]) == 2
    assert not outside_references(
        source,
        "README.md, docs/audit.md, audit.md, THREAT_MODEL.md, CHANGELOG.md\n"
        "https://example.org/guide/README-not-here.md is a web page\n"
        "an issued token; 3 issuers\n",
    )
    assert outside_references(ROOT / "CHANGELOG.md", f"({_TRACKER} 5 §6)\n") == []
