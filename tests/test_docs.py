"""The user-facing docs against the tree: every file, module, command and option they name exists.

README.md, BENCHMARKS.md and docs/*.md are read as text; nothing is imported or run, so these
checks cost nothing and hold whether or not Paddle or torch is installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
# the history records runs of earlier code, whose files and options may since have changed: only
# its links are checked; every other doc describes the tree as it is
CURRENT = [doc for doc in DOCS if doc.name != "benchmarks-history.md"]
PACKAGES = ("converter", "paddle_model", "reference")
# top-level names of the tree that a doc may cite as a path
TREE = (*PACKAGES, "benchmarks", "tests", "docs", "convert.py", "coat_commands.py", "hubconf.py")
# options that no command of the project defines: argparse's own, and those of the other programs
# the docs show (pip, Paddle's launcher, hf upload, ruff)
FOREIGN_OPTIONS = {"--help", "--no-deps", "--nproc_per_node", "--repo-type", "--force-reinstall", "--check"}


def _ids(docs):
    return [str(p.relative_to(ROOT)) for p in docs]


def _code_spans(text: str) -> list[str]:
    """The inline code spans and the lines of fenced blocks of a Markdown text."""
    spans = []
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    for block in fenced:
        spans.extend(block.splitlines())
    outside = re.sub(r"```[^\n]*\n.*?```", "", text, flags=re.S)
    spans.extend(re.findall(r"`([^`\n]+)`", outside))
    return spans


def _python_sources() -> str:
    files = [p for pkg in (*PACKAGES, "benchmarks") for p in (ROOT / pkg).rglob("*.py")]
    files += [ROOT / "convert.py", ROOT / "coat_commands.py"]
    return "\n".join(p.read_text() for p in files)


def test_the_docs_exist_and_the_readme_links_each():
    names = {p.name for p in DOCS}
    assert {"README.md", "BENCHMARKS.md", "security.md", "performance.md", "design.md"} <= names
    readme = (ROOT / "README.md").read_text()
    for doc in DOCS[1:]:
        assert str(doc.relative_to(ROOT)) in readme, f"README.md does not point to {doc.name}"


def test_the_readme_gives_make_test_as_the_test_command_ci_runs():
    """.ci/run runs `make test`; the README says that is the command, and the Makefile has it."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", (ROOT / "README.md").read_text(), flags=re.M)
    assert re.search(r"^test:", (ROOT / "Makefile").read_text(), flags=re.M)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_every_relative_link_points_to_a_file(doc):
    for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
        if "://" in target:
            continue
        assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


@pytest.mark.parametrize("doc", CURRENT, ids=_ids(CURRENT))
def test_every_path_in_the_tree_that_a_doc_names_exists(doc):
    tops = "|".join(re.escape(t) for t in TREE)
    pattern = re.compile(rf"(?<![\w./$-])((?:{tops})(?:/[\w.*-]+)*/?)")
    for span in _code_spans(doc.read_text()):
        for path in pattern.findall(span):
            if "/" not in path and not path.endswith(".py"):
                continue  # a bare word such as "reference" or "tests"
            if "*" in path:
                assert list(ROOT.glob(path)), f"{doc.name}: nothing matches {path}"
            else:
                assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"


def _resolves(dotted: str) -> bool:
    """A dotted name is a module of the tree, or a name defined in one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for module in (base.with_suffix(".py"), base / "__init__.py"):
            if module.exists():
                rest = parts[cut:]
                if not rest:
                    return True
                # defined there, imported there, or listed there for a lazy import ("name": ".module")
                name = rest[0]
                defined = rf"^\s*(def|class)\s+{name}\b|^{name}\b.*=|^\s*(from|import)\s.*\b{name}\b"
                defined += rf"|\"{name}\""
                return bool(re.search(defined, module.read_text(), flags=re.M))
    return False


@pytest.mark.parametrize("doc", CURRENT, ids=_ids(CURRENT))
def test_every_module_and_function_a_doc_names_exists(doc):
    pattern = re.compile(rf"(?<![\w./])((?:{'|'.join(PACKAGES)})(?:\.\w+)+)")
    for span in _code_spans(doc.read_text()):
        for dotted in pattern.findall(span):
            if dotted.endswith((".py", ".md", ".cc", ".tsv")):
                continue  # a file, checked as a path
            assert _resolves(dotted), f"{doc.name} names {dotted}, which is not in the tree"


@pytest.mark.parametrize("doc", CURRENT, ids=_ids(CURRENT))
def test_every_command_a_doc_names_is_a_console_script(doc):
    # the names under pyproject.toml's [project.scripts] (tomllib is Python >= 3.11 only)
    table = re.search(
        r"^\[project\.scripts\]\n(.*?)(?=^\[)", (ROOT / "pyproject.toml").read_text(), re.M | re.S
    )
    scripts = set(re.findall(r"^([\w-]+)\s*=", table.group(1), flags=re.M))
    for command in set(re.findall(r"(?<![\w-])coat-[a-z]+", doc.read_text())):
        if command == "coat-paddle":  # the distribution's own name
            continue
        assert command in scripts, f"{doc.name} names {command}, which pyproject.toml does not install"


@pytest.mark.parametrize("doc", CURRENT, ids=_ids(CURRENT))
def test_every_option_a_doc_names_is_defined_by_a_command(doc):
    sources = _python_sources()
    for span in _code_spans(doc.read_text()):
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", span):
            if option in FOREIGN_OPTIONS:
                continue
            assert f'"{option}"' in sources, f"{doc.name} names {option}, which no command defines"
