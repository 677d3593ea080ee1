"""The nbgrader round trip of every assignment in solutions/, discovered automatically.

For each assignment we generate the release in a scratch course directory, check it equals the
committed exercises/, then autograde a set of synthetic students in one nbgrader run, with the
course's own ``nbgrader_config.py`` (so with the grader's guard armed at kernel start):

- ``solution``: the solution's answers          -> full marks
- ``stubs``: the release as handed out            -> 0
- ``cheats_<i>``: answers that only call the reference (``CHEATS``: re-export, alias, through the
  module, after switching off the profiler, after patching the grading helpers), one route per
  graded cell, so that one kernel tries several routes; a route whose effect reaches later cells
  (``LATER_CELLS``) sits in the last graded cell, one such route a submission -> 0 on each route's
  item, with the reference named; ``cheat_calls``: every route of ``CALL_ROUTES`` below inside each graded call, the three
  of issue 13 among them (walking the grader's frames, pausing the profiler, a thread with
  threading's profile hook cleared); ``cheat_top``: ``TOP_ROUTES`` and ``LOUD_ROUTES`` at the top
  level of the first answer cell; ``cheat_fake_grader``: a grader replaced behind the hidden tests'
  back) -> 0 on every item, with a message that says what was seen
- ``wrong_<i>``: the i-th plausible wrong answer of each function (from tests/test_<m>.py;
  a string or a list per function) -> that item loses its points, with a teaching message;
  ``wrong_0`` also reassigns the reference to itself (it must still lose its points)
- ``broken``: the first answer raises when called and its cell never finishes at definition, the
  second loops forever when called -> only those items lose points, the third still scores full
  (with fewer than three graded functions: ``broken`` without the hang, and ``hang``, whose last
  answer cell never finishes at definition)
- ``alternative``: a faithful reimplementation written differently (from tests/test_<m>.py), reached
  in legitimately unusual ways (defined as a helper in the first answer cell, then through
  functools.wraps / lru_cache / partial, recursion, a generator, a class with ``__call__``),
  printing junk at definition and on every call -> full marks (one kernel for both properties)

Every cheat is functional: against a grader without the guard (this course's grader before it had
one) each would score full marks. Routes that run inside the graded call share one student: each
route is a helper named after it and the guard reports where it saw each event, so every item's
message names every route it caught. Routes that stop every later cell share another, and so
does each item's message.
"""

from __future__ import annotations

import copy
import html
import importlib.util
import json
import os
import re
import shutil
import time
from unittest import mock
from pathlib import Path

import nbformat
import pytest

from layerwise.course import assignments, nbgrader

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = assignments(ROOT)
# Seconds the grader allows one cell in this test (LAYERWISE_CELL_LIMIT; the course's config allows
# 60, and nbgrader's own timeout is twice that). The kernel imports torch before the first cell
# (nbgrader_config.py arms the grader then). The slowest cells of the solutions, measured in
# fresh-clone CI runs on 2 busy cores: ch. 17's test of block_removal_loss up to 7.3 s with its
# first cases, 5.8 s with the smaller ones; ch. 10's test of layer_token_mask 3.2 s; ch. 00's
# setup 3.2 s; every other cell under 0.9 s. Only the deliberate endless loops (``broken``,
# ``hang``) should reach it; test_wrong_answers_cost_only_their_own_points fails if a good
# answer's cell does.
CELL_LIMIT = 10

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
# Routes of CHEATS that reach the cells after their own (the profiler switched off in the visible
# test, the grading helpers patched at the top level): each goes last in its own submission.
LATER_CELLS = ("cheat_unhook", "cheat_patch_grading")


def _cheat_submissions(graded: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, str]]]:
    """The routes of CHEATS spread over as few submissions as possible: ({student: {fn: route}},
    {route: (student, fn)}, the item where each route is asserted)."""
    clean = [r for r in CHEATS if r not in LATER_CELLS]
    subs: dict[str, dict[str, str]] = {}
    where: dict[str, tuple[str, str]] = {}
    todo = list(clean)
    for last in [*LATER_CELLS, *([None] * len(clean))]:
        if last is None and not todo:
            break
        student = f"cheats_{len(subs)}"
        routes: dict[str, str] = {}
        for fn in graded[:-1] if last else graded:
            route = todo.pop(0) if todo else clean[len(routes) % len(clean)]
            routes[fn] = route
            where.setdefault(route, (student, fn))
        if last:
            routes[graded[-1]] = last
            where[last] = (student, graded[-1])
        subs[student] = routes
    assert set(where) == set(CHEATS)
    return subs, where


