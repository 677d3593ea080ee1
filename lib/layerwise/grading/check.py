"""Compare a student's function with the reference, with teaching failure messages."""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch


class CallsReferenceError(AssertionError):
    """The submission called into the reference implementation it is meant to reimplement."""


class StudentTimeoutError(AssertionError):
    """The submission did not return within the time limit (an infinite loop?)."""


@dataclass
class Case:
    """One set of arguments for a graded function, with a name shown when it fails."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, *args: Any, **kwargs: Any):
        self.name, self.args, self.kwargs = name, args, kwargs


def fresh_generator() -> torch.Generator:
    """A CPU generator with a fresh random seed (``g.initial_seed()`` tells which, to reproduce)."""
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(6), "little"))


# --------------------------------------------------------------------------- describing values

def describe(x: Any) -> str:
    """A short description of a value for messages: dtype and shape for tensors."""
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"numpy {x.dtype} array of shape {x.shape}"
    if isinstance(x, torch.nn.Linear):
        return f"Linear(in_features={x.in_features}, out_features={x.out_features}, dtype={str(x.weight.dtype).replace('torch.', '')})"
    if isinstance(x, torch.nn.Module):
        return type(x).__name__
    if isinstance(x, (tuple, list)):
        inner = ", ".join(describe(v) for v in x[:4]) + (", ..." if len(x) > 4 else "")
        return f"{type(x).__name__} of {len(x)}: ({inner})"
    if isinstance(x, (int, float, bool, str)) or x is None:
        return repr(x)
    return type(x).__name__


def _describe_call(fn_name: str, params: Sequence[str], case: Case) -> str:
    parts = []
    for i, a in enumerate(case.args):
        label = params[i] if i < len(params) else f"arg{i}"
        parts.append(f"{label}: {describe(a)}")
    parts += [f"{k}: {describe(v)}" for k, v in case.kwargs.items()]
    return f"{fn_name}(" + "; ".join(parts) + ")"


# --------------------------------------------------------------------------- comparing outputs

def _first_bad_index(got: torch.Tensor, exp: torch.Tensor, atol: float, rtol: float) -> tuple[tuple[int, ...], float]:
    diff = (got.double() - exp.double()).abs()
    bad = ~torch.isclose(got.double(), exp.double(), atol=atol, rtol=rtol, equal_nan=True)
    idx = tuple(int(i) for i in torch.nonzero(bad)[0]) if bad.any() else ()
    finite = diff[torch.isfinite(diff)]
    return idx, float(finite.max()) if finite.numel() else float("nan")


def _compare(got: Any, exp: Any, atol: float, rtol: float, where: str = "output") -> str | None:
    """None when ``got`` matches ``exp``; else a sentence saying how it differs."""
    if isinstance(exp, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{where}: expected a {type(exp).__name__} of {len(exp)} values, got {describe(got)}"
        if len(got) != len(exp):
            return f"{where}: expected {len(exp)} values, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, exp)):
            msg = _compare(g, e, atol, rtol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(exp, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{where}: expected a torch.Tensor ({describe(exp)}), got {describe(got)}"
        if got.shape != exp.shape:
            return f"{where}: expected shape {tuple(exp.shape)}, got {tuple(got.shape)}"
        if got.dtype != exp.dtype:
            return (f"{where}: expected dtype {exp.dtype}, got {got.dtype} "
                    "(keep the dtype of the inputs; avoid creating tensors without dtype=)")
        if exp.dtype == torch.bool or not exp.is_floating_point():
            if not torch.equal(got.cpu(), exp.cpu()):
                n = int((got.cpu() != exp.cpu()).sum())
                return f"{where}: {n} of {exp.numel()} entries differ from the expected values"
            return None
        got_c, exp_c = got.detach().cpu(), exp.detach().cpu()
        if torch.isfinite(exp_c).all() and not torch.isfinite(got_c).all():
            return (f"{where}: contains NaN or inf where the expected values are finite "
                    "(a numerically unstable formula? e.g. log(softmax(x)) instead of log_softmax)")
        if not torch.allclose(got_c, exp_c, atol=atol, rtol=rtol, equal_nan=True):
            idx, err = _first_bad_index(got_c, exp_c, atol, rtol)
            at = f" first mismatch at index {idx}: expected {exp_c[idx].item():.6g}, got {got_c[idx].item():.6g};" if idx else ""
            return f"{where}: values differ (max abs error {err:.3g}, tolerance atol={atol:g}, rtol={rtol:g});{at}"
        return None
    if isinstance(exp, (int, float, np.floating, np.integer)) and not isinstance(exp, bool):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float, np.floating, np.integer)) or isinstance(got, bool):
            return f"{where}: expected a number ({exp!r}), got {describe(got)}"
        if not np.isclose(float(got), float(exp), atol=atol, rtol=rtol):
            return f"{where}: expected {exp!r}, got {got!r}"
        return None
    if got != exp:
        return f"{where}: expected {exp!r}, got {got!r}"
    return None


def assert_close(got: Any, expected: Any, *, atol: float = 1e-5, rtol: float = 1e-4, what: str = "output") -> None:
    """Raise an ``AssertionError`` that says how ``got`` differs from ``expected`` (shape, dtype, values)."""
    msg = _compare(got, expected, atol, rtol, what)
    if msg:
        raise AssertionError(msg)


# --------------------------------------------------------------------------- running the student

def _module_files(modules: Sequence[ModuleType]) -> set[str]:
    files = set()
    for m in modules:
        f = getattr(m, "__file__", None)
        if f:
            files.add(os.path.realpath(f))
    return files


@contextlib.contextmanager
def _forbid_calls_into(files: set[str]) -> Iterator[list[str]]:
    """Record every Python call whose code lives in one of ``files`` (via ``sys.setprofile``)."""
    hits: list[str] = []
    seen: dict[str, bool] = {}

    def profiler(frame, event, arg):  # noqa: ANN001
        if event == "call":
            fname = frame.f_code.co_filename
            bad = seen.get(fname)
            if bad is None:
                bad = seen[fname] = os.path.realpath(fname) in files
            if bad and len(hits) < 5:
                hits.append(frame.f_code.co_name)

    previous = sys.getprofile()
    previous_threads = threading.getprofile()
    sys.setprofile(profiler)
    threading.setprofile(profiler)          # threads started by the submission are watched too
    try:
        yield hits
    finally:
        if sys.getprofile() is not profiler:  # the submission removed or replaced the watch
            hits.append("<sys.setprofile was changed>")
        sys.setprofile(previous)
        threading.setprofile(previous_threads)


@contextlib.contextmanager
def _time_limit(seconds: float | None, fn_name: str) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (main thread on POSIX only; elsewhere no limit)."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):  # noqa: ANN001
        raise StudentTimeoutError(
            f"{fn_name} did not return within {seconds:g} s and was stopped. Is there an infinite loop, "
            "or a loop over every element that should be a tensor operation?")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # give back whatever alarm was pending before (e.g. a test runner's timeout)
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


def run_student(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, *,
                forbidden: Sequence[ModuleType] = (), time_limit: float | None = 10.0,
                name: str | None = None) -> Any:
    """Call the student's ``fn(*args, **kwargs)`` with the reference modules forbidden and a
    time limit. Raises :class:`CallsReferenceError` or :class:`StudentTimeoutError`."""
    name = name or getattr(fn, "__name__", "your function")
    files = _module_files(forbidden)
    with _forbid_calls_into(files) as hits, _time_limit(time_limit, name):
        try:
            out = fn(*args, **(kwargs or {}))
        except NotImplementedError:
            raise AssertionError(f"{name} is not implemented yet: replace `raise NotImplementedError()` "
                                 "with your code") from None
    if hits:
        mods = ", ".join(m.__name__ for m in forbidden)
        raise CallsReferenceError(
            f"{name} calls the reference implementation ({mods}: {', '.join(sorted(set(hits)))}). "
            "This exercise asks you to write it yourself with torch operations; "
            "a submission that only calls the library scores 0 for this item.")
    return out


def _fresh_copy(module: ModuleType) -> ModuleType:
    """A private copy of ``module`` executed from its source file, so that an answer cell that
    reassigned the reference's functions (``layerwise.msd.msd_loss = my_msd_loss``) cannot make
    the check compare the submission with itself. ``sys.modules`` is left untouched."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return module
    spec = importlib.util.spec_from_file_location(module.__name__, path)
    copy_ = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy_)
    return copy_


