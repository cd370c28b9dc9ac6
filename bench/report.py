"""Result tables and ``docs/performance.md``.

Every benchmark returns a ``Section``: a title, what it measured and how,
and ``Row``s — our figure next to the reference's, their ratio, and both
commands exactly as run.  ``write_doc`` replaces the generated part of
docs/performance.md (between the BENCH markers) and keeps everything else,
the placement section included."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO

DOC = REPO / "docs" / "performance.md"
BEGIN = "<!-- BENCH:BEGIN (written by `make bench`; edit bench/, not this part) -->"
END = "<!-- BENCH:END -->"


@dataclass(frozen=True)
class Row:
    figure: str  # what is measured, e.g. "save, zstd -1: MB/s"
    ours: str
    reference: str  # the reference tool's name, or "" when there is none
    theirs: str
    ratio: str  # ours / theirs, oriented so that > 1 is better for us
    command: str
    ref_command: str = ""


@dataclass
class Section:
    title: str
    intro: str
    rows: list[Row] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # more tables or paragraphs (markdown)
    verdicts: list[str] = field(default_factory=list)  # target: met / missed, and why

    def markdown(self) -> str:
        out = [f"### {self.title}", "", self.intro.strip(), ""]
        if self.rows:
            out += [
                "| figure | ours | reference | reference's | ratio | our command "
                "| reference command |",
                "|---|---:|---|---:|---:|---|---|",
            ]
            for r in self.rows:
                cmd = f"`{_cell(r.command)}`" if r.command else ""
                ref = f"`{_cell(r.ref_command)}`" if r.ref_command else ""
                out.append(
                    f"| {r.figure} | {r.ours} | {r.reference} | {r.theirs} | {r.ratio} "
                    f"| {cmd} | {ref} |"
                )
            out.append("")
        for block in self.extra:
            out += [block.strip(), ""]
        if self.verdicts:
            out += [f"- {v}" for v in self.verdicts]
            out.append("")
        return "\n".join(out)

    def text(self) -> str:
        """A plain console rendering."""
        lines = [f"== {self.title}"]
        for r in self.rows:
            lines.append(
                f"  {r.figure}: ours {r.ours} | {r.reference} {r.theirs} | ratio {r.ratio}"
            )
            if r.command:
                lines.append(f"      $ {r.command}")
            if r.ref_command:
                lines.append(f"      $ {r.ref_command}")
        lines += [f"  * {v}" for v in self.verdicts]
        return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "—"


def mbps(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s"


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


def write_doc(header: str, sections: list[Section], path: Path = DOC) -> None:
    """Replace the generated part of ``path`` (or append it) with ``sections``."""
    body = "\n".join([BEGIN, "", header.strip(), "", *(s.markdown() for s in sections), END])
    text = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: body, text)
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text if text.endswith("\n") else text + "\n")
