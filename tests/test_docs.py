"""The documentation stands alone: no tracked file names a path outside the repository, and
every "MATHS.md s.N" citation names a section that jaxar/MATHS.md has."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MATHS = ROOT / "jaxar" / "MATHS.md"
SECTION = re.compile(r"^## (\d+)\. ", re.M)
CITE = re.compile(r"MATHS\.md`?,?\s+(s\.\d+(?:\s*-\s*\d+)?(?:\s*(?:,|and)\s*s\.\d+(?:-\d+)?)*)")
# Names of notes that live outside the repository (spelt in pieces so that this file does not
# name them itself), and paths that point outside it.
OUTSIDE = re.compile(
    "|".join(
        [
            "REFERENCES" + r"\.md",
            "ENVIRONMENT" + "_NOTES",
            "HOUSE" + "_STYLE",
            r"\bSEAM\.md",
            r"(?:\.\./|/)" + "shared" + r"/",  # that folder, reached by ../ or an absolute path
            r"(?:^|[\s`'\"(\[=])" + "shared" + r"/[\w.-]+\.(?:md|py|json|txt)\b",  # a file in it
            r"(?<![\w.~-])/" + "work" + r"/",  # an absolute path on the machine it was written on
        ]
    ),
    re.M,
)


def _tracked_text_files() -> list[pathlib.Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split("\0")
        files = [ROOT / f for f in out if f]
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    texts = []
    for f in files:
        if f.is_file():
            try:
                f.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # images
                continue
            texts.append(f)
    return texts


def _cited_sections(text: str) -> set[int]:
    found = set()
    for m in CITE.finditer(text):
        for part in re.findall(r"\d+(?:\s*-\s*\d+)?", m.group(1)):
            lo, _, hi = part.replace(" ", "").partition("-")
            found.update(range(int(lo), int(hi or lo) + 1))
    return found


def test_no_file_names_a_path_outside_the_repository():
    bad = []
    for f in _tracked_text_files():
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_every_maths_citation_names_an_existing_section():
    sections = {int(n) for n in SECTION.findall(MATHS.read_text(encoding="utf-8"))}
    assert sections == set(range(1, 13))
    cited, bad = set(), []
    for f in _tracked_text_files():
        found = _cited_sections(f.read_text(encoding="utf-8"))
        cited |= found
        bad += [f"{f.relative_to(ROOT)}: s.{s}" for s in sorted(found - sections)]
    assert not bad, "citations of missing sections: " + ", ".join(bad)
    assert cited, "no MATHS.md citation found: is the pattern stale?"


def test_the_citation_pattern_reads_every_form():
    text = 'x (jaxar/MATHS.md s.1-2), `jaxar/MATHS.md` s.6, jaxar/MATHS.md\ns.5, s.7, "Precision"'
    assert _cited_sections(text) == {1, 2, 5, 6, 7}
    assert OUTSIDE.search("see /" + "work/main/x") and OUTSIDE.search("(../sha" + "red/x.md)")
    assert not OUTSIDE.search("a shared/common module: the shared recipes, homework/notes")


def test_module_docstrings_citing_a_paper_section_give_its_arxiv_id():
    """A module of the library that cites a section of MATHS.md about a paper names the paper
    by its arXiv id in the module docstring (the hardware section s.8 has none)."""
    import ast

    arxiv = re.compile(r"arXiv:\d{4}\.\d{4,5}")
    missing = []
    for folder in ("jaxar", "pallas_kernels"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            text = f.read_text(encoding="utf-8")
            if not (_cited_sections(text) - {8}):
                continue
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not arxiv.search(doc):
                missing.append(str(f.relative_to(ROOT)))
    assert not missing, missing