# Routes that run inside the graded call. Each is a helper ``_route_<name>__<fn>(ref, a, k)``
# returning the expected value (or the reference's output) or None; its marker is what the item's
# message must contain (the helper's name, which the guard reports as the place it saw).
# A careful cheat reads ``expected`` only from a function's frame (the grader's), never from the
# notebook's globals: there a visible test's ``expected`` may belong to another call, and the visible
# assert would fail before the hidden test's watch is reached.
_FIND_EXPECTED = ("    while f is not None:\n"
                  "        if f.f_code.co_name != '<module>' and 'expected' in f.f_locals:\n"
                  "            return f.f_locals['expected']\n        f = f.f_back\n")
CALL_ROUTES = {
    # the three routes of issue 13: (a) the grader's expected value read from its frame,
    # (b) the profiler paused around the reference call and put back, (c) threading's profile
    # hook cleared and the reference called from a new thread
    "getframe": "def _route_getframe__{fn}(ref, a, k):\n    f = sys._getframe(1)\n" + _FIND_EXPECTED,
    "pause": ("def _route_pause__{fn}(ref, a, k):\n    watch = sys.getprofile()\n    sys.setprofile(None)\n"
              "    try:\n        return ref(*a, **k)\n    finally:\n        sys.setprofile(watch)\n"),
    "thread": ("def _route_thread__{fn}(ref, a, k):\n    threading.setprofile(None)\n    out = []\n"
               "    t = threading.Thread(target=lambda: out.append(ref(*a, **k)))\n    t.start()\n    t.join()\n"
               "    return out[0] if out else None\n"),
    "inspect_stack": ("def _route_inspect_stack__{fn}(ref, a, k):\n    for info in inspect.stack():\n"
                      "        if info.function != '<module>' and 'expected' in info.frame.f_locals:\n"
                      "            return info.frame.f_locals['expected']\n"),
    "currentframe": "def _route_currentframe__{fn}(ref, a, k):\n    f = inspect.currentframe()\n" + _FIND_EXPECTED,
    "traceback": ("def _route_traceback__{fn}(ref, a, k):\n    try:\n        raise KeyError\n"
                  "    except KeyError as e:\n        f = e.__traceback__.tb_frame\n" + _FIND_EXPECTED),
    "current_frames": ("def _route_current_frames__{fn}(ref, a, k):\n"
                       "    f = sys._current_frames()[threading.get_ident()]\n" + _FIND_EXPECTED),
    "generator": ("def _route_generator__{fn}(ref, a, k):\n    def g():\n        yield me.gi_frame.f_back\n"
                  "    me = g()\n    f = next(me)\n" + _FIND_EXPECTED),
    "mutate_inputs": ("def _route_mutate_inputs__{fn}(ref, a, k):\n    f = sys._getframe()\n"
                      "    while f is not None:\n        kept = f.f_locals.get('ref_args')\n"
                      "        if isinstance(kept, tuple):\n            for x in kept:\n"
                      "                if isinstance(x, torch.Tensor) and x.is_floating_point():\n"
                      "                    x.zero_()\n        f = f.f_back\n"),
    "settrace": ("def _route_settrace__{fn}(ref, a, k):\n    before = sys.gettrace()\n"
                 "    sys.settrace(lambda frame, event, arg: None)\n    try:\n        return ref(*a, **k)\n"
                 "    finally:\n        sys.settrace(before)\n"),
    "profile_swap": ("def _route_profile_swap__{fn}(ref, a, k):\n    watch = sys.getprofile()\n"
                     "    sys.setprofile(lambda frame, event, arg: None)\n    try:\n        return ref(*a, **k)\n"
                     "    finally:\n        sys.setprofile(watch)\n"),
    "closure": ("def _route_closure__{fn}(ref, a, k):\n"
                "    for cell in getattr(sys.getprofile(), '__closure__', None) or ():\n"
                "        if isinstance(cell.cell_contents, (list, set, dict)):\n            cell.cell_contents.clear()\n"
                "    return ref(*a, **k)\n"),
    "timer": ("def _route_timer__{fn}(ref, a, k):\n    out = []\n"
              "    t = threading.Timer(0.0, lambda: out.append(ref(*a, **k)))\n    t.start()\n    t.join()\n"
              "    return out[0] if out else None\n"),
    "pool": ("def _route_pool__{fn}(ref, a, k):\n    with concurrent.futures.ThreadPoolExecutor(1) as pool:\n"
             "        return pool.submit(lambda: ref(*a, **k)).result()\n"),
    "raw_thread": ("def _route_raw_thread__{fn}(ref, a, k):\n    out, done = [], _thread.allocate_lock()\n"
                   "    done.acquire()\n    def run():\n        try:\n            out.append(ref(*a, **k))\n"
                   "        finally:\n            done.release()\n"
                   "    list(map(_thread.start_new_thread, [run], [()]))   # started from C: no Python call to see\n"
                   "    done.acquire(timeout=5)\n    return out[0] if out else None\n"),
    "signal": ("def _route_signal__{fn}(ref, a, k):\n    out = []\n    def handler(signum, frame):\n"
               "        f = frame\n        while f is not None:\n"
               "            if 'ref_fn' in f.f_locals:\n                out.append(f.f_locals['ref_fn'](*a, **k))\n"
               "                return\n            f = f.f_back\n"
               "    before = signal.signal(signal.SIGUSR1, handler)\n    try:\n"
               "        signal.raise_signal(signal.SIGUSR1)\n    finally:\n        signal.signal(signal.SIGUSR1, before)\n"
               "    return out[0] if out else None\n"),
    "pickle": ("def _route_pickle__{fn}(ref, a, k):\n    return pickle.loads(pickle.dumps(ref))(*a, **k)\n"),
    "reload_old": "def _route_reload_old__{fn}(ref, a, k):\n    return _OLD__{fn}(*a, **k)\n",
    "importlib_util": ("def _route_importlib_util__{fn}(ref, a, k):\n"
                       "    spec = importlib.util.spec_from_file_location('my_private_copy', _lib.__file__)\n"
                       "    mine = importlib.util.module_from_spec(spec)\n"
                       "    sys.modules['my_private_copy'] = mine   # a dataclass in the module needs it\n"
                       "    spec.loader.exec_module(mine)\n"
                       "    return getattr(mine, '{fn}')(*a, **k)\n"),
    "patch_grader": ("def _route_patch_grader__{fn}(ref, a, k):\n    import layerwise.grading.check as grader\n"
                     "    grader._compare = lambda *x, **y: None   # every output now 'matches'\n"),
    # nbgrader credits the first value a test cell displays, even before an error (the course's
    # autograde pipeline drops it): no message to look for, the item's 0 is the evidence
    "displayhook": "def _route_displayhook__{fn}(ref, a, k):\n    sys.displayhook(1000.0)\n",
}
CALL_MARKERS = {name: f"_route_{name}__{{fn}}" for name in CALL_ROUTES if name != "displayhook"} | {
    "patch_grader": "_compare"}
