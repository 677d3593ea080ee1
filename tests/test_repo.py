"""Repository conventions that keep the course consistent as papers are added (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

from layerwise.course import assignments, chapters

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = chapters(ROOT)
ASSIGNMENTS = assignments(ROOT)


def _tracked_notebooks() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.split()]


def test_notebooks_in_git_carry_no_outputs():
    for path in _tracked_notebooks():
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, (
                    f"{path.relative_to(ROOT)} carries outputs: strip them before committing")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_conventions(chapter: Path):
    nb = nbformat.read(chapter, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and re.search(r'^PROFILE = "auto"', params[0].source, re.M), (
        f"{chapter.name} needs one cell tagged 'parameters' that sets PROFILE = \"auto\"")
    text = "\n".join(c.source for c in nb.cells)
    assert re.match(r"# .+", nb.cells[0].source), "the first cell is the chapter's title"
    keys = set(re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", text))
    assert keys, f"{chapter.name} cites no paper"
    bib = (ROOT / "references.bib").read_text()
    for key in {k.strip() for group in keys for k in group.split(",")}:
        assert f"{{{key}," in bib, f"{chapter.name} cites {key!r}, which references.bib lacks"
    assert "paper_table(" in text, f"{chapter.name} has no paper-vs-ours table"
    assert "ipywidgets" in text, f"{chapter.name} has no widget"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    hanging = re.findall(r"\b(?:interact|interactive|interact_manual|interactive_output|Output)\(", code)
    assert not hanging, (
        f"{chapter.name} uses {sorted(set(hanging))}: output widgets can leave papermill waiting for ever on an "
        "idle kernel; use layerwise.core.plot.live_figure instead")
    hand_rolled = re.findall(r"\bwidgets\.Image\(|\.observe\(|\bImage\(value=", code)
    assert "live_figure(" in code and not hand_rolled, (
        f"{chapter.name}: its widget must be layerwise.core.plot.live_figure (with cache= / prerender= for slow "
        f"drawings), not a hand-made ipywidgets.Image + observe ({sorted(set(hand_rolled))})")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_every_chapter_has_its_four_files(chapter: Path):
    name = chapter.stem
    assert name in ASSIGNMENTS, f"{name}: no solutions/{name}/{name}.ipynb"
    assert (ROOT / "exercises" / name / f"{name}.ipynb").exists(), f"{name}: run `make exercises`"
    meta = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4).metadata["layerwise"]
    module = importlib.import_module(meta["reference"])
    parent, method = meta["reference"].rsplit(".", 1)
    assert (ROOT / "tests" / f"test_{method}.py").exists(), f"{name}: tests/test_{method}.py is missing"
    text = "\n".join(c.source for c in nbformat.read(chapter, as_version=4).cells)
    assert f"from {parent} import {method}" in text or meta["reference"] in text, (
        f"{chapter.name} does not use {meta['reference']}")
    assert module.__doc__, f"{meta['reference']} needs a module docstring citing the paper"


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_graded_functions_match_the_reference_signatures(name: str):
    nb = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)
    meta = nb.metadata["layerwise"]
    module = importlib.import_module(meta["reference"])
    defs = {}
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.FunctionDef):
                    a = node.args
                    defs[node.name] = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    for fn in meta["graded"]:
        assert hasattr(module, fn), f"{meta['reference']} has no {fn}"
        ref_params = list(inspect.signature(getattr(module, fn)).parameters)
        assert defs.get(fn) == ref_params, f"{name}: {fn}{tuple(defs.get(fn) or ())} must match the reference {fn}{tuple(ref_params)}"


def test_environment_yml_mirrors_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = py["dependencies"] + [r for extra in py["optional-dependencies"].values() for r in extra]
    env = (ROOT / "environment.yml").read_text()
    for req in reqs:
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower()
        assert re.search(rf"^\s*- {re.escape(name)}\b", env, re.M | re.I), f"environment.yml lacks {name}"
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_bench_runs_quickly_and_prints_ratios():
    out = subprocess.run([sys.executable, "-m", "layerwise.bench", "--quick"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    from layerwise.bench import available
    for name in available():
        assert f"[{name}]" in out.stdout
    assert re.search(r"M=8 / M=1 = \d+\.\d+x", out.stdout) and re.search(r"loop over samples / batched = \d+\.\d+x", out.stdout)


# --------------------------------------------------------------------------- the library's layers (ARCHITECTURE.md)

LIB = ROOT / "lib" / "layerwise"
#: which parts of the library each part may import (besides itself); "paper" = one module per paper
ALLOWED = {
    "data": set(),
    "grading": set(),
    "course": set(),
    "core": {"data"},
    "diffusion": {"core", "data"},
    "paper": {"core", "data", "diffusion", "neural_collapse"},
    "zoo": {"core", "data", "diffusion", "paper", "neural_collapse"},
    "bench": {"core", "data", "diffusion", "paper", "neural_collapse", "zoo"},
}
PACKAGES = {"data", "grading", "core", "diffusion", "zoo", "bench", "course", "neural_collapse"}


def _part(module: str) -> str:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return name if name in PACKAGES else "paper"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported layerwise module, names) for every import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "layerwise":      # from layerwise import msd
            out += [(f"layerwise.{a.name}", []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("layerwise"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("layerwise")]
    return out


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "lib").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_library_layers_import_only_downwards():
    """data is the ground floor; core builds on it; diffusion on both; each paper module on those;
    the zoo's recipes on the paper modules; nothing below imports what stands above it."""
    wrong = []
    for path in sorted(LIB.rglob("*.py")):
        me = _module_name(path)
        mine = _part(me)
        allowed = ALLOWED.get(mine, ALLOWED["paper"]) | {mine}
        for imported, _ in _imports(path):
            theirs = _part(imported)
            if mine == "paper" and theirs == "paper" and imported != me:
                wrong.append(f"{me} imports {imported} (a paper module may not import another paper module)")
            elif theirs not in allowed and imported != "layerwise":
                wrong.append(f"{me} ({mine}) imports {imported} ({theirs})")
    assert not wrong, "imports against the layering of ARCHITECTURE.md:\n  " + "\n  ".join(wrong)


def test_no_module_imports_another_modules_private_names():
    wrong = []
    for path in sorted(LIB.rglob("*.py")):
        me = _module_name(path)
        for imported, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and imported != me:
                wrong.append(f"{me} imports {private} from {imported}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("notebook", CHAPTERS + [ROOT / "solutions" / n / f"{n}.ipynb" for n in ASSIGNMENTS],
                         ids=[c.stem for c in CHAPTERS] + [f"solution-{n}" for n in ASSIGNMENTS])
def test_notebooks_use_the_zoo_only_through_its_functions(notebook: Path):
    """A chapter imports from its paper module and layerwise.data; of the zoo only load/train/manifest."""
    code = "\n".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code")
    bad = re.findall(r"layerwise\.zoo\.(?:recipes|registry)\b|_recipes\b|from layerwise\.zoo import (?!load\b|train\b|manifest\b)\w+",
                     code)
    assert not bad, f"{notebook.name} reaches into the zoo's recipes ({bad}): use zoo.load / zoo.train / zoo.manifest"


def test_architecture_page_exists_and_names_every_part():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert "ARCHITECTURE.md" in (ROOT / "README.md").read_text()
    for part in ("data", "core", "diffusion", "zoo", "grading", "bench", "course"):
        assert f"`{part}" in text, f"ARCHITECTURE.md does not describe {part}"
    for rule in ALLOWED:
        assert rule in text
