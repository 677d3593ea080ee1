"""nbgrader configuration: run every nbgrader command from the repository root.

    nbgrader generate_assignment 01_multi_sample_dropout --force   # solutions/ -> exercises/
    nbgrader autograde 01_multi_sample_dropout                       # submitted/<student>/...
    nbgrader generate_feedback 01_multi_sample_dropout
    nbgrader export                                                  # grades.csv

See README.md, "For instructors: grading with nbgrader", for what the grader guarantees.
"""

import os

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

c.CourseDirectory.root = "."
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///gradebook.db"   # kept out of git (.gitignore)
c.CourseDirectory.course_id = "layerwise"

# Time limits. Each graded call in a hidden test is stopped after 10 s (check_function's
# time_limit), and every cell after CELL_LIMIT seconds (layerwise.grading.limit_cells, installed at
# kernel start below): a loop in a visible test or at the top level of an answer cell then costs
# that cell only, with a message that says why. The slowest cell of any solution notebook takes
# a few seconds on 2 CPU cores. nbgrader's own cell timeout is the backstop for code that switches
# the limit off; an interrupted cell scores 0 and the next cells still run.
CELL_LIMIT = float(os.environ.get("LAYERWISE_CELL_LIMIT", "60"))
c.Execute.timeout = int(2 * CELL_LIMIT)
c.Execute.interrupt_on_timeout = True
# A graded kernel is killed once its notebook has run, instead of being asked to shut down and
# waited for (about a second per submission with torch loaded; nothing of it is kept anyway).
c.Execute.shutdown_kernel = "immediate"

# The grader's watch (layerwise.grading.guard) starts with each submission's kernel, before any
# of the student's cells run ("armed"): tampering at the top level of a cell then fails every
# later item, and a test cell whose grader was replaced fails instead of passing. Without this
# line the watch still starts, but only when the first hidden test imports the grader.
c.Execute.extra_arguments = [
    "--IPKernelApp.exec_lines=['import layerwise.grading.guard as _lwg; _lwg.arm(); del _lwg', "
    f"'import layerwise.grading.check as _lwc; _lwc.limit_cells({CELL_LIMIT!r}); del _lwc']"]

# nbgrader gives credit for the first value a test cell displays, even when an error follows
# (utils.determine_grade): in this course an error in a test cell always scores 0.
from nbgrader.converters import Autograde  # noqa: E402
from nbgrader.preprocessors import SaveAutoGrades  # noqa: E402

_autograde = list(Autograde.class_traits()["autograde_preprocessors"].default())
_autograde.insert(_autograde.index(SaveAutoGrades), "layerwise.grading.preprocessors.ErrorsScoreZero")
c.Autograde.autograde_preprocessors = _autograde

# Students see a clear stub.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Feedback. nbgrader's feedback HTML shows each test cell's full source, hidden tests included
# (by design: nbgrader issue #917). For a course that lets students resubmit, switch the hidden
# tests out of the feedback: set HIDE_HIDDEN_TESTS_IN_FEEDBACK = True here (or export
# LAYERWISE_HIDE_HIDDEN_TESTS=1 before `nbgrader generate_feedback`). The feedback then keeps the
# visible tests and each failure's teaching message (which input, expected vs got, the hint), but
# neither the hidden tests' code nor the traceback lines that quote it.
HIDE_HIDDEN_TESTS_IN_FEEDBACK = os.environ.get("LAYERWISE_HIDE_HIDDEN_TESTS", "0") == "1"
if HIDE_HIDDEN_TESTS_IN_FEEDBACK:
    c.GenerateFeedback.preprocessors = [
        "nbgrader.preprocessors.GetGrades",
        "nbgrader.preprocessors.ClearHiddenTests",
        "layerwise.grading.preprocessors.KeepOnlyTheMessage",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    ]
    c.ClearHiddenTests.enforce_metadata = False   # grade cells are known from the gradebook already
