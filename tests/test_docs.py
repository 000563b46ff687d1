"""The documentation, checked: its links resolve, the site builds, the CLI reference is current, and no text in the
tree names work items or experiment runs. (Its examples are run by tests/test_doc_examples.py.)"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from test_doc_examples import DOCS, FENCE_RE, ROOT


def all_markdown() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md"] + sorted(DOCS.rglob("*.md"))

# ------------------------------------------------------------------------------------------------ links


def slug(text: str) -> str:
    """A heading's anchor as Python-Markdown's toc extension makes it (MkDocs' default)."""
    text = re.sub(r"`|\*\*|\*|\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The anchors a page offers: its headings' slugs, and the ids mkdocstrings gives the objects it documents."""
    text, found, in_fence = page.read_text(), set(), False
    for line in text.split("\n"):
        if FENCE_RE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            found.add(slug(line.lstrip("#").strip()))
        elif not in_fence and line.startswith(":::"):
            found.add(line[3:].strip())
    return found


LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_relative_links_resolve():
    problems = []
    for page in all_markdown():
        in_fence = False
        for n, line in enumerate(page.read_text().split("\n"), 1):
            if FENCE_RE.match(line):
                in_fence = not in_fence
            if in_fence:
                continue
            for target in LINK_RE.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"[a-z]+:", target):
                    continue  # https:, mailto:, file:
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(ROOT)}:{n}"
                if not dest.exists():
                    problems.append(f"{where}: {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where}: {target}: no such anchor in {dest.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ the site


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def _cli_reference_module():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "scripts" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    page = ROOT / "docs" / "reference" / "cli.md"
    assert page.read_text() == _cli_reference_module().render(), (
        "regenerate docs/reference/cli.md with `python scripts/gen_cli_reference.py`")


# ------------------------------------------------------------------------------------------------ wording

# Work-item wording the software's own text must not use.
WORDING = re.compile(r"\bstops? [0-9]|\bsessions?\b|\bissue [0-9]|the issue's", re.IGNORECASE)

# Experiment runs are named in the reports under docs/experiments/ (and in benchmarks/results/recipe.jsonl) only.
# Everywhere, no text may cite "row NAME" / "rows NAME" (the way the old docs did: "row b2e1-r36", "rows tc, ts",
# "rows e2 and op", "row f32-p7b"); outside the reports, no distinctive run name may appear at all.
RECORDS = ROOT / "benchmarks" / "results" / "recipe.jsonl"
REPORTS = ("docs/experiments/", "benchmarks/results/")


def run_names() -> set[str]:
    return {json.loads(line)["name"] for line in RECORDS.read_text().splitlines() if line.strip()}


def tree_files() -> list[Path]:
    """The repository's text files: tracked, and new ones git does not ignore."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        paths = [ROOT / p for p in out if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual outputs
        skip = {".git", ".venv", "site", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
        paths = [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    files = []
    for p in paths:
        if p.is_file() and not p.is_symlink() and p.suffix not in (".png", ".jpg", ".jpeg", ".gz", ".tar"):
            files.append(p)
    return files


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _own_pattern_line(path: Path, line: str) -> bool:
    return path == Path(__file__).resolve() and ("WORDING = re.compile" in line or "the issue's" in line)


def test_no_work_item_wording_in_the_tree():
    problems = []
    for path in tree_files():
        text = _text(path)
        if text is None:
            continue
        for n, line in enumerate(text.split("\n"), 1):
            if WORDING.search(line) and not _own_pattern_line(path, line):
                problems.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not problems, "say what the software does, or date it in docs/experiments/:\n" + "\n".join(problems)


def test_no_work_item_wording_in_the_cli_help():
    from ijepa.cli import build_parser

    parser = build_parser()
    helps = [("ijepa", parser.format_help())]
    helps += [(f"ijepa {name}", sub.format_help()) for name, _, sub in _cli_reference_module().subcommands(parser)]
    problems = [f"{name}: {m.group(0)!r}" for name, text in helps for m in WORDING.finditer(text)]
    problems += [f"{name}: {m.group(0)!r}" for name, text in helps for m in _row_citation().finditer(text)]
    assert not problems, "\n".join(problems)


def _row_citation() -> re.Pattern:
    names = sorted(run_names(), key=len, reverse=True)
    return re.compile(r"\brows? (?:(?:" + "|".join(map(re.escape, names)) + r")(?![\w-])|[a-z0-9]+-[a-z0-9])",
                      re.IGNORECASE)


def _distinctive_names() -> re.Pattern:
    names = sorted((n for n in run_names() if len(n) >= 4 and re.search(r"\d", n) and re.search(r"[a-z]", n)),
                   key=len, reverse=True)
    return re.compile(r"(?<![\w./-])(?:" + "|".join(map(re.escape, names)) + r")(?![\w-])")


def test_no_experiment_run_names_outside_the_reports():
    cite, named = _row_citation(), _distinctive_names()
    problems = []
    for path in tree_files():
        rel = path.relative_to(ROOT).as_posix()
        text = _text(path)
        if text is None or path == Path(__file__).resolve():
            continue
        in_reports = rel.startswith(REPORTS)
        for n, line in enumerate(text.split("\n"), 1):
            hit = cite.search(line) or (None if in_reports else named.search(line))
            if hit:
                problems.append(f"{rel}:{n}: {hit.group(0)!r}: {line.strip()[:100]}")
    assert not problems, ("give the reason in the software's terms, or link the report in docs/experiments/:\n"
                          + "\n".join(problems))