ISSUE_13 = {"getframe": ["read the call stack (sys._getframe) in _route_getframe__{fn}()"],
            "pause": ["calls the reference implementation", "from _route_pause__{fn}",
                      "switched the grader's watch (sys.setprofile) in _route_pause__{fn}()"],
            "thread": ["calls the reference implementation", "from _route_thread__{fn}.<locals>.<lambda>"]}

# Routes that stop every later cell, wherever they run outside a graded call (at the top level of a
# cell, or in a visible test): they run at the top level of the first answer cell, with the
# reference's output of a small call in hand; the item messages name the first function's helpers.
LOUD_ROUTES = {
    "gc_referrers": ("def _route_gc_referrers__{fn}(ref, a, k):\n    for holder in gc.get_referrers(*a):\n"
                     "        if isinstance(holder, dict) and 'expected' in holder:\n            return holder['expected']\n"),
    "gc_objects": ("def _route_gc_objects__{fn}(ref, a, k):\n    for o in gc.get_objects():\n"
                   "        if isinstance(o, list) and o and o[0] == '{fn}':   # the grader's list of reference calls\n"
                   "            o.clear()\n    return ref(*a, **k)\n"),
    "ctypes": ("def _route_ctypes__{fn}(ref, a, k):\n    import ctypes\n"
               "    ctypes.pythonapi.PyEval_SetProfile(None, None)\n    return ref(*a, **k)\n"),
    "proc_mem": "def _route_proc_mem__{fn}(ref, a, k):\n    open('/proc/self/mem', 'rb').close()\n",
    "subprocess": ("def _route_subprocess__{fn}(ref, a, k):\n    import subprocess\n"
                   "    subprocess.run([sys.executable, '-c', 'pass'], check=False)\n"),
    "audit_hook": "def _route_audit_hook__{fn}(ref, a, k):\n    sys.addaudithook(lambda event, args: None)\n",
    "exec_source": ("def _route_exec_source__{fn}(ref, a, k):\n    ns = {{}}\n"
                    "    exec(compile(inspect.getsource(_lib), '<my own module>', 'exec'), ns)\n"
                    "    return ns['{fn}'](*a, **k)\n"),
    "copy_code": ("def _route_copy_code__{fn}(ref, a, k):\n"
                  "    return types.FunctionType(ref.__code__, ref.__globals__, 'mine', ref.__defaults__)(*a, **k)\n"),
    "code_replace": ("def _route_code_replace__{fn}(ref, a, k):\n"
                     "    ref.__code__.replace(co_filename='/tmp/mine.py')\n"),
    "signal_left": ("def _route_signal_left__{fn}(ref, a, k):\n"
                    "    signal.signal(signal.SIGUSR2, lambda signum, frame: None)\n"),
    "patch_copy": ("def _route_patch_copy__{fn}(ref, a, k):\n    copy.deepcopy = lambda x, memo=None: x\n"),
    "patch_torch": ("def _route_patch_torch__{fn}(ref, a, k):\n    torch.allclose = lambda *x, **y: True\n"),
}
LOUD_MARKERS = {name: f"_route_{name}__{{fn}}" for name in LOUD_ROUTES} | {
    "patch_copy": "copy.deepcopy", "patch_torch": "torch.allclose"}

