"""Every chapter in book/ executes in the fast profile, its verdicts equal the pinned ones
(tests/verdicts.json), and the whole book builds with -W (with its results dashboard).

Chapters are discovered from book/ (see layerwise.course), so a new chapter needs nothing here but
its pinned verdicts: `python -m layerwise.course verdicts --from <executed book> --write`, reviewed.
Under pytest-xdist the chapters run on both workers into one shared staging folder (a file
lock per chapter makes each run exactly once); the book build (``built_book``, once per run) waits
for, or runs, any chapter not executed yet, writes the dashboard and builds from that folder; the
tests that read the built book (tests/test_browser.py, tests/test_book.py) reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from filelock import FileLock

from layerwise.course import (chapters, execute_chapter, pinned_verdicts, stage_book, verdict_changes,
                              write_dashboard)

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = chapters(ROOT)
PINNED = pinned_verdicts(ROOT)
CELL_TIMEOUT = 300   # seconds per cell: a fast-profile cell takes well under a minute; a hung kernel fails here
# The tests that read the built book wait for every chapter to be executed first (by whichever worker
# gets there), which takes longer than pytest-timeout's default for one test with eighteen chapters.
BOOK_TIMEOUT = 3600


@pytest.fixture(scope="session")
def staged(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base   # the run's folder under xdist
    out = shared / "book" / "src"
    (shared / "book").mkdir(parents=True, exist_ok=True)
    with FileLock(str(shared / "book" / "stage.lock")):
        if not (shared / "book" / "staged").exists():
            stage_book(ROOT, out)
            (shared / "book" / "staged").touch()
    return out


def _execute(chapter: Path, staged: Path) -> tuple[Path, float]:
    """Execute ``chapter`` into the staged book once per test run; returns (executed copy, seconds)."""
    dest = staged / chapter.relative_to(ROOT)
    marks = staged.parent / "marks"
    marks.mkdir(exist_ok=True)
    done = marks / f"{chapter.stem}.seconds"
    with FileLock(str(marks / f"{chapter.stem}.lock")):
        if not done.exists():
            done.write_text(str(execute_chapter(chapter, dest, profile="fast", timeout=CELL_TIMEOUT)))
    return dest, float(done.read_text())


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_chapters_are_discovered():
    assert CHAPTERS, "no chapters found under book/"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_executes_in_fast_profile(chapter: Path, staged: Path):
    dest, seconds = _execute(chapter, staged)
    print(f"{chapter.name}: {seconds:.1f} s in the fast profile")
    nb = nbformat.read(dest, as_version=4)
    outs = _outputs(nb)
    assert not [o for o in outs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outs), f"{chapter.name} produced no figure"
    results = dest.parent / f"{chapter.stem}.results.json"
    assert results.exists(), f"{chapter.name} did not save its paper-vs-ours table (core.paper_table)"
    table = json.loads(results.read_text())
    assert table["profile"] == "fast" and table["rows"], table
    assert all(r["reproduced"] in ("yes", "no", "partly", "n/a") for r in table["rows"])
    assert chapter.stem in PINNED, (
        f"{chapter.name}'s verdicts are not pinned in tests/verdicts.json: execute the book in the fast profile and "
        "run `python -m layerwise.course verdicts --from <that folder> --write`, then review the diff")
    changes = verdict_changes(PINNED[chapter.stem]["rows"], table["rows"])
    assert not changes, (f"{chapter.name}: the fast profile's verdicts differ from tests/verdicts.json "
                         "(a deliberate change? re-pin with `python -m layerwise.course verdicts --write`):\n  "
                         + "\n  ".join(changes))
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "remove-cell" in injected[0].metadata["tags"], "papermill's parameters cell must be hidden"


@pytest.fixture(scope="session")
def built_book(staged: Path) -> dict:
    """The HTML book built from the staged chapters, once per test run (a file lock and a marker, so
    the tests of other modules that read it reuse it): ``{"returncode", "log", "html", "seconds",
    "dashboard_seconds"}``. Executes any chapter not executed yet and writes the dashboard first."""
    marker = staged.parent / "built.json"
    with FileLock(str(staged.parent / "build.lock")):
        if not marker.exists():
            for chapter in CHAPTERS:
                _execute(chapter, staged)
            t0 = time.perf_counter()
            write_dashboard(staged)
            t1 = time.perf_counter()
            out = staged.parent / "built"
            jb = Path(sys.executable).parent / "jupyter-book"
            proc = subprocess.run([str(jb), "build", str(staged), "--path-output", str(out), "-W", "-n", "--keep-going"],
                                  capture_output=True, text=True)
            marker.write_text(json.dumps({
                "returncode": proc.returncode, "log": f"{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}",
                "html": str(out / "_build" / "html"), "seconds": time.perf_counter() - t1,
                "dashboard_seconds": t1 - t0}))
    return json.loads(marker.read_text())


@pytest.mark.timeout(BOOK_TIMEOUT)
def test_book_builds_without_warnings(built_book: dict):
    assert built_book["returncode"] == 0, f"jupyter-book build failed:\n{built_book['log']}"
    print(f"book built in {built_book['seconds']:.1f} s (dashboard written in {built_book['dashboard_seconds']:.2f} s)")
    html = Path(built_book["html"])
    assert (html / "index.html").exists()
    assert (html / "book" / "results.html").exists(), "the results dashboard is not in the built book"
    for chapter in CHAPTERS:
        page = html / chapter.relative_to(ROOT).with_suffix(".html")
        assert page.exists(), f"{chapter.name} is not in the built book (is its part in _toc.yml?)"
        text = page.read_text()
        assert "<img" in text, f"{page.name} shows no figure"
        assert "layerwise-results" in text, f"{page.name} shows no paper-vs-ours table"
        assert "colab.research.google.com" in text, f"{page.name} has no Colab launch button"
        assert 'PROFILE = "fast"' not in text, "papermill's injected parameters are visible in the book"
