"""Unit tests of layerwise.grading (the nbgrader round trips are in test_assignments.py)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from layerwise import grading, msd
from layerwise.grading import CallsReferenceError, Case, StudentTimeoutError, check_function

REF = "layerwise.msd.msd_loss"


def _cases():
    g = torch.Generator().manual_seed(0)
    return [Case("random", torch.randn(4, 5, 3, generator=g), torch.randint(0, 3, (5,), generator=g)),
            Case("float64", torch.randn(2, 1, 3, generator=g, dtype=torch.float64), torch.tensor([1]))]


def student_ok(logits, y):
    return torch.stack([F.cross_entropy(logits[m], y) for m in range(logits.shape[0])]).mean()


def test_correct_answer_passes():
    check_function(student_ok, REF, _cases())


@pytest.mark.parametrize("cheat", [
    msd.msd_loss,                                            # imported directly
    lambda logits, y: msd.msd_loss(logits, y),               # wrapped, through the module
    lambda logits, y: getattr(__import__("layerwise.msd").msd, "msd_loss")(logits, y),
])
def test_calling_the_reference_fails(cheat):
    with pytest.raises(CallsReferenceError, match="calls the reference"):
        check_function(cheat, REF, _cases())


def test_switching_off_the_watch_or_using_a_thread_is_caught():
    import sys
    import threading

    def unhooks(logits, y):
        sys.setprofile(None)
        return student_ok(logits, y)

    def threaded(logits, y):
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("v", msd.msd_loss(logits, y)))
        t.start()
        t.join()
        return out["v"]
    for cheat in (unhooks, threaded):
        with pytest.raises(CallsReferenceError):
            check_function(cheat, REF, _cases())
    assert sys.getprofile() is None and threading.getprofile() is None


def test_calling_another_layerwise_module_is_allowed():
    from layerwise.core import train  # noqa: F401  (importing and using other modules is fine)

    def uses_core(logits, y):
        from layerwise.core.train import accuracy
        accuracy(logits, y)
        return student_ok(logits, y)
    check_function(uses_core, REF, _cases())


def test_infinite_loop_is_stopped_within_the_limit():
    def loops(logits, y):
        while True:
            pass
    t0 = time.perf_counter()
    with pytest.raises(StudentTimeoutError, match="did not return within"):
        check_function(loops, REF, _cases(), time_limit=0.5)
    assert time.perf_counter() - t0 < 5


def test_messages_teach():
    with pytest.raises(AssertionError, match=r"expected shape \(\), got \(4,\)") as e:
        check_function(lambda lg, y: torch.stack([F.cross_entropy(lg[m], y) for m in range(4)]), REF, _cases()[:1],
                       hint="average over samples")
    assert "msd_loss is not right yet on the case 'random'" in str(e.value) and "hint: average over samples" in str(e.value)
    assert "logits: float32 tensor of shape (4, 5, 3)" in str(e.value)
    with pytest.raises(AssertionError, match="expected dtype torch.float64"):
        check_function(lambda lg, y: student_ok(lg.float(), y), REF, _cases())
    with pytest.raises(AssertionError, match="values differ"):
        check_function(lambda lg, y: F.cross_entropy(lg.mean(0), y), REF, _cases())
    with pytest.raises(AssertionError, match="NaN or inf"):
        check_function(lambda lg, y: student_ok(lg, y) * float("inf"), REF, _cases())
    with pytest.raises(AssertionError, match="expected a torch.Tensor"):
        check_function(lambda lg, y: student_ok(lg, y).item(), REF, _cases())


def test_stub_and_exceptions_are_reported():
    def stub(logits, y):
        raise NotImplementedError()
    with pytest.raises(AssertionError, match="not implemented yet"):
        check_function(stub, REF, _cases())
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        check_function(lambda lg, y: 1 / 0, REF, _cases())


def test_inputs_are_isolated_from_the_student():
    def mutates(logits, y):
        out = student_ok(logits, y)
        logits.zero_()
        return out
    cases = _cases()
    before = cases[0].args[0].clone()
    check_function(mutates, REF, cases)
    assert torch.equal(cases[0].args[0], before)


def test_bad_use_of_check_function():
    with pytest.raises(ValueError, match="reference"):
        check_function(student_ok, "msd_loss", _cases())
    with pytest.raises(ValueError, match="no function"):
        check_function(student_ok, "layerwise.msd.nope", _cases())
    with pytest.raises(ValueError, match="cases"):
        check_function(student_ok, REF, [])
    with pytest.raises(AssertionError, match="expected a function"):
        check_function(None, REF, _cases())


def test_assert_close_and_describe():
    grading.assert_close((torch.ones(2), 3.0), (torch.ones(2), 3.0))
    with pytest.raises(AssertionError, match=r"output\[1\]"):
        grading.assert_close((torch.ones(2), 3.0), (torch.ones(2), 4.0))
    assert grading.describe(torch.zeros(2, 3, dtype=torch.float64)) == "float64 tensor of shape (2, 3)"
    assert grading.fresh_generator().initial_seed() != grading.fresh_generator().initial_seed()


def test_reassigning_the_reference_does_not_fool_the_check(monkeypatch):
    def wrong(logits, y):
        return F.cross_entropy(logits.mean(0), y)
    monkeypatch.setattr(msd, "msd_loss", wrong)          # what an answer cell could do
    with pytest.raises(AssertionError, match="values differ"):
        check_function(wrong, REF, _cases())
