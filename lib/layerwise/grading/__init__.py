"""Helpers for the exercises' test cells (nbgrader).

A hidden test compares the student's function with the library's reference on fresh random
inputs and edge cases::

    g = grading.fresh_generator()
    grading.check_function(msd_loss, "layerwise.msd.msd_loss", [
        grading.Case("random batch", logits, y), ...], hint="...")

While the student's function runs, any call into the reference module fails the item (so a
submission that only wraps, aliases or imports the reference scores 0), and a call that does not
return within ``time_limit`` seconds is stopped (so an infinite loop costs only its own item).
Reference outputs are computed outside that window.
"""

from layerwise.grading.check import (
    Case,
    CallsReferenceError,
    StudentTimeoutError,
    assert_close,
    check_function,
    describe,
    fresh_generator,
    run_student,
)

__all__ = ["Case", "CallsReferenceError", "StudentTimeoutError", "assert_close", "check_function",
           "describe", "fresh_generator", "run_student"]
