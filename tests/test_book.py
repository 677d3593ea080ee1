"""The book's conventions that a reader or a Colab student meets, held for every chapter (new ones
included, with no edit here): install cells that install what the chapter imports from one
repository address, the exercise's Colab badge, display maths in its own paragraph, widgets hidden
in the HTML, long plotting cells folded, code that fits the code box; and the results dashboard,
checked against the results files of the book that tests/test_chapters.py builds.
"""

from __future__ import annotations

import ast
import functools
import html as html_lib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from layerwise.course import (VERDICT_COLOURS, VERDICT_ORDER, chapters, collect_results, dashboard_markdown,
                              write_dashboard)
from test_chapters import BOOK_TIMEOUT, built_book, staged  # noqa: F401  (fixtures: the book test_chapters builds)

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = chapters(ROOT)
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REPOSITORY = PROJECT["urls"]["Repository"]
EXTRAS = PROJECT["optional-dependencies"]
INSTALL = re.compile(r'%pip install -q "layerwise(?:\[([a-z,]+)\])? @ git\+(\S+?)"')
CODE_WIDTH = 88            # characters: wider code lines are cut off in the book's code box
COLAB = "https://colab.research.google.com/github/"


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def exercise_colab_url(name: str) -> str:
    """The Colab address of the released exercise ``exercises/<name>/<name>.ipynb``."""
    repo = REPOSITORY.split("github.com/", 1)[1].rstrip("/")
    return f"{COLAB}{repo}/blob/main/exercises/{name}/{name}.ipynb"


# --------------------------------------------------------------------------- installing a chapter on Colab

def test_the_repository_address_is_in_one_place():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == REPOSITORY, "_config.yml's repository.url must be pyproject's [project.urls]"
    readme = (ROOT / "README.md").read_text()
    repo = REPOSITORY.split("github.com/", 1)[1]
    links = re.findall(r"https://colab\.research\.google\.com/github/(\S+?)/blob/", readme)
    assert links and set(links) == {repo}, f"the README's Colab links must point at {repo}: {sorted(set(links))}"


LIB = ROOT / "lib"


def _module_file(name: str) -> Path | None:
    base = LIB.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()), None)


def _imported(name: str, file: Path) -> set[str]:
    """Every module ``file`` (the module ``name``) imports, at its top or inside a function (a
    lazy import runs when the function does); a package that imports its submodules by name
    (``importlib.import_module``, as the zoo does with its recipes) counts as importing them all."""
    tree = ast.parse(file.read_text())
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}")}
    if "import_module" in file.read_text() and file.name == "__init__.py":
        out |= {".".join(p.relative_to(LIB).with_suffix("").parts) for p in file.parent.rglob("*.py")
                if p.name != "__init__.py"}
    return out


@functools.lru_cache(maxsize=None)
def third_party_imports(module: str) -> frozenset[str]:
    """The top-level names of the packages outside the library that importing ``module`` (a
    module of the library) can import, following the library's own imports transitively."""
    seen, todo, found = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        file = _module_file(name)
        if file is None:
            continue
        for imp in _imported(name, file):
            if imp.split(".")[0] == "layerwise":
                todo += [imp] + [".".join(imp.split(".")[:k]) for k in range(2, imp.count(".") + 1)]
            elif imp:
                found.add(imp.split(".")[0])
    return frozenset(found)