_ROUTE_PRELUDE = ("import _thread, concurrent.futures, copy, gc, importlib, importlib.util, inspect, pickle, signal, sys, "
                  "threading, types\nimport torch\nimport {mod} as _lib\n_OLD__{fn} = getattr(_lib, '{fn}')\n"
                  "importlib.reload(_lib)   # keeps an old copy of the reference in _OLD__{fn}\n\n")
_ROUTE_RUNNER = ("\n\ndef {fn}(*args, **kwargs):\n    ref = getattr(_lib, '{fn}')\n    found = []\n"
                 "    for route in [{routes}]:\n        try:\n            v = route(ref, args, kwargs)\n"
                 "        except Exception:\n            v = None\n"
                 "        if v is not None and not found:\n            found.append(v)\n"
                 "    return found[0] if found else ref(*args, **kwargs)\n")

# Changes at the top level of the first answer cell: every later cell is stopped.
TOP_ROUTES = {
    "exec_source": ("def _top_exec_source():\n    ns = {{}}\n"
                    "    exec(compile(inspect.getsource(_lib), '<my own module>', 'exec'), ns)\n"
                    "    return ns['{fn}']\n"),
    "fake_reload": ("def _top_fake_reload():\n    fake = types.ModuleType('layerwise.grading.check')\n"
                    "    fake.check_function = fake.Case = ''.format\n    fake.fresh_generator = torch.Generator\n"
                    "    real = importlib.reload\n"
                    "    importlib.reload = lambda m: fake if m.__name__ == 'layerwise.grading.check' else real(m)\n"),
    "fake_module": ("def _top_fake_module():\n    class Fake(types.ModuleType):\n"
                    "        def __getattribute__(self, name):\n"
                    "            return ''.format if name in ('check_function', 'Case') else super().__getattribute__(name)\n"
                    "    sys.modules['layerwise.grading.check'] = Fake('layerwise.grading.check')\n"),
    "meta_path": ("def _top_meta_path():\n    class Finder:\n        def find_spec(self, name, path=None, target=None):\n"
                  "            return None\n    sys.meta_path.insert(0, Finder())\n"),
    "builtins_import": ("def _top_builtins_import():\n    import builtins\n    real = builtins.__import__\n"
                        "    builtins.__import__ = lambda *a, **k: real(*a, **k)\n"),
    "patch_equal": "def _top_patch_equal():\n    torch.equal = lambda *a, **k: True\n",
    "settrace": "def _top_settrace():\n    sys.settrace(lambda frame, event, arg: None)\n",
    "gc": ("def _top_gc():\n    for o in gc.get_objects():\n        pass\n"),
    "code_replace": ("def _top_code_replace():\n    code = getattr(_lib, '{fn}').__code__.replace(co_filename='/tmp/mine.py')\n"
                     "    return types.FunctionType(code, vars(_lib))\n"),
}
TOP_MARKERS = {name: f"_top_{name}()" for name in TOP_ROUTES} | {
    "fake_reload": "importlib.reload", "fake_module": "sys.modules['layerwise.grading.check']",
    "meta_path": "sys.meta_path", "builtins_import": "builtins.__import__", "patch_equal": "torch.equal"}
