"""Unit tests of layerwise.grading (the nbgrader round trips are in test_assignments.py)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from layerwise import grading, msd
from layerwise.grading import CallsReferenceError, Case, StudentTimeoutError, check_function

REF = "layerwise.msd.msd_loss"
ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(AssertionError, match="raised ZeroDivisionError") as info:
        check_function(lambda lg, y: 1 / 0, REF, _cases())
    # after the student's call, the message says what the reference returns for that case
    assert "expected: float32 tensor of shape ()" in str(info.value), str(info.value)


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


# --------------------------------------------------------------------------- the guard (issue 13)
#
# Each route below is a few lines a student finds in minutes; each would have scored full marks
# against a grader that computed the expected value before calling the student and only watched
# the call with a profiler. Code in this test file counts as the submission's (it lives outside the
# Python installation and the library), as a notebook cell does under nbgrader.

import gc  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import pickle  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402

from layerwise.grading import TamperingError, guard  # noqa: E402


def _find(f, name="expected"):
    while f is not None:
        if name in f.f_locals:
            return f.f_locals[name]
        f = f.f_back
    return None


def route_getframe(logits, y):
    return _find(sys._getframe()) or msd.msd_loss(logits, y)


def route_inspect_stack(logits, y):
    for info in inspect.stack():
        if "expected" in info.frame.f_locals:
            return info.frame.f_locals["expected"]
    return msd.msd_loss(logits, y)


def route_inspect_currentframe(logits, y):
    return _find(inspect.currentframe()) or msd.msd_loss(logits, y)


def route_traceback(logits, y):
    try:
        raise KeyError
    except KeyError as e:
        return _find(e.__traceback__.tb_frame) or msd.msd_loss(logits, y)


def route_current_frames(logits, y):
    return _find(sys._current_frames()[threading.get_ident()]) or msd.msd_loss(logits, y)


def route_generator_frame(logits, y):
    def g():
        yield me.gi_frame.f_back
    me = g()
    return _find(next(me)) or msd.msd_loss(logits, y)


def route_pause_in_try_finally(logits, y):
    watch = sys.getprofile()
    sys.setprofile(None)
    try:
        return msd.msd_loss(logits, y)
    finally:
        sys.setprofile(watch)


def route_replace_the_profiler(logits, y):
    watch = sys.getprofile()
    sys.setprofile(lambda frame, event, arg: None)
    try:
        return msd.msd_loss(logits, y)
    finally:
        sys.setprofile(watch)


def route_settrace(logits, y):
    seen = {}

    def tracer(frame, event, arg):
        if "expected" in frame.f_locals:
            seen["v"] = frame.f_locals["expected"]
    sys.settrace(tracer)
    try:
        return msd.msd_loss(logits, y)
    finally:
        sys.settrace(None)


def route_thread_without_profile_hook(logits, y):
    threading.setprofile(None)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", msd.msd_loss(logits, y)))
    t.start()
    t.join()
    return out["v"]


def route_timer(logits, y):
    out = {}
    t = threading.Timer(0.0, lambda: out.setdefault("v", msd.msd_loss(logits, y)))
    t.start()
    t.join()
    return out["v"]


def route_thread_pool(logits, y):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(msd.msd_loss, logits, y).result()


def _raw_thread(start, logits, y):
    import _thread
    out, done = {}, _thread.allocate_lock()
    done.acquire()

    def run():
        try:
            out["v"] = msd.msd_loss(logits, y)
        finally:
            done.release()
    start(run)
    done.acquire(timeout=5)
    return out["v"]


def route_raw_thread(logits, y):
    import _thread
    return _raw_thread(lambda run: _thread.start_new_thread(run, ()), logits, y)


def route_raw_thread_started_from_c(logits, y):
    import _thread
    return _raw_thread(lambda run: list(map(_thread.start_new_thread, [run], [()])), logits, y)


def route_thread_left_running(logits, y):
    import time
    threading.Thread(target=time.sleep, args=(0.6,)).start()
    return student_ok(logits, y)


def route_gc_referrers(logits, y):
    for holder in gc.get_referrers(logits):
        if isinstance(holder, dict) and "expected" in holder:
            return holder["expected"]
    return msd.msd_loss(logits, y)


def route_gc_objects(logits, y):
    for o in gc.get_objects():
        if isinstance(o, list) and o and o[0] == "msd_loss":   # the old grader's list of reference calls
            o.clear()
    return msd.msd_loss(logits, y)


def route_ctypes_profile(logits, y):
    import ctypes
    ctypes.pythonapi.PyEval_SetProfile(None, None)
    return msd.msd_loss(logits, y)


def route_closure_of_the_profiler(logits, y):
    for cell in getattr(sys.getprofile(), "__closure__", None) or ():
        if isinstance(cell.cell_contents, (list, set, dict)):
            cell.cell_contents.clear()
    return msd.msd_loss(logits, y)


def route_signal_handler_frame(logits, y):
    out = {}

    def handler(signum, frame):
        ref = _find(frame, "ref_fn")          # the grader's own copy of the reference
        out["v"] = ref(logits, y) if ref is not None else None
    before = signal.signal(signal.SIGUSR1, handler)
    try:
        signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, before)
    return out["v"] if out.get("v") is not None else student_ok(logits, y)


def route_signal_handler_left(logits, y):
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    return student_ok(logits, y)


def route_pickle(logits, y):
    return pickle.loads(pickle.dumps(msd.msd_loss))(logits, y)


def route_exec_source_in_the_call(logits, y):
    ns = {}
    exec(compile(inspect.getsource(msd), "<my own module>", "exec"), ns)
    return ns["msd_loss"](logits, y)


_COPY = {}
exec(compile(inspect.getsource(msd), "<a copy compiled before the check>", "exec"), _COPY)  # noqa: S102


def route_exec_source_before(logits, y):
    return _COPY["msd_loss"](logits, y)


def route_importlib_util_copy(logits, y):
    spec = importlib.util.spec_from_file_location("my_private_copy", msd.__file__)
    mine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mine)
    return mine.msd_loss(logits, y)


def route_copy_the_code(logits, y):
    ref = msd.msd_loss
    return types.FunctionType(ref.__code__, ref.__globals__, "mine", ref.__defaults__)(logits, y)


def route_code_replace(logits, y):
    code = msd.msd_loss.__code__.replace(co_filename="/tmp/mine.py")
    return types.FunctionType(code, vars(msd))(logits, y)


def route_patch_the_grader(logits, y):
    import layerwise.grading.check as grader
    grader._compare = lambda *a, **k: None      # every output now "matches"
    return torch.zeros(())


def route_patch_torch(logits, y):
    torch.allclose = lambda *a, **k: True
    return torch.zeros(())


def route_patch_deepcopy(logits, y):
    import copy
    copy.deepcopy = lambda x, memo=None: x
    return student_ok(logits, y)


def route_mutate_the_reference_inputs(logits, y):
    kept = _find(sys._getframe(), "ref_args")
    if kept:
        kept[0].zero_()
    return student_ok(logits, y)


def route_gc_callback(logits, y):
    def late(phase, info):                        # would run whenever the grader's code collects garbage
        pass
    gc.callbacks.append(late)
    return student_ok(logits, y)


def route_excepthook(logits, y):
    sys.excepthook = lambda *a: None              # would run on the grader's next uncaught error
    return student_ok(logits, y)


def route_grader_from_inside(logits, y):
    check_function(lambda *a: 1, lambda *a: 1, [Case("a", 1)])
    return msd.msd_loss(logits, y)


def route_forged_control_events(logits, y):
    guard.end_check()                             # the control functions only answer the grader's own frames
    sys.audit("layerwise.grading.ctl", "end_call", [])
    return msd.msd_loss(logits, y)


ROUTES = [
    (route_getframe, "sys._getframe"), (route_inspect_stack, "via inspect.py"),
    (route_inspect_currentframe, "via inspect.py"), (route_traceback, "tb_frame"),
    (route_current_frames, "sys._current_frames"), (route_generator_frame, "gi_frame"),
    (route_pause_in_try_finally, "calls the reference implementation"),
    (route_replace_the_profiler, "calls the reference implementation"),
    (route_settrace, "sys.settrace"),
    (route_thread_without_profile_hook, "calls the reference implementation"),
    (route_timer, "calls the reference implementation"), (route_thread_pool, "calls the reference implementation"),
    (route_raw_thread, "calls the reference implementation"),
    (route_raw_thread_started_from_c, "calls the reference implementation"),
    (route_thread_left_running, "still running when the function returned"),
    (route_gc_referrers, "gc.get_referrers"), (route_gc_objects, "gc.get_objects"),
    (route_ctypes_profile, "ctypes"), (route_closure_of_the_profiler, "calls the reference implementation"),
    (route_signal_handler_frame, "calls the reference implementation"),
    (route_signal_handler_left, "signal handler"), (route_pickle, "pickle.find_class"),
    (route_exec_source_in_the_call, "read the library's source|compiled code at run time"),
    (route_exec_source_before, "a copy of the reference's code"),
    (route_importlib_util_copy, "calls the reference implementation"),
    (route_copy_the_code, "read the code object of msd_loss"), (route_code_replace, "built a code object|read the code object"),
    (route_patch_the_grader, "changed the grader's own functions: _compare"),
    (route_patch_torch, "torch.allclose"), (route_patch_deepcopy, "copy.deepcopy"),
    (route_mutate_the_reference_inputs, "sys._getframe"), (route_gc_callback, "registered a gc callback"),
    (route_excepthook, "registered sys.excepthook"),
    (route_grader_from_inside, "called the grader from inside"),
    (route_forged_control_events, "calls the reference implementation"),
]


@pytest.fixture
def restore():
    """Undo what a route changed for good (the hook itself stays, as it does in a kernel)."""
    import copy

    import layerwise.grading.check as grader
    saved = [(torch, "allclose", torch.allclose), (copy, "deepcopy", copy.deepcopy), (grader, "_compare", grader._compare),
             (sys, "excepthook", sys.excepthook)]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    callbacks = list(gc.callbacks)

    def undo():
        for obj, name, value in saved:
            setattr(obj, name, value)
        for s, h in handlers.items():
            signal.signal(s, h)
        gc.callbacks[:] = callbacks
        threading.setprofile(None)
        for t in threading.enumerate():
            if t is not threading.current_thread() and t.name.startswith("Thread-"):
                t.join(timeout=2)
    yield undo
    undo()


@pytest.mark.parametrize("route, seen", ROUTES, ids=[r.__name__[6:] for r, _ in ROUTES])
def test_every_route_scores_zero_and_says_what_was_seen(route, seen, restore):
    with pytest.raises(CallsReferenceError) as e:
        check_function(route, REF, _cases())
    assert re.search(seen, str(e.value)), str(e.value)
    assert "scores 0" in str(e.value) and "torch" in str(e.value)
    assert sys.getprofile() is None and threading.getprofile() is None and sys.gettrace() is None
    assert msd.msd_loss.__code__.co_filename == msd.__file__          # the tripwires are gone again
    restore()
    check_function(student_ok, REF, _cases())                         # and honest answers still pass


@pytest.fixture
def refmod(tmp_path, monkeypatch):
    """A reference module of our own, in a file of its own (as a hidden test's would be)."""
    (tmp_path / "myref.py").write_text(
        "ORDER = []\n\n\ndef helper(x):\n    return x * 2\n\n\n"
        "def reference(x):\n    ORDER.append('reference')\n    return helper(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import myref
    yield importlib.reload(myref)
    sys.modules.pop("myref", None)


def test_no_expected_value_exists_while_the_student_runs(refmod):
    def student(x):
        refmod.ORDER.append("student")
        assert not any("expected" in f.f_locals for f in _frames_without_the_guard())
        return x * 2
    check_function(student, refmod.reference, [Case("a", torch.ones(3)), Case("b", torch.zeros(2))])
    assert refmod.ORDER == ["student", "reference", "student", "reference"]


def test_notebook_code_that_runs_while_the_grader_compares_is_caught(refmod):
    def student(x):                               # patches a helper the reference uses, and leaves it
        refmod.helper = lambda x: x * 0
        return x * 0
    with pytest.raises(CallsReferenceError, match=r"kept running while the grader was checking the result"):
        check_function(student, refmod.reference, [Case("a", torch.ones(3))])


def _frames_without_the_guard():
    """The calling frames, reached without an audited call (as a signal handler would get them)."""
    box = {}
    before = signal.signal(signal.SIGUSR1, lambda s, f: box.setdefault("f", f))
    signal.raise_signal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, before)
    f = box["f"]
    while f is not None:
        yield f
        f = f.f_back


def test_what_the_student_returned_is_copied_to_plain_types():
    class Liar(torch.Tensor):                      # claims to equal anything
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.allclose, torch.equal):
                return True
            return super().__torch_function__(func, types, args, kwargs or {})

    kept = []

    def lies(logits, y):
        out = student_ok(logits, y).mul(0).as_subclass(Liar)
        kept.append(out)
        return out
    with pytest.raises(AssertionError, match="values differ"):
        check_function(lies, REF, _cases())


