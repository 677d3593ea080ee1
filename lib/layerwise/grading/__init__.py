"""Helpers for the exercises' test cells (nbgrader).

A hidden test compares the student's function with the library's reference on fresh random
inputs and edge cases::

    g = grading.fresh_generator()
    grading.check_function(msd_loss, "layerwise.msd.msd_loss", [
        grading.Case("random batch", logits, y), ...], hint="...")

For each case the student's function runs first, on its own copy of the inputs; a private copy
of its output is taken; only then is the reference's output computed and compared, so no
expected value exists while the student's code runs. During the call the guard
(:mod:`layerwise.grading.guard`, an audit hook installed once per process) records calls into the
reference module in every thread, and the introspection and tampering a determined student might
try (reading the grader's frames, pausing its watch, threads, ``gc``, ``ctypes``, patched library
functions ...). Such an item scores 0 with a message that says what was seen. A call that does
not return within ``time_limit`` seconds is stopped (so an infinite loop costs only its own item).
"""

__all__ = ["Case", "CallsReferenceError", "StudentTimeoutError", "TamperingError", "assert_close", "check_function",
           "describe", "fresh_generator", "limit_cells", "run_student"]


def __getattr__(name: str):  # noqa: ANN202
    """The names above come from :mod:`layerwise.grading.check`, imported on first use, so that
    nbgrader can load :mod:`layerwise.grading.preprocessors` without torch or the grader's hook."""
    if name in __all__:
        from layerwise.grading import check
        return getattr(check, name)
    raise AttributeError(f"module 'layerwise.grading' has no attribute {name!r}")
