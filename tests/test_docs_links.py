"""The docs stand on their own: every relative link in README.md and docs/*.md,
and every `name.md` they cite, is a file of this repository; nothing points at
the development machine's shared folders (background/, reference/, ../shared)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
CITED_DOC = re.compile(r"`([\w./-]+\.md)(?:§[\w.]*)?`")
OUTSIDE = re.compile(r"(?<![\w/])(?:\.\./shared/|background/|reference/|/work/)")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO)) for p in paths]


def prose(text: str) -> str:
    """``text`` without code blocks and code spans (`[^.](.*)` is no link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def relative_links(text: str) -> list[str]:
    """Link targets that are not URLs nor anchors, without their #fragment."""
    targets = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def resolves(doc: Path, target: str) -> bool:
    """Whether ``target``, read from ``doc``, is a path inside the repository
    (relative to the doc, or to the repository's root as the docs write
    `docs/lab.md`)."""
    for base in (doc.parent, REPO):
        path = (base / target).resolve()
        if path.is_relative_to(REPO) and path.exists():
            return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    dead = [t for t in relative_links(doc.read_text()) if not resolves(doc, t)]
    assert not dead, f"{doc.name}: dead links {dead}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_cited_markdown_file_is_in_the_repository(doc: Path) -> None:
    dead = [t for t in CITED_DOC.findall(doc.read_text()) if not resolves(doc, t)]
    assert not dead, f"{doc.name}: cites {dead}, which is not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_no_doc_points_outside_the_repository(doc: Path) -> None:
    lines = [
        f"{n}: {line.strip()}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not lines, f"{doc.name} points outside the repository:\n" + "\n".join(lines)


def test_a_dead_link_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    text = "See [the facts](../reference/kexec-facts.md#1), [web](https://example.org), [top](#a)."
    assert relative_links(text) == ["../reference/kexec-facts.md"]
    assert relative_links("`--regex=^[^.](.*[^~])?$` and\n```\n[a](b)\n```\n") == []
    assert not resolves(doc, "../reference/kexec-facts.md")
    assert resolves(REPO / "docs" / "DESIGN.md", "lab.md")
    assert not resolves(REPO / "docs" / "DESIGN.md", "../../etc/passwd")


def test_a_pointer_outside_is_found() -> None:
    assert OUTSIDE.search("facts are in `reference/kexec-facts.md`")
    assert OUTSIDE.search("see ../shared/DESIGN.md")
    assert not OUTSIDE.search("systemd's `src/shared/sleep-config.c`")
