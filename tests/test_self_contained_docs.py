"""The code explains itself: no comment cites a document outside the repository or narrates issue history, and
every `docs/algorithms.md §N` it cites names a section that exists."""

from __future__ import annotations

import re

from conftest import REPO_ROOT

SCANNED = ("oneforcing", "tests", "scripts", "benchmarks", "configs")
ALGORITHMS = REPO_ROOT / "docs" / "algorithms.md"
# each pattern is split in two, so that this file never matches itself
FORBIDDEN = {
    "design-document citation": re.compile("design" + r" §"),
    "algorithm-notes citation": re.compile("algorithm" + r"-notes"),
    "notes citation": re.compile(r"\bnotes" + r" §\d"),
    "issue history": re.compile("issue" + r" #\d+", re.IGNORECASE),
}
CITATION = re.compile(r"docs/algorithms\.md((?:\s*(?:,|and|-|–)?\s*§\d+)+)")


def scanned_files() -> dict[str, str]:
    """Relative path -> text of every text file in the scanned folders and the Makefile, this one excluded."""
    paths = [p for folder in SCANNED for p in (REPO_ROOT / folder).rglob("*") if p.is_file()]
    paths.append(REPO_ROOT / "Makefile")
    texts = {}
    for path in paths:
        if "__pycache__" in path.parts or path.name == "test_self_contained_docs.py":
            continue
        try:
            texts[str(path.relative_to(REPO_ROOT))] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary files (weights, images) carry no comments
    return texts


def algorithm_sections() -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. \S", ALGORITHMS.read_text(encoding="utf-8"), flags=re.M)}


def test_no_citation_of_documents_outside_the_repository():
    problems = [f"{path}:{text.count(chr(10), 0, match.start()) + 1}: {what} {match.group(0)!r}"
                for path, text in scanned_files().items()
                for what, pattern in FORBIDDEN.items() for match in pattern.finditer(text)]
    assert not problems, "cite docs/ (e.g. docs/algorithms.md §N) instead of:\n" + "\n".join(problems)


def test_algorithms_doc_sections_are_numbered_in_order():
    sections = sorted(algorithm_sections())
    assert sections and sections == list(range(1, len(sections) + 1)), sections


def test_every_cited_algorithms_section_exists():
    sections = algorithm_sections()
    cited, problems = 0, []
    for path, text in scanned_files().items():
        for match in CITATION.finditer(text):
            for number in map(int, re.findall(r"§(\d+)", match.group(1))):
                cited += 1
                if number not in sections:
                    line = text.count("\n", 0, match.start()) + 1
                    problems.append(f"{path}:{line}: §{number} (docs/algorithms.md has §1-§{max(sections)})")
    assert cited > 0, "no code cites docs/algorithms.md; the citation pattern no longer matches"
    assert not problems, "\n".join(problems)