def test_unusual_but_honest_answers_pass():
    import functools

    def helper(logits, m, y):
        return F.cross_entropy(logits[m], y)

    def by_recursion(logits, y, m=0):
        rest = by_recursion(logits, y, m + 1) * (logits.shape[0] - m - 1) if m + 1 < logits.shape[0] else 0
        return (helper(logits, m, y) + rest) / (logits.shape[0] - m)

    @functools.wraps(student_ok)
    def wrapped(*args, **kwargs):
        return student_ok(*args, **kwargs)

    @functools.lru_cache(maxsize=None)
    def reduction():
        return "mean"

    class Callable:
        def __call__(self, logits, y):
            return torch.stack(list(helper(logits, m, y) for m in range(logits.shape[0]))).mean()

    honest = {
        "one_liner": lambda lg, y: F.cross_entropy(lg.flatten(0, 1), y.repeat(lg.shape[0]), reduction=reduction()),
        "recursion": by_recursion,
        "wraps": wrapped,
        "partial": functools.partial(lambda scale, lg, y: student_ok(lg, y) * scale, 1.0),
        "class_with_call": Callable(),
        "no_grad": torch.no_grad()(student_ok),
        "inspect_signature": lambda lg, y: student_ok(lg, y) if inspect.signature(student_ok) else None,
        "another_library_module": lambda lg, y: student_ok(lg, y),
    }
    for name, fn in honest.items():
        check_function(fn, REF, _cases())
    with pytest.warns(UserWarning):
        check_function(lambda lg, y: (__import__("warnings").warn("note"), student_ok(lg, y))[1], REF, _cases())


