"""nbgrader preprocessors that ``nbgrader_config.py`` puts in the course's pipeline.

- :class:`ErrorsScoreZero` (autograde): nbgrader's ``determine_grade`` looks at a test cell's
  outputs in order and gives partial or full credit for the first ``execute_result`` it meets,
  even when an error follows; so a submission that makes a test cell display a value before
  failing (``sys.displayhook(...)``, a replaced grader that returns something) would score.
  This course's test cells never display a value, so an error in a test cell always wins.
- :class:`KeepOnlyTheMessage` (feedback, behind the ``HIDE_HIDDEN_TESTS_IN_FEEDBACK`` switch):
  nbgrader's feedback shows each test cell's source, hidden tests included (by design, nbgrader
  issue #917), and a traceback quotes the lines around the failure, which in a test cell are the
  hidden tests. With nbgrader's own ``ClearHiddenTests`` (for the source), this keeps only each
  error's last line, ``ErrorName: message``: the grader's teaching message stays.
"""

from __future__ import annotations

import re

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _is_test_cell(cell) -> bool:  # noqa: ANN001
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


class ErrorsScoreZero(Preprocessor):
    """In test cells that raised, drop displayed values (``execute_result``) so that the error,
    not a value shown before it, decides the grade."""

    enabled = Bool(True, help="Whether an error in a test cell always scores 0").tag(config=True)

    def preprocess_cell(self, cell, resources, index):  # noqa: ANN001, ANN201
        if _is_test_cell(cell):
            outputs = cell.get("outputs", [])
            if any(o.get("output_type") == "error" for o in outputs):
                cell.outputs = [o for o in outputs if o.get("output_type") != "execute_result"]
        return cell, resources


class KeepOnlyTheMessage(Preprocessor):
    """In grade cells, replace each error's traceback by its last line, ``ErrorName: message``:
    the grader's teaching message (which input, expected vs got, the hint) stays, the quoted
    source of the hidden tests goes."""

    enabled = Bool(True, help="Whether to trim the tracebacks of grade cells in feedback").tag(config=True)

    def preprocess_cell(self, cell, resources, index):  # noqa: ANN001, ANN201
        if cell.get("cell_type") != "code" or not cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            return cell, resources
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                ename = _ANSI.sub("", str(out.get("ename", "Error")))
                evalue = _ANSI.sub("", str(out.get("evalue", "")))
                out["traceback"] = [f"{ename}: {evalue}"]
        return cell, resources