def _resolve(reference: str | Callable[..., Any]) -> tuple[Callable[..., Any], ModuleType]:
    if callable(reference) and not isinstance(reference, str):
        return reference, sys.modules[reference.__module__]
    if not isinstance(reference, str) or "." not in reference:
        raise ValueError(f"reference must be 'package.module.function' or a function, got {reference!r}")
    mod_name, fn_name = reference.rsplit(".", 1)
    module = _fresh_copy(importlib.import_module(mod_name))
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ValueError(f"reference module {mod_name} has no function {fn_name!r}")
    return fn, module


def check_function(student_fn: Callable[..., Any], reference: str | Callable[..., Any], cases: Sequence[Case], *,
                   atol: float = 1e-5, rtol: float = 1e-4, time_limit: float | None = 10.0, hint: str = "",
                   seed: int | None = None) -> None:
    """Check ``student_fn`` against ``reference`` on every case; raise a teaching ``AssertionError``
    at the first case where they differ.

    ``reference`` is a dotted name (``"layerwise.msd.msd_loss"``) or the function itself. Each
    case's arguments are deep-copied for each call, so in-place changes by one side cannot
    affect the other.
    """
    if not callable(student_fn):
        raise AssertionError(f"expected a function, got {describe(student_fn)}: did you run the cell that defines it?")
    if not cases:
        raise ValueError("cases is empty")
    ref_fn, ref_module = _resolve(reference)
    name = ref_fn.__name__
    try:
        params = list(inspect.signature(ref_fn).parameters)
    except (TypeError, ValueError):
        params = []
    for case in cases:
        if not isinstance(case, Case):
            raise TypeError(f"cases must hold grading.Case objects, got {type(case).__name__}")
        expected = ref_fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        call = _describe_call(name, params, case)
        try:
            got = run_student(student_fn, copy.deepcopy(case.args), copy.deepcopy(case.kwargs),
                              forbidden=[ref_module], time_limit=time_limit, name=name)
        except (CallsReferenceError, StudentTimeoutError):
            raise
        except AssertionError as e:
            raise AssertionError(f"{e}\n  case: {case.name}\n  call: {call}") from None
        except Exception as e:  # the student's code raised: report it as a failed check, with context
            raise AssertionError(f"{name} raised {type(e).__name__}: {e}\n  case: {case.name}\n  call: {call}") from e
        msg = _compare(got, expected, atol, rtol)
        if msg:
            lines = [f"{name} is not right yet on the case '{case.name}'.", f"  call: {call}", f"  {msg}",
                     f"  expected: {describe(expected)}", f"  got:      {describe(got)}"]
            if seed is not None:
                lines.append(f"  (random inputs drawn with seed {seed})")
            if hint:
                lines.append(f"  hint: {hint}")
            raise AssertionError("\n".join(lines))