def test_a_fake_reference_module_in_sys_modules_does_not_fool_the_check(monkeypatch):
    def wrong(logits, y):
        return F.cross_entropy(logits.mean(0), y)
    fake = types.ModuleType("layerwise.msd")
    fake.msd_loss = wrong                                   # no __file__: the check must not trust it
    monkeypatch.setitem(sys.modules, "layerwise.msd", fake)
    with pytest.raises(AssertionError, match="values differ"):
        check_function(wrong, REF, _cases())


def test_run_student_still_works():
    assert grading.run_student(student_ok, _cases()[0].args, forbidden=[msd]).shape == ()
    with pytest.raises(CallsReferenceError, match="calls the reference"):
        grading.run_student(msd.msd_loss, _cases()[0].args, forbidden=[msd])
    with pytest.raises(ZeroDivisionError):
        grading.run_student(lambda: 1 / 0, forbidden=[msd])


def test_the_guard_is_installed_once_and_survives_reloads():
    import layerwise.grading.check as grader
    saved = dict(vars(grader))
    try:
        first = guard.api()
        for _ in range(3):                        # what every hidden test cell does
            fresh = importlib.reload(grader)
            assert fresh._G["begin_check"] is first["begin_check"] is guard.begin_check
        fresh.check_function(student_ok, REF, [fresh.Case(c.name, *c.args) for c in _cases()])
        with pytest.raises(fresh.CallsReferenceError):
            fresh.check_function(msd.msd_loss, REF, [fresh.Case(c.name, *c.args) for c in _cases()])
    finally:
        vars(grader).clear()
        vars(grader).update(saved)
    assert not guard.is_armed()                   # armed only at kernel start (nbgrader_config.py)