def extras_needed(chapter: Path) -> dict[str, list[str]]:
    """{extra: [its packages the chapter uses]} for every optional-dependency group whose packages
    the chapter's code imports, directly or through the library (lazy imports included)."""
    from IPython.core.inputtransformer2 import TransformerManager

    used = set()
    for cell in _code(nbformat.read(chapter, as_version=4)):
        for node in ast.walk(ast.parse(TransformerManager().transform_cell(cell.source))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] == "layerwise":
                    used |= third_party_imports(name)
                elif name:
                    used.add(name.split(".")[0])
    needed = {}
    for extra, reqs in EXTRAS.items():
        if extra in ("book", "grade", "dev"):        # the machinery's own extras, never a chapter's
            continue
        packages = {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).replace("-", "_").lower() for r in reqs}
        if packages & used:
            needed[extra] = sorted(packages & used)
    return needed


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_install_cell_installs_what_the_chapter_imports(chapter: Path):
    nb = nbformat.read(chapter, as_version=4)
    installs = [m for c in _code(nb) for m in INSTALL.finditer(c.source)]
    assert len(installs) == 1, (f"{chapter.name} needs one Colab install cell: "
                                f'%pip install -q "layerwise[extras] @ git+{REPOSITORY}" (under google.colab)')
    asked, url = set(filter(None, (installs[0].group(1) or "").split(","))), installs[0].group(2)
    assert url == REPOSITORY, f"{chapter.name} installs from {url}, not the repository ({REPOSITORY}, pyproject.toml)"
    needed = extras_needed(chapter)
    missing = set(needed) - asked
    assert not missing, (f"{chapter.name} imports what only the extra(s) {sorted(missing)} install "
                         f"({', '.join(p for m in sorted(missing) for p in needed[m])}): install \"layerwise[{','.join(sorted(asked | missing))}]\"")
    assert asked <= set(EXTRAS), f"{chapter.name} asks for unknown extras {sorted(asked - set(EXTRAS))}"


# --------------------------------------------------------------------------- what the HTML shows

@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_links_its_exercise_with_a_colab_badge(chapter: Path):
    text = "\n".join(c.source for c in nbformat.read(chapter, as_version=4).cells if c.cell_type == "markdown")
    url = exercise_colab_url(chapter.stem)
    assert re.search(r"\[!\[[^\]]*Colab[^\]]*\]\([^)]+\)\]\(" + re.escape(url) + r"\)", text), (
        f"{chapter.name} needs a Colab badge linking its exercise: [![Open the exercise in Colab](<badge>)]({url})")
    assert (ROOT / "exercises" / chapter.stem / f"{chapter.stem}.ipynb").exists()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_display_maths_stands_in_its_own_paragraph(chapter: Path):
    """``$$…$$`` inside a paragraph or list item is read as a stray ``$`` and inline maths."""
    bad = []
    for i, cell in enumerate(nbformat.read(chapter, as_version=4).cells):
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.split("\n")
        k = 0
        while k < len(lines):
            s = lines[k].strip()
            if "$$" in s and not s.startswith("$$"):
                bad.append(f"cell {i}: display maths inside a line: {s[:80]}")
            if not s.startswith("$$"):
                k += 1
                continue
            end = k if (len(s) > 2 and s.endswith("$$")) else next(
                (j for j in range(k + 1, len(lines)) if lines[j].strip().endswith("$$")), len(lines) - 1)
            if (k > 0 and lines[k - 1].strip()) or (end + 1 < len(lines) and lines[end + 1].strip()):
                bad.append(f"cell {i}: display maths without a blank line around it: {s[:80]}")
            k = end + 1
    assert not bad, f"{chapter.name}:\n  " + "\n  ".join(bad)