# One statement: IPython runs each top-level statement of a cell on its own, and the guard stops
# the notebook before the statement that follows a tampering one.
_TOP_RUNNER = ("\n{fn} = getattr(_lib, '{fn}')\nfor _route in [{routes}]:\n    try:\n        _v = _route()\n"
               "        if _v is not None:\n            {fn} = _v\n    except Exception:\n        pass\n")

# Installed during the first visible test: the hidden tests' reload of the grader finds a fake one
# (a patched finder the snapshot does not cover); the test cell must still fail when it ends.
FAKE_GRADER = ("import importlib, importlib.abc, importlib.util, os, sys, types\nimport torch\nimport {mod} as _lib\n\n\n"
               "class _Fake(importlib.abc.Loader):\n    def create_module(self, spec):\n        return None\n\n"
               "    def exec_module(self, module):\n        module.check_function = ''.format\n"
               "        module.Case = lambda name, *args, **kwargs: types.SimpleNamespace(name=name, args=args, kwargs=kwargs)\n"
               "        module.fresh_generator = torch.Generator\n\n\n"
               "def _install_fake_grader():\n    import layerwise.grading.check as real\n"
               "    finder = sys.path_importer_cache[os.path.dirname(real.__file__)]\n    find = finder.find_spec\n"
               "    def find_spec(name, target=None):\n        if name == 'layerwise.grading.check':\n"
               "            return importlib.util.spec_from_loader(name, _Fake(), origin=real.__file__)\n"
               "        return find(name, target)\n    finder.find_spec = find_spec\n\n\n"
               "def {fn}(*args, **kwargs):\n    _install_fake_grader()\n    return getattr(_lib, '{fn}')(*args, **kwargs)\n")

# A wrong answer that makes the reference point at itself, hoping the check compares it with itself.
PATCH_REFERENCE = "\nimport {mod} as _lib\n_lib.{fn} = {fn}\n"
# Appended to an answer: junk on stdout and stderr at definition and on every call.
NOISY = ("\nimport sys as _sys\nfor _i in range(2000):\n    print('junk output', _i)\n    print('junk', _i, file=_sys.stderr)\n"
         "_orig_{fn} = {fn}\n\n\ndef {fn}(*args, **kwargs):\n    print('junk ' * 200)\n"
         "    return _orig_{fn}(*args, **kwargs)\n")
# Legitimately unusual but honest: an answer's code as a helper defined in the FIRST answer cell,
# reached through functools.wraps, lru_cache, partial, recursion, a generator and a class with __call__.
UNUSUAL_HELPERS = (
    "import functools\n\n\n@functools.lru_cache(maxsize=None)\ndef _depth():\n    return 2\n\n\n"
    "def _passed_through(f):\n    @functools.wraps(f)\n    def wrapper(*args, **kwargs):\n        return f(*args, **kwargs)\n"
    "    return wrapper\n\n\ndef _recursive(n, f, *args, **kwargs):\n"
    "    return f(*args, **kwargs) if n == 0 else _recursive(n - 1, f, *args, **kwargs)\n\n\n"
    "class _Calls:\n    def __init__(self, f):\n        self.f = f\n\n    def __call__(self, *args, **kwargs):\n"
    "        return next(v for v in [_recursive(_depth(), self.f, *args, **kwargs)])\n\n\n")
UNUSUAL = "\n{fn} = _Calls(functools.partial(_passed_through(_impl_{fn})))\n"
RAISES = "def {fn}(*args, **kwargs):\n    raise RuntimeError('my code is broken')\n"
LOOPS_WHEN_CALLED = "def {fn}(*args, **kwargs):\n    while True:\n        pass\n"
HANGS_AT_DEFINITION = "while True:\n    pass\n"
# The students the feedback test reads (generate_feedback runs for these only).
FEEDBACK_STUDENTS = ("solution", "wrong_0", "cheat_calls")


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


def _routes_cell(mod: str, fn: str, routes: dict[str, str]) -> str:
    body = _ROUTE_PRELUDE.format(mod=mod, fn=fn) + "\n\n".join(t.format(mod=mod, fn=fn) for t in routes.values())
    names = ", ".join(f"_route_{r}__{fn}" for r in routes)
    return body + _ROUTE_RUNNER.format(fn=fn, routes=names)