def test_the_hook_never_runs_code_it_is_handed():
    touched = []

    class Evil(str):
        def __eq__(self, other):
            touched.append("eq")
            return True

        def __hash__(self):
            touched.append("hash")
            return 0

    class FakeFrame:
        @property
        def f_code(self):
            touched.append("f_code")
            raise AttributeError

    sys.audit(Evil("layerwise.grading.ctl"), Evil("api"), [])
    sys.audit("layerwise.grading.ctl", Evil("begin_check"), [], frozenset(), frozenset(), frozenset(), ())
    sys.audit("layerwise.grading.profile", FakeFrame(), "call", None)
    sys.audit("object.__getattr__", FakeFrame(), Evil("tb_frame"))
    sys.audit("open", Evil("/tmp/x.py"), Evil("w"), 0)
    assert touched == []


def test_writing_into_the_library_is_blocked_while_checking(tmp_path):
    import os
    probe = os.path.join(os.path.dirname(msd.__file__), "__guard_probe__.py")

    def writes(logits, y):
        with open(probe, "w") as fh:
            fh.write("x = 1\n")
        return student_ok(logits, y)
    try:
        with pytest.raises(CallsReferenceError, match="wrote to __guard_probe__.py"):
            check_function(writes, REF, _cases())
        assert not os.path.exists(probe)
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def test_feedback_and_autograde_preprocessors():
    import nbformat

    from layerwise.grading.preprocessors import ErrorsScoreZero, KeepOnlyTheMessage
    cell = nbformat.v4.new_code_cell("check(...)\n### BEGIN HIDDEN TESTS\nsecret()\n### END HIDDEN TESTS")
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "points": 2, "grade_id": "t"}
    cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1),
                    nbformat.v4.new_output("error", ename="AssertionError", evalue="f is not right yet",
                                           traceback=["\x1b[0;31m----\x1b[0m", "secret()  # hidden", "AssertionError: f is not right yet"])]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb, _ = ErrorsScoreZero().preprocess(nb, {})
    assert [o.output_type for o in nb.cells[0].outputs] == ["error"]
    from nbgrader.utils import determine_grade
    assert determine_grade(nb.cells[0])[0] == 0
    nb, _ = KeepOnlyTheMessage().preprocess(nb, {})
    assert nb.cells[0].outputs[0].traceback == ["AssertionError: f is not right yet"]


