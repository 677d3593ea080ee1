"""The nbgrader round trip of every assignment in solutions/, discovered automatically.

For each assignment we generate the release in a scratch course directory, check it equals the
committed exercises/, then autograde a set of synthetic students in one nbgrader run:

- ``solution``: the solution's answers          -> full marks
- ``stubs``: the release as handed out            -> 0
- ``cheat_*``: answers that only call the reference (re-export, alias, through the module, after
  switching off the profiler, after patching the grading helpers) -> 0
- ``patch_reference``: a wrong answer that reassigns the reference to itself -> loses its points
- ``noisy``: the solution, printing junk at definition and on every call -> full marks
- ``broken``: first answer raises, second loops forever when called -> only those items lose points
- ``hang``: the last answer cell never finishes at definition -> only that item loses points
- ``alternative``: a faithful reimplementation written differently (from tests/test_<m>.py) -> full
- ``wrong_<i>``: the i-th plausible wrong answer of each function (from tests/test_<m>.py;
  a string or a list per function) -> that item loses its points, with a teaching message
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from layerwise.course import assignments, nbgrader

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = assignments(ROOT)
CELL_TIMEOUT = 20   # seconds nbgrader allows one cell in this test (the course config allows more)

CHEATS = {
    "cheat_import": "from {mod} import {fn}\n",
    "cheat_alias": "from {mod} import {fn} as _reference\n\n\ndef {fn}(*args, **kwargs):\n    return _reference(*args, **kwargs)\n",
    "cheat_module": "import {mod} as _lib\n\n\ndef {fn}(*args, **kwargs):\n    return getattr(_lib, '{fn}')(*args, **kwargs)\n",
    "cheat_unhook": ("import sys\nimport {mod} as _lib\n\n\ndef {fn}(*args, **kwargs):\n"
                     "    sys.setprofile(None)  # tries to switch off the grader's watch\n"
                     "    return getattr(_lib, '{fn}')(*args, **kwargs)\n"),
    "cheat_patch_grading": ("import layerwise.grading, layerwise.grading.check\nfrom {mod} import {fn}\n"
                            "layerwise.grading.check_function = layerwise.grading.check.check_function = "
                            "lambda *args, **kwargs: None\n"),
}
# A wrong answer that makes the reference point at itself, hoping the check compares it with itself.
PATCH_REFERENCE = "\nimport {mod} as _lib\n_lib.{fn} = {fn}\n"
# Appended to the solution: junk on stdout and stderr at definition and on every call.
NOISY = ("\nimport sys as _sys\nfor _i in range(2000):\n    print('junk output', _i)\n    print('junk', _i, file=_sys.stderr)\n"
         "_orig_{fn} = {fn}\n\n\ndef {fn}(*args, **kwargs):\n    print('junk ' * 200)\n"
         "    return _orig_{fn}(*args, **kwargs)\n")
RAISES = "def {fn}(*args, **kwargs):\n    raise RuntimeError('my code is broken')\n"
LOOPS_WHEN_CALLED = "def {fn}(*args, **kwargs):\n    while True:\n        pass\n"
HANGS_AT_DEFINITION = "while True:\n    pass\n"


def _solution_code(source: str) -> str:
    return "\n".join(line for line in source.splitlines()
                     if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))


def _grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _answers_module(reference: str):
    """tests/test_<method>.py for reference ``layerwise.<method>`` (holds ALTERNATIVE/WRONG answers)."""
    method = reference.rsplit(".", 1)[-1]
    path = ROOT / "tests" / f"test_{method}.py"
    assert path.exists(), f"{path} is missing: every paper has a test file with ALTERNATIVE_ANSWERS and WRONG_ANSWERS"
    spec = importlib.util.spec_from_file_location(f"_answers_{method}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Round:
    """Everything one assignment's round trip produced."""

    def __init__(self, name: str, tmp: Path):
        self.name, self.tmp = name, tmp
        self.source = nbformat.read(ROOT / "solutions" / name / f"{name}.ipynb", as_version=4)
        meta = self.source.metadata.get("layerwise", {})
        self.reference: str = meta.get("reference", "")
        self.graded: list[str] = list(meta.get("graded", []))
        self.points: dict[str, float] = {}
        self.scores: dict[str, dict[str, float]] = {}
        self.seconds = 0.0
        self.outputs: dict[str, dict[str, str]] = {}