def _top_cell(mod: str, fn: str) -> str:
    body = _ROUTE_PRELUDE.format(mod=mod, fn=fn) + "\n\n".join(
        t.format(mod=mod, fn=fn) for t in [*TOP_ROUTES.values(), *LOUD_ROUTES.values()])
    routes = [f"_top_{r}" for r in TOP_ROUTES] + [f"lambda: _route_{r}__{fn}({fn}, (), {{}})" for r in LOUD_ROUTES]
    return body + _TOP_RUNNER.format(fn=fn, routes=", ".join(routes))


def _unusual(graded: list[str], answers: dict[str, str]) -> dict[str, str]:
    """Every function's answer as ``_impl_<fn>`` in the first answer cell, reached from its own
    cell through the wrappers (so each item uses a helper defined in another cell)."""
    impls = []
    for fn in graded:
        impl, n = re.subn(rf"^def {fn}\(", f"def _impl_{fn}(", answers[fn], count=1, flags=re.M)
        assert n == 1, f"the answer for {fn} must define {fn}() at the top level:\n{answers[fn]}"
        impls.append(impl)
    first = UNUSUAL_HELPERS + "\n\n".join(impls) + "\n"
    return {fn: (first if i == 0 else "") + UNUSUAL.format(fn=fn) for i, fn in enumerate(graded)}


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
        self.cheat_at: dict[str, tuple[str, str]] = {}   # CHEATS route -> (student, function) it is asserted on
        self.outputs: dict[str, dict[str, str]] = {}
        self.printed: dict[str, dict[str, str]] = {}    # what each cell printed, by cell
        self.messages: dict[str, dict[str, list[str]]] = {}   # each error's message (evalue) by cell
        self.wrong: dict[str, list[str]] = {}   # WRONG_ANSWERS, a list per function: variant i is in wrong_<i>


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
    mod = r.reference
    fmt = lambda t, fn: t.format(mod=mod, fn=fn)  # noqa: E731
    unusual = _unusual(r.graded, alt)
    cheat_subs, r.cheat_at = _cheat_submissions(r.graded)
    students = {
        "solution": sol,
        "stubs": {},
        **{s: {fn: fmt(CHEATS[route], fn) for fn, route in routes.items()} for s, routes in cheat_subs.items()},
        "cheat_calls": {fn: _routes_cell(mod, fn, CALL_ROUTES) for fn in r.graded},
        "cheat_top": {r.graded[0]: _top_cell(mod, r.graded[0]),
                      **{fn: fmt(CHEATS["cheat_module"], fn) for fn in r.graded[1:]}},
        "cheat_fake_grader": {fn: fmt(FAKE_GRADER, fn) for fn in r.graded},
        "alternative": {fn: unusual[fn] + fmt(NOISY, fn) for fn in r.graded},
        **{f"wrong_{i}": {**sol, **{fn: ws[i] + (fmt(PATCH_REFERENCE, fn) if i == 0 else "")
                                    for fn, ws in wrong.items() if i < len(ws)}}
           for i in range(max(len(ws) for ws in wrong.values()))},
    }
    if len(r.graded) >= 3:   # one kernel: a raising answer whose cell then hangs, an endless call, a good answer
        students["broken"] = {**sol, r.graded[0]: fmt(RAISES, r.graded[0]) + "\n\n" + HANGS_AT_DEFINITION,
                              r.graded[1]: fmt(LOOPS_WHEN_CALLED, r.graded[1])}
    else:
        students["hang"] = {**sol, r.graded[-1]: HANGS_AT_DEFINITION}
        if len(r.graded) == 2:
            students["broken"] = {**sol, r.graded[0]: fmt(RAISES, r.graded[0]),
                                  r.graded[1]: fmt(LOOPS_WHEN_CALLED, r.graded[1])}
    for student, ans in students.items():
        d = tmp / "submitted" / student / name
        d.mkdir(parents=True)
        nbformat.write(_build_submission(release, ans), d / f"{name}.ipynb")

    t0 = time.perf_counter()
    with mock.patch.dict(os.environ, {"LAYERWISE_CELL_LIMIT": str(CELL_LIMIT)}):
        nbgrader(["autograde", name, "--force"], cwd=tmp)
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
        r.printed[student] = {_grade_id(c): "".join(o.get("text", "") for o in c.get("outputs", [])
                                                    if o.get("output_type") == "stream") for c in nb.cells if _grade_id(c)}
        r.messages[student] = {_grade_id(c): [o.get("evalue", "") for o in c.get("outputs", [])
                                              if o.get("output_type") == "error"] for c in nb.cells if _grade_id(c)}
    r.release, r.students, r.wrong = release, students, wrong
    return r


def _item(r: Round, student: str, fn: str) -> float:
    return r.scores[student][f"test_{fn}"]


