"""The repository stands alone: no source, test, doc or deploy file cites a file outside it, every
``docs/<page>.md §N`` citation names a section that exists, and every data file the tests replay
is described in tests/data/PROVENANCE.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.realdata import DATA

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("ingestd", "tests", "bench", "deploy", "docs", ".ci")
TOP = ("README.md", "config.yaml", "Makefile", "Dockerfile", "pyproject.toml")
TEXT = (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".service", ".txt", "")
# Notes that lived beside the repository while it was written; built from parts so that this
# file does not match itself.
OUTSIDE = re.compile(
    r"\b(?:" + "|".join(n + r"\.md" for n in ("BINANCE", "PERF", "NOTES", "STYLE", "DESIGN")) + r")\b"
    r"|(?:\.\./|\b)" + "shared" + r"/(?:realdata|tools|BINANCE)"
)
CITATION = re.compile(r"docs/([a-z_-]+)\.md §(\d+(?:\.\d+)?)")


def text_files() -> list[Path]:
    out = [ROOT / name for name in TOP if (ROOT / name).is_file()]
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if not path.is_file() or path.is_relative_to(DATA) or "__pycache__" in path.parts:
                continue
            if (path.suffix in TEXT and path.suffix != "") or path.parent.name == ".ci":
                out.append(path)
    return out


FILES = text_files()


def test_no_file_cites_a_file_outside_the_repository() -> None:
    assert len(FILES) > 100, "the scan must see the repository"
    hits = [
        f"{path.relative_to(ROOT)}:{no}: {line.strip()}"
        for path in FILES
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "\n".join(hits)


def sections(page: Path) -> set[str]:
    """``## 2. Title`` → ``2``; ``### 8.3 Title`` → ``8.3``."""
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", page.read_text(encoding="utf-8"), re.MULTILINE))


def test_every_docs_citation_names_an_existing_section() -> None:
    cited: dict[tuple[str, str], list[str]] = {}
    for path in FILES:
        for m in CITATION.finditer(path.read_text(encoding="utf-8")):
            cited.setdefault((m.group(1), m.group(2)), []).append(str(path.relative_to(ROOT)))
    assert ("binance", "2.3") in cited  # the scan sees the code's citations
    missing = []
    for (page, section), where in sorted(cited.items()):
        doc = ROOT / "docs" / f"{page}.md"
        if not doc.is_file() or section not in sections(doc):
            missing.append(f"docs/{page}.md §{section} (cited in {', '.join(sorted(set(where)))})")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in DATA.rglob("*") if p.is_file() and p.name != "PROVENANCE.md"),
    ids=lambda p: str(p.relative_to(DATA)),
)
def test_every_data_file_is_described(path: Path) -> None:
    provenance = (DATA / "PROVENANCE.md").read_text(encoding="utf-8")
    assert path.name in provenance, f"{path.relative_to(ROOT)} is not described in tests/data/PROVENANCE.md"