def _build_submission(release, answers: dict[str, str]):
    nb = copy.deepcopy(release)
    for cell in nb.cells:
        gid = _grade_id(cell)
        if gid in answers:
            cell.source = answers[gid]
    return nb


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def graded(request, tmp_path_factory) -> Round:
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    r = Round(name, tmp)
    assert r.reference and r.graded, (
        f"{name}: notebook metadata must carry 'layerwise': {{'reference': 'layerwise.<method>', 'graded': [...]}}")
    shutil.copy2(ROOT / "nbgrader_config.py", tmp / "nbgrader_config.py")
    shutil.copytree(ROOT / "solutions" / name, tmp / "solutions" / name)
    nbgrader(["generate_assignment", name, "--force"], cwd=tmp)
    release = nbformat.read(tmp / "exercises" / name / f"{name}.ipynb", as_version=4)

    solution_cells = {_grade_id(c): c for c in r.source.cells if _grade_id(c)}
    for fn in r.graded:
        assert fn in solution_cells and solution_cells[fn]["metadata"]["nbgrader"].get("solution"), (
            f"{name}: graded function {fn!r} needs an answer cell with grade_id {fn!r}")
        test = solution_cells.get(f"test_{fn}")
        assert test is not None and test["metadata"]["nbgrader"].get("grade"), (
            f"{name}: graded function {fn!r} needs a test cell with grade_id 'test_{fn}'")
        r.points[fn] = float(test["metadata"]["nbgrader"]["points"])
        assert r.points[fn] > 0, f"{name}: test_{fn} must carry points > 0"
        assert f"def {fn}(" in solution_cells[fn].source, f"{name}: the answer cell {fn!r} must define {fn}()"

    sol = {fn: _solution_code(solution_cells[fn].source) for fn in r.graded}
    answers = _answers_module(r.reference)
    alt = answers.ALTERNATIVE_ANSWERS
    wrong = {fn: [w] if isinstance(w, str) else list(w) for fn, w in answers.WRONG_ANSWERS.items()}
    assert set(alt) == set(r.graded) and set(wrong) == set(r.graded), (
        f"tests/test_*.py for {r.reference} must give ALTERNATIVE_ANSWERS and WRONG_ANSWERS for each of {r.graded}")
    fmt = lambda t, fn: t.format(mod=r.reference, fn=fn)  # noqa: E731
    students = {
        "solution": sol,
        "stubs": {},
        **{k: {fn: fmt(t, fn) for fn in r.graded} for k, t in CHEATS.items()},
        "alternative": dict(alt),
        "noisy": {fn: sol[fn] + fmt(NOISY, fn) for fn in r.graded},
        "patch_reference": {fn: wrong[fn][-1] + fmt(PATCH_REFERENCE, fn) for fn in r.graded},
        **{f"wrong_{i}": {**sol, **{fn: ws[i] for fn, ws in wrong.items() if i < len(ws)}}
           for i in range(max(len(ws) for ws in wrong.values()))},
        "hang": {**sol, r.graded[-1]: HANGS_AT_DEFINITION},
    }
    if len(r.graded) >= 2:
        students["broken"] = {**sol, r.graded[0]: fmt(RAISES, r.graded[0]), r.graded[1]: fmt(LOOPS_WHEN_CALLED, r.graded[1])}
    for student, ans in students.items():
        d = tmp / "submitted" / student / name
        d.mkdir(parents=True)
        nbformat.write(_build_submission(release, ans), d / f"{name}.ipynb")

    t0 = time.perf_counter()
    nbgrader(["autograde", name, "--force", f"--Execute.timeout={CELL_TIMEOUT}"], cwd=tmp)
    r.seconds = time.perf_counter() - t0

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{tmp / 'gradebook.db'}") as gb:
        for student in students:
            sub = gb.find_submission_notebook(name, name, student)
            r.scores[student] = {g.name: g.score for g in sub.grades}
    for student in students:
        nb = nbformat.read(tmp / "autograded" / student / name / f"{name}.ipynb", as_version=4)
        r.outputs[student] = {
            _grade_id(c): "\n".join(o.get("evalue", "") + "".join(o.get("traceback", [])) for o in c.get("outputs", [])
                                    if o.get("output_type") == "error")
            for c in nb.cells if _grade_id(c)}
    r.release, r.students = release, students
    return r


def _item(r: Round, student: str, fn: str) -> float:
    return r.scores[student][f"test_{fn}"]


def _total(r: Round, student: str) -> float:
    return sum(r.scores[student].values())


