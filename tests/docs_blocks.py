"""The fenced code blocks, links and heading anchors of README.md and docs/*.md, read as MkDocs and GitHub read them.

A block may be preceded by a directive line for tests/test_docs.py, `<!-- docs-test: skip -->` (not run) or
`<!-- docs-test: server -->` (a long-running server, started in the background); docs/development.md says how
blocks run.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"
#: The languages whose blocks run; the others (json, js, text, ...) are shown only.
RUNNABLE = ("bash", "sh", "console", "python")
DIRECTIVES = ("skip", "server")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<value>\S+)\s*-->\s*$")
_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directive: str | None  # "skip", "server" or None

    @property
    def name(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE

    def script(self) -> str:
        """What to run: the code, or for a `console` block the commands after its `$ ` prompts."""
        if self.lang != "console":
            return self.code
        return "\n".join(line[2:] for line in self.code.splitlines() if line.startswith("$ "))


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS_DIR.glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of `path`, with the directive on the line before it (blank lines between allowed)."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    directive: str | None = None
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            seen = _DIRECTIVE.match(lines[i])
            if seen:
                directive = seen.group("value")
            elif lines[i].strip():
                directive = None
            i += 1
            continue
        indent, fence = len(match.group("indent")), match.group("fence")
        body, start = [], i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        found.append(Block(path, start + 1, match.group("info").lower(), "\n".join(body) + "\n", directive))
        directive = None
        i += 1
    return found


def directive_lines(path: Path) -> list[tuple[int, str]]:
    """(line, value) of every `docs-test:` directive in `path`."""
    return [
        (number, match.group("value"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if (match := _DIRECTIVE.match(line))
    ]


def prose(path: Path) -> str:
    """The text of `path` with its fenced blocks blanked (line numbers kept): where links and headings are."""
    kept, fence = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group("fence")
            kept.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            kept.append("")
        else:
            kept.append(line)
    return "\n".join(kept)


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image in `path`'s prose."""
    found = []
    for number, line in enumerate(prose(path).splitlines(), 1):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            found.append((number, match.group("target")))
    return found


def slugify(text: str) -> str:
    """Python-Markdown's toc slug (what MkDocs uses): ASCII, lower case, word characters, hyphens for spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def heading_text(markdown: str) -> str:
    """A heading's text as rendered: links replaced by their text, code and emphasis marks dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"`|\*\*", "", text)


def anchors(path: Path) -> set[str]:
    """The ids of `path`'s headings, numbered `_1`, `_2`, ... on repeats as Python-Markdown numbers them."""
    ids: set[str] = set()
    for line in prose(path).splitlines():
        match = _HEADING.match(line)
        if not match:
            continue
        slug = base = slugify(heading_text(match.group("text")))
        count = 0
        while slug in ids:
            count += 1
            slug = f"{base}_{count}"
        ids.add(slug)
    return ids