def test_an_armed_kernel_stops_a_notebook_that_tampers_and_catches_a_replaced_grader():
    """The guard as nbgrader_config.py starts it, in a real kernel: an honest test cell passes, a
    test cell whose grader was replaced fails when it ends, top-level tampering stops later cells."""
    import nbformat
    from nbclient import NotebookClient

    config = types.SimpleNamespace()
    settings: dict = {}

    class Config:
        def __getattr__(self, name):
            return settings.setdefault(name, types.SimpleNamespace())
    ns = {"get_config": Config}
    exec(compile(open(ROOT / "nbgrader_config.py").read(), "nbgrader_config.py", "exec"), ns)  # noqa: S102
    extra = ns["c"].Execute.extra_arguments
    hidden = "\n### BEGIN HIDDEN TESTS\n{}\n### END HIDDEN TESTS\n"
    test = ("import importlib, torch\ngrading = importlib.reload(importlib.import_module('layerwise.grading.check'))\n"
            "grading.check_function(f, lambda x: x * 2, [grading.Case('a', torch.ones(2))])")
    cells = [
        "import torch\ndef f(x):\n    return x * 2",
        hidden.format(test),                                                        # honest: passes
        "import types\nfake = types.SimpleNamespace(check_function=''.format, Case=''.format)",
        hidden.format("grading = fake\ngrading.check_function(f, 'x', [])"),        # replaced grader
        "import gc\ngc.get_objects()",                                              # tampering
        "x = 1",                                                                    # stopped
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, extra_arguments=extra, allow_errors=True, timeout=120, kernel_name="python3").execute()
    errors = [" ".join(o.get("evalue", "") for o in c.outputs if o.output_type == "error") for c in nb.cells]
    assert errors[0] == "" and errors[1] == "" and errors[2] == "", errors
    assert "the course's grader never ran here" in errors[3], errors[3]
    assert "blocked by the course's grader" in errors[4] and "gc.get_objects" in errors[4], errors[4]
    assert "stopped this notebook" in errors[5] and "gc.get_objects" in errors[5], errors[5]


_DYNAMO_REWRAP = """
import sys, torch, torch.nn.functional as F
from layerwise.grading import CallsReferenceError, Case, check_function
REF = "layerwise.msd.msd_loss"
cases = lambda: [Case("random", torch.randn(4, 5, 3), torch.randint(0, 3, (5,)))]
def ok(logits, y):
    return torch.stack([F.cross_entropy(logits[m], y) for m in range(logits.shape[0])]).mean()
check_function(ok, REF, cases())         # the guard is installed, its snapshot taken
import torch._dynamo                     # rebinds torch.manual_seed to a wrapper of itself
real = torch.manual_seed
torch.manual_seed = torch._disable_dynamo(real)   # and once more, explicitly
check_function(ok, REF, cases())
def replaces_it(logits, y):
    torch.manual_seed = lambda seed: real(0)
    return ok(logits, y)
try:
    check_function(replaces_it, REF, cases())
except CallsReferenceError as e:
    assert "torch.manual_seed" in str(e), e
    print("CAUGHT")
"""