def test_release_matches_generate_assignment(graded: Round):
    committed = ROOT / "exercises" / graded.name
    generated = graded.tmp / "exercises" / graded.name
    assert committed.is_dir(), f"exercises/{graded.name} is missing: run `make exercises`"
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(committed) == files(generated), "exercises/ holds other files than generate_assignment makes"
    for rel in files(generated):
        a, b = (committed / rel).read_bytes(), (generated / rel).read_bytes()
        assert a == b, f"exercises/{graded.name}/{rel} is out of date with solutions/: run `make exercises`"


def test_release_has_stubs_and_no_solutions(graded: Round):
    text = json.dumps(graded.release)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    for fn in graded.graded:
        cell = next(c for c in graded.release.cells if _grade_id(c) == fn)
        assert "raise NotImplementedError()" in cell.source, f"the released {fn} must be a stub"


def test_solution_scores_full(graded: Round):
    for fn in graded.graded:
        assert _item(graded, "solution", fn) == graded.points[fn], (
            f"solution lost points on {fn}:\n{graded.outputs['solution'].get('test_' + fn)}")


def test_stubs_score_zero(graded: Round):
    assert _total(graded, "stubs") == 0, graded.scores["stubs"]


@pytest.mark.parametrize("student", sorted(CHEATS))
def test_calling_the_reference_scores_zero(graded: Round, student: str):
    assert _total(graded, student) == 0, f"{student} scored {graded.scores[student]}"
    for fn in graded.graded:
        assert "calls the reference implementation" in graded.outputs[student][f"test_{fn}"], (
            f"{student}/{fn}: the failure should say the answer calls the reference")


def test_redirecting_the_reference_to_a_wrong_answer_does_not_pass(graded: Round):
    for fn in graded.graded:
        assert _item(graded, "patch_reference", fn) < graded.points[fn], (
            f"a wrong {fn} passed after reassigning {graded.reference}.{fn} to itself")


def test_printing_junk_does_not_cost_points(graded: Round):
    assert _total(graded, "noisy") == sum(graded.points.values()), graded.scores["noisy"]


def test_faithful_alternative_scores_full(graded: Round):
    for fn in graded.graded:
        assert _item(graded, "alternative", fn) == graded.points[fn], (
            f"a faithful reimplementation of {fn} lost points:\n{graded.outputs['alternative'].get('test_' + fn)}")


def test_wrong_answers_lose_their_points_with_a_teaching_message(graded: Round):
    wrong = _answers_module(graded.reference).WRONG_ANSWERS
    for fn in graded.graded:
        variants = [wrong[fn]] if isinstance(wrong[fn], str) else wrong[fn]
        for i in range(len(variants)):
            student = f"wrong_{i}"
            assert _item(graded, student, fn) < graded.points[fn], f"wrong answer #{i} for {fn} scored full"
            msg = graded.outputs[student][f"test_{fn}"]
            assert fn in msg and re.search(r"expected|differ|NaN", msg), f"unhelpful failure message for {fn}:\n{msg}"


def test_broken_answers_cost_only_their_own_points(graded: Round):
    if "broken" not in graded.students:
        pytest.skip("needs two graded functions")
    first, second = graded.graded[:2]
    assert _item(graded, "broken", first) == 0 and _item(graded, "broken", second) == 0
    for fn in graded.graded[2:]:
        assert _item(graded, "broken", fn) == graded.points[fn]
    for fn in graded.graded[:-1]:
        assert _item(graded, "hang", fn) == graded.points[fn], f"a hanging cell elsewhere cost {fn} its points"
    assert _item(graded, "hang", graded.graded[-1]) == 0
    # bounded time: every student ran, the two endless loops each cut off by the cell time limit
    budget = CELL_TIMEOUT * 2 + 30 * len(graded.students)
    assert graded.seconds < budget, f"autograding took {graded.seconds:.0f} s (budget {budget} s)"


def test_instructor_feedback_and_export(graded: Round):
    nbgrader(["generate_feedback", graded.name, "--force"], cwd=graded.tmp)
    fb = graded.tmp / "feedback" / "solution" / graded.name / f"{graded.name}.html"
    assert fb.exists() and "Score" in fb.read_text()
    nbgrader(["export", "--to", "grades.csv"], cwd=graded.tmp)
    rows = (graded.tmp / "grades.csv").read_text().splitlines()
    assert len(rows) == 1 + len(graded.students)