def _total(r: Round, student: str) -> float:
    return sum(r.scores[student].values())


def _message(r: Round, student: str, fn: str) -> str:
    return r.outputs[student][f"test_{fn}"]


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


@pytest.mark.parametrize("route", sorted(CHEATS))
def test_calling_the_reference_scores_zero(graded: Round, route: str):
    student, fn = graded.cheat_at[route]   # the item where this route is the answer
    assert _total(graded, student) == 0, f"{student} scored {graded.scores[student]}"
    assert "calls the reference implementation" in _message(graded, student, fn), (
        f"{route} ({student}/{fn}): the failure should say the answer calls the reference")


@pytest.mark.parametrize("route", sorted(ISSUE_13))
def test_the_routes_of_issue_13_score_zero(graded: Round, route: str):
    """Frames, a paused profiler, a thread with threading's profile hook cleared: 0 on every item,
    and every item's message says what was seen."""
    assert _total(graded, "cheat_calls") == 0, graded.scores["cheat_calls"]
    for fn in graded.graded:
        msg = _message(graded, "cheat_calls", fn)
        for said in ISSUE_13[route]:
            assert said.format(fn=fn) in msg, f"{route}/{fn}: the failure should say {said.format(fn=fn)!r}:\n{msg[:4000]}"


def test_every_route_inside_the_call_is_caught_on_every_item(graded: Round):
    assert _total(graded, "cheat_calls") == 0, graded.scores["cheat_calls"]
    for fn in graded.graded:
        msg = _message(graded, "cheat_calls", fn)
        missed = [r for r, m in CALL_MARKERS.items() if m.format(fn=fn) not in msg]
        assert not missed, f"{fn}: the grader did not report the routes {missed}:\n{msg[:4000]}"


def test_routes_that_stop_the_notebook_score_zero_on_every_item(graded: Round):
    first = graded.graded[0]
    markers = {**TOP_MARKERS, **{f"loud_{r}": m.format(fn=first) for r, m in LOUD_MARKERS.items()}}
    assert _total(graded, "cheat_top") == 0, graded.scores["cheat_top"]
    for fn in graded.graded:
        msg = _message(graded, "cheat_top", fn)
        missed = [r for r, m in markers.items() if m not in msg]
        assert not missed, f"cheat_top/{fn}: the grader did not report the routes {missed}:\n{msg[:4000]}"
        assert "This exercise asks for your own torch code" in msg


def test_a_grader_replaced_behind_the_hidden_tests_back_scores_zero(graded: Round):
    assert _total(graded, "cheat_fake_grader") == 0, graded.scores["cheat_fake_grader"]
    for fn in graded.graded:
        msg = _message(graded, "cheat_fake_grader", fn)
        assert "the course's grader never ran here" in msg, f"{fn}: {msg[:3000]}"


def test_redirecting_the_reference_to_a_wrong_answer_does_not_pass(graded: Round):
    for fn in graded.graded:   # wrong_0 is a wrong answer that also reassigns the reference to itself
        assert _item(graded, "wrong_0", fn) < graded.points[fn], (
            f"a wrong {fn} passed after reassigning {graded.reference}.{fn} to itself")


def test_faithful_alternative_reached_in_unusual_ways_and_printing_junk_scores_full(graded: Round):
    """A faithful reimplementation written differently, defined as a helper in another cell and
    reached through functools wrappers, recursion, a generator and a class with __call__, printing
    junk at definition and on every call: full marks on every item."""
    for fn in graded.graded:
        assert _item(graded, "alternative", fn) == graded.points[fn], (
            f"an honest {fn} (a faithful reimplementation, reached through a helper in another cell, functools "
            f"wrappers, recursion, a generator and a class with __call__, printing junk) lost points:\n"
            f"{graded.outputs['alternative'].get('test_' + fn)}")
    assert _total(graded, "alternative") == sum(graded.points.values()), graded.scores["alternative"]


def test_wrong_answers_lose_their_points_with_a_teaching_message(graded: Round):
    for fn in graded.graded:
        for i in range(len(graded.wrong[fn])):
            student = f"wrong_{i}"
            assert _item(graded, student, fn) < graded.points[fn], f"wrong answer #{i} for {fn} scored full"
            msg = graded.outputs[student][f"test_{fn}"]
            assert fn in msg and re.search(r"expected|differ|NaN", msg), f"unhelpful failure message for {fn}:\n{msg}"


