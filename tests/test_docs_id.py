"""The Bahasa Indonesia guides (docs/id/) stay in step with their English originals, and their links
lead somewhere.

A translation drifts without anyone noticing: a section added in English only, a command renamed in
one language. So each pair in PAIRS must have the same number of top-level sections (`## ` headings
outside code blocks) and the same commands in its code blocks. "Commands" are the lines of the blocks
a reader types or copies (`sh`, `toml`, `csv`, ...: COMMAND_BLOCKS) with their comments taken off,
since comments are prose and are translated. Blocks without a language are illustrations of output
and may be translated, so they are not compared.

Every relative link and image in docs/id/*.md, the English guides written beside them and README.md
must name a file that exists, and an anchor (`file.md#section`) a heading of that file, with the
heading turned into an anchor as GitHub does. The two console screenshots README.md shows are
checked like any other image: they are made by the console's browser test and must be in the
repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# English original (under docs/) -> its Bahasa Indonesia counterpart (under docs/id/).
PAIRS = {
    "operator.md": "id/operator.md",
    "agency.md": "id/instansi.md",
    "technician.md": "id/teknisi.md",
    "retention.md": "id/retensi.md",
}
# Files whose links are checked besides docs/id/*.md.
LINKED = ("README.md", "docs/operator.md", "docs/agency.md")
COMMAND_BLOCKS = {"sh", "bash", "shell", "console", "toml", "csv", "sql"}

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def _split(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The prose lines of a Markdown text, and its fenced code blocks as (language, lines)."""
    prose: list[str] = []
    blocks: list[tuple[str, list[str]]] = []
    fence: str | None = None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            blocks.append((m.group(2).lower(), []))
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            fence = None
        elif fence is not None:
            blocks[-1][1].append(line)
        else:
            prose.append(line)
    return prose, blocks


def _without_comment(line: str) -> str:
    """`line` up to its `#` comment: one at the start, or after a space outside quotes (a `#` inside a
    word or a quoted string is part of the command)."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def sections(path: Path) -> list[str]:
    prose, _ = _split(path.read_text(encoding="utf-8"))
    return [line for line in prose if line.startswith("## ")]


def commands(path: Path) -> list[str]:
    _, blocks = _split(path.read_text(encoding="utf-8"))
    found = []
    for language, lines in blocks:
        if language in COMMAND_BLOCKS:
            found += [c.strip() for line in lines if (c := _without_comment(line)).strip()]
    return found


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = _split(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for line in prose:
        if m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = anchor(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(path: Path) -> list[str]:
    prose, _ = _split(path.read_text(encoding="utf-8"))
    return [m.group(1) for line in prose for m in _LINK.finditer(_INLINE_CODE.sub("", line))]


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` that name no file, or no heading of the file they name."""
    broken = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading with the anchor #{fragment}")
    return broken


def _pair_ids() -> list[str]:
    return list(PAIRS)


@pytest.mark.parametrize("english", _pair_ids())
def test_docs_id_pair_has_the_same_sections(english: str) -> None:
    en, id_ = DOCS / english, DOCS / PAIRS[english]
    assert en.exists() and id_.exists(), f"both {en.relative_to(ROOT)} and {id_.relative_to(ROOT)} must exist"
    en_sections, id_sections = sections(en), sections(id_)
    assert en_sections, f"{english} has no ## sections: the comparison would prove nothing"
    assert len(en_sections) == len(id_sections), (
        f"{english} has {len(en_sections)} sections, {PAIRS[english]} {len(id_sections)}:\n"
        + "\n".join(f"  {a!r:60} {b!r}" for a, b in zip(en_sections + [""] * 40, id_sections + [""] * 40, strict=False)
                    if a or b)
    )


@pytest.mark.parametrize("english", _pair_ids())
def test_docs_id_pair_has_the_same_commands(english: str) -> None:
    en, id_ = DOCS / english, DOCS / PAIRS[english]
    assert en.exists() and id_.exists(), f"both {en.relative_to(ROOT)} and {id_.relative_to(ROOT)} must exist"
    en_commands, id_commands = commands(en), commands(id_)
    only_en = [c for c in en_commands if c not in id_commands]
    only_id = [c for c in id_commands if c not in en_commands]
    assert en_commands == id_commands, (
        f"the code blocks of {english} and {PAIRS[english]} differ\n"
        f"  only in English: {only_en}\n  only in Bahasa Indonesia: {only_id}"
    )


def test_docs_id_every_translation_is_paired_and_indexed() -> None:
    translated = {p.relative_to(DOCS).as_posix() for p in (DOCS / "id").glob("*.md")} - {"id/README.md"}
    assert translated == set(PAIRS.values()), "a file in docs/id/ without its English original in PAIRS"
    index = {(DOCS / "id" / t).resolve() for t in links(DOCS / "id" / "README.md")}
    assert {(DOCS / t).resolve() for t in translated} <= index, "docs/id/README.md must list every guide"


@pytest.mark.parametrize("id_doc", sorted(PAIRS.values()))
def test_docs_id_translation_links_its_english_original(id_doc: str) -> None:
    english = next(en for en, i in PAIRS.items() if i == id_doc)
    targets = {(DOCS / id_doc).parent.joinpath(t.partition("#")[0]).resolve() for t in links(DOCS / id_doc)}
    assert (DOCS / english).resolve() in targets, f"{id_doc} must link its English version {english}"


@pytest.mark.parametrize(
    "doc", sorted({p.relative_to(ROOT).as_posix() for p in (DOCS / "id").glob("*.md")} | set(LINKED))
)
def test_docs_id_relative_links_point_to_existing_files(doc: str) -> None:
    assert links(ROOT / doc), f"{doc} has no links: the check would prove nothing"
    assert broken_links(ROOT / doc) == []


def test_docs_id_checks_catch_drift(tmp_path: Path) -> None:
    # The helpers above on made-up files, so a broken parser cannot pass every pair by finding nothing.
    (tmp_path / "a.md").write_text(
        "# A\n\n## One\n\n```sh\nsiaga devices list   # all of them\n# a whole comment\n```\n\n"
        "```\n## not a section, and not a command\n```\n\n## Two: `x`\n\n[b](b.md#one) [c](c.md) [t](#two-x)\n",
        encoding="utf-8",
    )
    (tmp_path / "b.md").write_text("## Satu\n\n```toml\nurl = \"http://x/#y\"  # komentar\n```\n", encoding="utf-8")
    assert sections(tmp_path / "a.md") == ["## One", "## Two: `x`"]
    assert commands(tmp_path / "a.md") == ["siaga devices list"]
    assert commands(tmp_path / "b.md") == ['url = "http://x/#y"']
    assert broken_links(tmp_path / "a.md") == ["b.md#one: no heading with the anchor #one", "c.md: no such file"]