def test_a_library_wrapping_a_torch_function_is_not_tampering():
    """Importing torch._dynamo (which a notebook can cause: torch.compile, some torch APIs) rebinds
    torch.manual_seed to a wrapper of itself: not a change to what the grader relies on. A
    student's own replacement of the same name still is. (A fresh process: the guard's snapshot
    is taken once per process, and this file's other tests leave changes behind.)"""
    import subprocess
    out = subprocess.run([sys.executable, "-c", _DYNAMO_REWRAP], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("CAUGHT"), out.stdout[-2000:] + out.stderr[-3000:]


_LIBRARY_FINDER = """
import sys
assert "six" not in sys.modules
import torch
import torch.nn.functional as F
from layerwise.grading import check_function, Case, CallsReferenceError
REF = "layerwise.msd.msd_loss"
def cases():
    g = torch.Generator().manual_seed(0)
    return [Case("random", torch.randn(4, 5, 3, generator=g), torch.randint(0, 3, (5,), generator=g))]
def ok(logits, y):
    return torch.stack([F.cross_entropy(logits[m], y) for m in range(logits.shape[0])]).mean()
check_function(ok, REF, cases())         # the guard is installed, its snapshot taken
import six                               # appends its own finder to sys.meta_path
check_function(ok, REF, cases())
class Finder:                            # a finder of the notebook's own
    def find_spec(self, *args):
        return None
def adds_a_finder(logits, y):
    sys.meta_path.append(Finder())
    return ok(logits, y)
try:
    check_function(adds_a_finder, REF, cases())
except CallsReferenceError as e:
    assert "sys.meta_path" in str(e), e
    print("CAUGHT")
"""


def test_a_library_adding_an_import_finder_is_not_tampering():
    """``six`` appends a finder to ``sys.meta_path`` when first imported (a test run that collects
    other test modules after the grader's start does this): not a change to what the grader relies
    on. A finder the notebook itself adds still is. (A fresh process, as above.)"""
    import subprocess
    out = subprocess.run([sys.executable, "-c", _LIBRARY_FINDER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("CAUGHT"), out.stdout[-2000:] + out.stderr[-3000:]


# ----------------------------------------------------------------------------- the per-cell limit

class _Events:
    def __init__(self):
        self.hooks = {}

    def register(self, event, fn):
        self.hooks.setdefault(event, []).append(fn)

    def fire(self, event):
        for fn in self.hooks.get(event, []):
            fn(None)


class _Shell:
    def __init__(self):
        self.events = _Events()


def test_limit_cells_stops_a_looping_cell_and_leaves_others_alone():
    import signal
    import time

    from layerwise.grading import StudentTimeoutError, limit_cells
    before = signal.getsignal(signal.SIGALRM)
    shell = _Shell()
    try:
        assert limit_cells(0.3, shell=shell)
        shell.events.fire("pre_run_cell")           # a cell that loops forever is stopped
        t0 = time.monotonic()
        with pytest.raises(StudentTimeoutError, match=r"stopped after 0.3 s"):
            while True:
                pass
        assert time.monotonic() - t0 < 2
        shell.events.fire("post_run_cell")
        shell.events.fire("pre_run_cell")           # a quick cell is not, and its alarm is cancelled
        shell.events.fire("post_run_cell")
        time.sleep(0.5)
        roomy = _Shell()                            # a graded call's own limit nests inside the cell's
        assert limit_cells(30.0, shell=roomy)
        roomy.events.fire("pre_run_cell")
        t0 = time.monotonic()
        with pytest.raises(AssertionError, match="did not return within 0.1 s"):
            check_function(lambda lg, y: time.sleep(5), REF, _cases(), time_limit=0.1)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < left <= 30 - (time.monotonic() - t0) + 0.05   # the cell's alarm is given back, less the time used
        roomy.events.fire("post_run_cell")
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_limit_cells_bad_input_and_no_shell():
    from layerwise.grading import limit_cells
    for bad in (0, -1, "5", None, True):
        with pytest.raises(ValueError, match="seconds"):
            limit_cells(bad, shell=_Shell())
    assert limit_cells(5.0) is False                 # no IPython shell here: nothing is installed