def test_wrong_answers_cost_only_their_own_points(graded: Round):
    """In a wrong_<i> submission the items without an i-th wrong answer hold the solution: full points
    (this also catches a good answer's cell stopped by the cell limit on a busy machine)."""
    for i in range(max(len(ws) for ws in graded.wrong.values())):
        for fn in graded.graded:
            if i >= len(graded.wrong[fn]):
                assert _item(graded, f"wrong_{i}", fn) == graded.points[fn], (
                    f"wrong_{i}: the solution of {fn} lost points:\n{graded.outputs[f'wrong_{i}'][f'test_{fn}'][:2000]}")


VISIBLE_PASSED = "visible tests passed"   # the last line of every visible test


def test_visible_tests_catch_every_listed_pitfall(graded: Round):
    """A student sees each pitfall of WRONG_ANSWERS fail a visible test before submitting (issue 15),
    and the solution and the faithful alternative pass the visible tests."""
    for student in ("solution", "alternative"):
        for fn in graded.graded:
            assert VISIBLE_PASSED in graded.printed[student][f"test_{fn}"], (
                f"{student}: the visible tests of {fn} did not pass:\n{graded.outputs[student][f'test_{fn}'][:2000]}")
    missed = [f"{fn} wrong answer #{i}" for fn in graded.graded for i in range(len(graded.wrong[fn]))
              if VISIBLE_PASSED in graded.printed[f"wrong_{i}"][f"test_{fn}"]]
    assert not missed, f"these pitfalls pass every visible test (add the case they fail): {missed}"


def test_broken_answers_cost_only_their_own_points(graded: Round):
    if "broken" not in graded.students:
        pytest.skip("needs two graded functions")
    first, second = graded.graded[:2]
    stopped = f"This cell was stopped after {CELL_LIMIT:g} s"
    assert _item(graded, "broken", first) == 0 and _item(graded, "broken", second) == 0
    for fn in graded.graded[2:]:   # after a cell that hung and a call that never returned
        assert _item(graded, "broken", fn) == graded.points[fn], (
            f"a hanging cell and an endless call elsewhere cost {fn} its points")
    if "hang" in graded.students:
        for fn in graded.graded[:-1]:
            assert _item(graded, "hang", fn) == graded.points[fn], f"a hanging cell elsewhere cost {fn} its points"
        assert _item(graded, "hang", graded.graded[-1]) == 0
    else:   # the first answer cell did hang, and was stopped by the grader's cell limit
        assert stopped in graded.outputs["broken"][first], graded.outputs["broken"][first][:2000]
    # the endless call inside the visible test is stopped by the same limit, with its message
    assert stopped in graded.outputs["broken"][f"test_{second}"], graded.outputs["broken"][f"test_{second}"][:2000]
    # bounded time: every student ran, the endless loops each cut off by the cell limit
    budget = CELL_LIMIT * 2 + 30 * len(graded.students)
    assert graded.seconds < budget, f"autograding took {graded.seconds:.0f} s (budget {budget} s)"


def test_instructor_feedback_and_export(graded: Round):
    # generate_feedback for the students read here only, with the course's switch for courses that
    # allow resubmission on: nbgrader's ClearHiddenTests, and tracebacks cut to their message
    with mock.patch.dict(os.environ, {"LAYERWISE_HIDE_HIDDEN_TESTS": "1"}):
        others = ",".join(s for s in graded.students if s not in FEEDBACK_STUDENTS)
        nbgrader(["generate_feedback", graded.name, "--force", f"--CourseDirectory.student_id_exclude={others}"],
                 cwd=graded.tmp)
    fb = graded.tmp / "feedback" / "solution" / graded.name / f"{graded.name}.html"
    assert fb.exists() and "Score" in fb.read_text()
    for student in FEEDBACK_STUDENTS:
        page = html.unescape((graded.tmp / "feedback" / student / graded.name / f"{graded.name}.html").read_text())
        for hidden in ("BEGIN HIDDEN TESTS", "check_function(", "fresh_generator("):
            assert hidden not in page, f"{student}'s feedback shows the hidden tests ({hidden!r})"
        for fn in graded.graded:
            for msg in graded.messages[student][f"test_{fn}"]:   # the teaching message, or what the guard saw
                first_line = (msg.splitlines() or [""])[0][:120]
                assert first_line in page, f"{student}'s feedback lost the message for {fn}: {first_line!r}"
    nbgrader(["export", "--to", "grades.csv"], cwd=graded.tmp)
    rows = (graded.tmp / "grades.csv").read_text().splitlines()
    assert len(rows) == 1 + len(graded.students)