def _makes_a_figure(source: str) -> bool:
    code = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return bool(code) and bool(re.search(r"plt\.(subplots|figure)\(", code[0]))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_widgets_and_long_plotting_cells_are_folded(chapter: Path):
    """The live widget does nothing without a kernel: its cell's output is removed from the HTML
    (its static figure stays); a long cell that only draws a figure shows its figure, its code folded."""
    wrong = []
    for i, cell in enumerate(nbformat.read(chapter, as_version=4).cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if re.search(r"^[^#\n]*(?<!def )\blive_figure\(", cell.source, re.M) and "remove-output" not in tags:
            wrong.append(f"code cell {i} shows a live widget: tag it remove-output")
        if _makes_a_figure(cell.source) and len(cell.source.splitlines()) >= 10 and not (
                {"hide-input", "remove-input"} & set(tags)):
            wrong.append(f"code cell {i} draws a figure in {len(cell.source.splitlines())} lines: tag it hide-input")
    assert not wrong, f"{chapter.name}:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_code_fits_the_code_box(chapter: Path):
    """Code lines at most CODE_WIDTH characters (the book's code box cuts off the rest); the install
    line is exempt (an address does not wrap)."""
    long = [(i, line) for i, cell in enumerate(nbformat.read(chapter, as_version=4).cells)
            if cell.cell_type == "code" and "remove-input" not in cell.metadata.get("tags", [])
            for line in cell.source.splitlines() if len(line) > CODE_WIDTH and not line.lstrip().startswith("%pip")]
    assert not long, (f"{chapter.name}: {len(long)} code lines wider than {CODE_WIDTH} characters:\n  "
                      + "\n  ".join(f"cell {i}: {line[:100]}" for i, line in long[:10]))


# --------------------------------------------------------------------------- the results dashboard

def _results_file(folder: Path, chapter: str, rows: list[tuple[str, str]], part: str = "part1_x") -> None:
    (folder / "book" / part).mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Title of {chapter}\n\ntext")])
    (folder / "book" / part / f"{chapter}.ipynb").write_text(nbformat.writes(nb))
    payload = {"chapter": chapter, "profile": "fast", "meta": {"created": "2026-12-01T10:00:00+00:00"},
               "rows": [{"claim": c, "paper": "p", "ours": "o", "reproduced": v} for c, v in rows]}
    (folder / "book" / part / f"{chapter}.results.json").write_text(json.dumps(payload))


def test_dashboard_counts_and_lists_every_claim(tmp_path: Path):
    _results_file(tmp_path, "02_b", [("a | pipe & <tag>", "no"), ("b", "yes")])
    _results_file(tmp_path, "01_a", [("c", "yes"), ("d", "partly"), ("e", "n/a")])
    (tmp_path / "book" / "part1_x" / "03_orphan.results.json").write_text(
        json.dumps({"chapter": "03_orphan", "profile": "fast", "rows": []}))      # no notebook: left out
    results = collect_results(tmp_path)
    assert [t["chapter"] for t in results] == ["01_a", "02_b"]
    page = write_dashboard(tmp_path).read_text()
    assert "5 claims in 2 chapters" in page
    for verdict, n in zip(VERDICT_ORDER, (2, 1, 1, 1)):
        assert re.search(rf"{re.escape(verdict)}</span> {n}\b", page), (verdict, n)
    assert _summary_rows(page) == [("part1_x/01_a.html", "01 · Title of 01_a", [1, 1, 0, 1], "fast, 2026-12-01 10:00"),
                                   ("part1_x/02_b.html", "02 · Title of 02_b", [1, 0, 1, 0], "fast, 2026-12-01 10:00")]
    assert "a | pipe &amp; &lt;tag&gt;" in page and "<tag>" not in page
    assert page.count("href='part1_x/02_b.html'") == 3 and page.count("<tr data-chapter=") == 5
    assert dashboard_markdown([]).count("0 claims in 0 chapters") == 1


def test_badge_colours_agree_between_the_dashboard_and_the_chapters():
    from layerwise.core.report import VERDICT_COLOURS as chapter_colours, verdict_badge

    assert chapter_colours == VERDICT_COLOURS
    assert "✓ yes" in verdict_badge(True) and "✗ no" in verdict_badge(False) and "– n/a" in verdict_badge(None)
    with pytest.raises(ValueError):
        verdict_badge("maybe")


def _cells(tr: str) -> list[str]:
    return [html_lib.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]


def _summary_rows(page: str) -> list[tuple[str, str, list[int], str]]:
    """(link, chapter, [yes, partly, no, n/a], run) of every row of the dashboard's summary table."""
    out = []
    for tr in re.findall(r"<tr data-summary=.*?</tr>", page, re.S):
        cells = _cells(tr)
        out.append((re.search(r"href=['\"]([^'\"]+)['\"]", tr).group(1), cells[0], [int(c) for c in cells[1:-1]], cells[-1]))
    return out


def _table_rows(page: str) -> list[tuple[str, str, str, str, str]]:
    """(chapter link, verdict, claim, paper, ours) of every row of the dashboard's claims table."""
    table = page[page.index("layerwise-dashboard"):]
    rows = []
    for tr in re.findall(r"<tr data-chapter=.*?</tr>", table, re.S):
        cells = [html_lib.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        href = re.search(r"href=['\"]([^'\"]+)['\"]", tr).group(1)
        rows.append((href, cells[1].split(" ", 1)[1], cells[2], cells[3], cells[4]))
    return rows


@pytest.mark.timeout(BOOK_TIMEOUT)
def test_built_dashboard_matches_the_results_files(built_book: dict, staged: Path):
    assert built_book["returncode"] == 0, "the book did not build (see test_book_builds_without_warnings)"
    html = Path(built_book["html"])
    page = (html / "book" / "results.html").read_text()
    results = collect_results(staged)
    assert {t["chapter"] for t in results} == {c.stem for c in CHAPTERS}, "a chapter's results are missing"
    expected = [(Path(os.path.relpath(t["page"], "book")).with_suffix(".html").as_posix(), r["reproduced"],
                 r["claim"], r["paper"], r["ours"]) for t in results for r in t["rows"]]
    assert _table_rows(page) == expected
    for href, *_ in expected:
        assert (html / "book" / href).exists(), f"the dashboard links {href}, which the book lacks"
    summary = [(Path(os.path.relpath(t["page"], "book")).with_suffix(".html").as_posix(),
                [sum(r["reproduced"] == v for r in t["rows"]) for v in VERDICT_ORDER], t["profile"]) for t in results]
    assert [(link, n, run.split(",")[0]) for link, _, n, run in _summary_rows(page)] == summary
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", page))
    counts = {v: sum(r[1] == v for r in expected) for v in VERDICT_ORDER}
    assert f"{len(expected)} claims in {len(results)} chapters" in text
    for v, n in counts.items():
        assert re.search(rf"{re.escape(v)}\s+{n}\b", text), f"the dashboard does not count {n} × {v}"
    print(f"dashboard: {len(expected)} claims, " + ", ".join(f"{v} {n}" for v, n in counts.items())
          + f"; written in {built_book['dashboard_seconds']:.2f} s")


# --------------------------------------------------------------------------- the figure style

def test_figure_size_fits_the_column_and_refuses_bad_layouts():
    from layerwise.core.plot import COLUMN_WIDTH, MAX_COLS, figure_size

    assert figure_size() == (COLUMN_WIDTH, 0.7 * COLUMN_WIDTH)
    w, h = figure_size(3)                                   # three side by side
    assert w == COLUMN_WIDTH and h == pytest.approx(0.7 * COLUMN_WIDTH / 3)
    w, h = figure_size(5, cols=2, aspect=0.5)               # three rows of two
    assert h == pytest.approx(3 * 0.5 * COLUMN_WIDTH / 2)
    assert figure_size(7)[1] == pytest.approx(3 * 0.7 * COLUMN_WIDTH / MAX_COLS)   # at most MAX_COLS a row
    for bad in (dict(panels=0), dict(panels=2.5), dict(panels=4, cols=MAX_COLS + 1), dict(panels=2, cols=0),
                dict(panels=2, aspect=0), dict(panels=2, width=-1.0), dict(panels=True)):
        with pytest.raises(ValueError, match=next(iter(k for k in bad if k != "panels"), "panels")):
            figure_size(**bad)


def test_setup_applies_the_book_style():
    import matplotlib as mpl

    from layerwise.core import setup
    from layerwise.core.plot import BOOK_STYLE

    with mpl.rc_context():
        mpl.rcParams["figure.dpi"] = 33
        setup("fast", seed=0)
        assert mpl.rcParams["figure.dpi"] == BOOK_STYLE["figure.dpi"]
        assert tuple(mpl.rcParams["figure.figsize"]) == BOOK_STYLE["figure.figsize"]
