"""Compare a student's function with the reference, with teaching failure messages.

The watch over the student's call lives in :mod:`layerwise.grading.guard`."""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
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

from layerwise.grading import guard as _guard


class CallsReferenceError(AssertionError):
    """The submission called into the reference implementation it is meant to reimplement."""


class TamperingError(CallsReferenceError):
    """The submission inspected, paused or changed the grader while it was graded (scores 0, like
    calling the reference)."""


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


# --------------------------------------------------------------------------- the watch

_G = _guard.api()   # the guard's control functions, as its audit hook installed them


def _tripped(name: str, hits: Sequence[str], findings: Sequence[str], mods: str) -> CallsReferenceError:
    """The error for an item the guard tripped: what was seen, politely, and what the exercise wants."""
    seen = "; ".join(findings[:30]) + ("; ..." if len(findings) > 30 else "")
    if hits:
        msg = (f"{name} calls the reference implementation ({mods}: {'; '.join(sorted(set(hits))[:30])}). "
               "This exercise asks you to write it yourself with torch operations; "
               "a submission that only calls the library scores 0 for this item.")
        if findings:
            msg += f"\n  The grader also saw that the code {seen}."
        return CallsReferenceError(msg)
    return TamperingError(
        f"{name} scores 0 for this item: while it was graded, the grader saw that the code {seen}. "
        f"This exercise asks for your own torch code; an answer that inspects, pauses or changes the grader "
        f"(or calls {mods}) scores 0 for the item. If this came from leftover debugging code, remove it and ask "
        "your instructor to re-grade.")


def _raise_if_tripped(name: str, mods: str) -> None:
    hits, findings = _G["status"]()
    if hits or findings:
        raise _tripped(name, hits, findings, mods)


def _plain(x: Any, depth: int = 0) -> Any:
    """A private copy of what the student's function returned, made of plain types only (exact
    ``torch.Tensor``, tuple, list, dict, numbers ...), so that comparing it runs none of the
    submission's code and nothing the submission kept can change it afterwards."""
    if depth > 20:
        raise TypeError("the output is nested more than 20 levels deep")
    t = type(x)
    if x is None or t in (bool, int, float, complex, str, bytes, torch.dtype, torch.device):
        return x
    if t is torch.Tensor:
        return x.detach().clone()
    if isinstance(x, torch.Tensor):          # a subclass (nn.Parameter, or one from the notebook)
        with torch._C.DisableTorchFunctionSubclass():
            y = torch.Tensor.detach(x).clone()
        return y if type(y) is torch.Tensor else torch.Tensor.as_subclass(y, torch.Tensor)
    if isinstance(x, (bool, int, float, complex, str)):   # a subclass of a number or a string
        return {bool: bool, int: int, float: float, complex: complex, str: str}[next(
            b for b in (bool, int, float, complex, str) if isinstance(x, b))](x)
    if isinstance(x, np.ndarray):
        return np.array(x, copy=True, subok=False)
    if isinstance(x, np.generic):
        return np.asarray(x).copy()[()]
    if isinstance(x, tuple):
        return tuple(_plain(v, depth + 1) for v in list(x))
    if isinstance(x, list):
        return [_plain(v, depth + 1) for v in list(x)]
    if isinstance(x, dict):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in list(x.items())}
    return copy.deepcopy(x)


def _digest(obj: Any) -> bytes:
    """A fingerprint of the reference's inputs: the grader checks they are unchanged after the call."""
    h = hashlib.blake2b(digest_size=20)

    def walk(x: Any, depth: int) -> None:
        if depth > 20:
            return
        if isinstance(x, torch.Tensor):
            y = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{y.dtype}{tuple(x.shape)}".encode())
            if y.numel():
                h.update(y.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, (tuple, list)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v, depth + 1)
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k, v in x.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(x, torch.Generator):
            h.update(x.get_state().numpy().tobytes())
        elif isinstance(x, torch.nn.Module):
            h.update(type(x).__qualname__.encode())
            for k, v in x.state_dict().items():
                h.update(k.encode())
                walk(v, depth + 1)
        elif isinstance(x, np.ndarray):
            h.update(np.ascontiguousarray(x).tobytes())
        elif x is None or type(x) in (bool, int, float, complex, str, bytes, torch.dtype, torch.device):
            h.update(repr(x).encode())
        else:
            h.update(f"?{type(x).__qualname__}{id(x)}".encode())

    walk(obj, 0)
    return h.digest()


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


def limit_cells(seconds: float, shell: Any = None) -> bool:
    """Stop every notebook cell that runs longer than ``seconds`` with a :class:`StudentTimeoutError`.

    Installed at kernel start by ``nbgrader_config.py``, so that a loop in a *visible* test, or at
    the top level of an answer cell, costs that cell a few seconds and a clear message instead of
    nbgrader's whole cell timeout. A graded call's own ``time_limit`` (inside ``check_function``)
    nests inside it and gives back what is left. Returns False where no limit can be set (no
    IPython shell, not the main thread, or no ``setitimer``)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if (shell is None or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        return False

    def on_alarm(signum, frame):  # noqa: ANN001
        raise StudentTimeoutError(
            f"This cell was stopped after {seconds:g} s, the grader's limit for one cell. Is there an "
            "infinite loop (in your function, or in the cell itself), or a loop over every element "
            "that should be a tensor operation?")

    def start(*_: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def stop(*_: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    signal.signal(signal.SIGALRM, on_alarm)   # once: the guard holds later cells to the handlers found here
    shell.events.register("pre_run_cell", start)
    shell.events.register("post_run_cell", stop)
    return True


def _call_student(fn: Callable[..., Any], inputs: list, time_limit: float | None, name: str,
                  private: bool = True) -> tuple[str, Any, BaseException | None]:
    """Call ``fn(*args, **kwargs)`` (``inputs == [args, kwargs]``, emptied here so that the caller
    keeps no reference) inside the guard's window. Returns ``(kind, value, exception)``: kind
    ``"ok"`` with the private copy of the output, ``"stub"``, ``"timeout"``, ``"raised"`` with a
    message, or ``"output"`` when the output cannot be copied."""
    if _G["begin_call"]() != ["ok"]:
        raise TamperingError(f"{name}: the course's grader could not watch this call, so the item scores 0 "
                             "(was the grader replaced or changed by the notebook?)")
    result: tuple[str, Any, BaseException | None]
    try:
        args, kwargs = inputs
        inputs.clear()
        with _time_limit(time_limit, name):
            try:
                out = fn(*args, **kwargs)
                del args, kwargs
                try:
                    result = ("ok", _plain(out) if private else out, None)
                except Exception as e:  # noqa: BLE001
                    result = ("output", f"{name} returned {describe(out)}, which the grader cannot compare "
                                        f"({type(e).__name__}: {e}); return tensors, numbers or tuples of them, "
                                        "as the reference does", e)
                del out
            except NotImplementedError as e:
                result = ("stub", None, e)
            except StudentTimeoutError as e:
                result = ("timeout", str(e), e)
            except Exception as e:  # the student's code raised: report it as a failed check, with context
                try:
                    text = f"{type(e).__name__}: {e}"
                except Exception:  # noqa: BLE001
                    text = type(e).__name__
                result = ("raised", text, e)
        gc.collect(0)    # finalise what the call left behind while it is still the student's time
    finally:
        _G["end_call"]()
    return result


def run_student(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, *,
                forbidden: Sequence[ModuleType] = (), time_limit: float | None = 10.0,
                name: str | None = None) -> Any:
    """Call the student's ``fn(*args, **kwargs)`` with the reference modules forbidden and a
    time limit. Raises :class:`CallsReferenceError` (or its subclass :class:`TamperingError`) or
    :class:`StudentTimeoutError`."""
    name = name or getattr(fn, "__name__", "your function")
    mods = ", ".join(m.__name__ for m in forbidden)
    files = frozenset(_module_files(forbidden))
    if _G["begin_check"](files, frozenset(), frozenset(), tuple(forbidden)) != ["ok"]:
        raise TamperingError(f"{name}: the course's grader could not start its watch, so the item scores 0")
    try:
        kind, value, exc = _call_student(fn, [tuple(args), dict(kwargs or {})], time_limit, name, private=False)
        _raise_if_tripped(name, mods)
    finally:
        hits, findings = _G["end_check"]()
    if hits or findings:
        raise _tripped(name, hits, findings, mods)
    if kind == "stub":
        raise AssertionError(f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code")
    if kind == "timeout":
        raise exc  # type: ignore[misc]
    if kind in ("raised", "output"):
        raise exc  # type: ignore[misc]
    return value


def _module_files(modules: Sequence[ModuleType]) -> set[str]:
    """The paths under which the modules' code may appear (as loaded, and resolved), as plain str."""
    files = set()
    for m in modules:
        f = getattr(m, "__file__", None)
        if isinstance(f, str) and f:
            f = str.__str__(f)
            files.add(f)
            files.add(str.__str__(os.path.realpath(f)))
            files.add(str.__str__(os.path.abspath(f)))
    return files


def _fresh_copy(module: ModuleType) -> tuple[ModuleType, Any]:
    """A private copy of ``module`` executed from its source file, so that an answer cell that
    reassigned the reference's functions (``layerwise.msd.msd_loss = my_msd_loss``) cannot make
    the check compare the submission with itself; and the module's code object (for the
    fingerprints of its functions). ``sys.modules`` is left untouched."""
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith((".py", ".pyc")):   # .pyc: installed without sources
        return module, None
    spec = importlib.util.spec_from_file_location(module.__name__, path)
    copy_ = importlib.util.module_from_spec(spec)
    code = spec.loader.get_code(module.__name__)
    exec(code, copy_.__dict__)  # noqa: S102  (the library's own code, from its file)
    return copy_, code


_LIBRARY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # .../layerwise


def _library_file(mod_name: str) -> str | None:
    """The file of ``layerwise.<...>`` in this library (a module or a package), found on disk."""
    parts = mod_name.split(".")
    if parts[0] != "layerwise":
        return None
    base = os.path.join(_LIBRARY, *parts[1:])
    for candidate in (base + ".py", base + ".pyc", os.path.join(base, "__init__.py"), os.path.join(base, "__init__.pyc")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _fingerprints(code: Any) -> frozenset[bytes]:
    """The bytecode of every function in the reference module: a copy of it compiled under another
    name (exec of the copied source, a module written to /tmp ...) still has the same bytecode."""
    out: set[bytes] = set()
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        for k in c.co_consts:
            if isinstance(k, type(c)):
                stack.append(k)
        if c is not code and len(c.co_code) >= 24:
            out.add(bytes(c.co_code))
    return frozenset(out)


def _resolve(reference: str | Callable[..., Any]) -> tuple[Callable[..., Any], ModuleType, ModuleType, Any]:
    if callable(reference) and not isinstance(reference, str):
        module = sys.modules.get(getattr(reference, "__module__", None) or "", None) or ModuleType("reference")
        return reference, module, module, None
    if not isinstance(reference, str) or "." not in reference:
        raise ValueError(f"reference must be 'package.module.function' or a function, got {reference!r}")
    mod_name, fn_name = reference.rsplit(".", 1)
    path = _library_file(mod_name)
    if path is None:                     # a reference outside the course library
        original = importlib.import_module(mod_name)
    else:                                # the library's own file, whatever sys.modules holds
        original = sys.modules.get(mod_name)
        if original is None:
            original = importlib.import_module(mod_name)
        if getattr(original, "__file__", None) not in (path, os.path.realpath(path)):
            original = ModuleType(mod_name)
            original.__file__ = path
    module, code = _fresh_copy(original)
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise ValueError(f"reference module {mod_name} has no function {fn_name!r}")
    return fn, module, original, code


def _check_case(student_fn: Callable[..., Any], ref_fn: Callable[..., Any], case: Case, name: str,
                params: list[str], mods: str, atol: float, rtol: float, time_limit: float | None, hint: str,
                seed: int | None) -> None:
    """One case, in its own frame, so that nothing of it (the expected value above all) is left
    for the next case's call to find."""
    call = _describe_call(name, params, case)
    inputs = [copy.deepcopy(case.args), copy.deepcopy(case.kwargs)]
    ref_args, ref_kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    before = _digest((ref_args, ref_kwargs))
    kind, got, exc = _call_student(student_fn, inputs, time_limit, name)
    _raise_if_tripped(name, mods)
    if _digest((ref_args, ref_kwargs)) != before:
        raise TamperingError(f"{name} scores 0 for this item: the inputs the grader keeps for the reference "
                             "were changed while it ran. This exercise asks for your own torch code.")
    if kind == "stub":
        raise AssertionError(f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code")
    if kind == "timeout":
        raise StudentTimeoutError(got)
    if kind == "raised":
        if isinstance(exc, AssertionError):
            raise AssertionError(f"{got.split(': ', 1)[-1]}\n  case: {case.name}\n  call: {call}") from None
        # the student's call is over: what the reference returns here tells the student what to aim for
        try:
            want = f"\n  expected: {describe(ref_fn(*ref_args, **ref_kwargs))}"
        except Exception:  # noqa: BLE001
            want = ""
        _raise_if_tripped(name, mods)
        raise AssertionError(f"{name} raised {got}\n  case: {case.name}\n  call: {call}{want}") from exc
    if kind == "output":
        raise AssertionError(f"{got}\n  case: {case.name}\n  call: {call}")
    expected = ref_fn(*ref_args, **ref_kwargs)
    _raise_if_tripped(name, mods)
    msg = _compare(got, expected, atol, rtol)
    if msg:
        lines = [f"{name} is not right yet on the case '{case.name}'.", f"  call: {call}", f"  {msg}",
                 f"  expected: {describe(expected)}", f"  got:      {describe(got)}"]
        if seed is not None:
            lines.append(f"  (random inputs drawn with seed {seed})")
        if hint:
            lines.append(f"  hint: {hint}")
        raise AssertionError("\n".join(lines))


def check_function(student_fn: Callable[..., Any], reference: str | Callable[..., Any], cases: Sequence[Case], *,
                   atol: float = 1e-5, rtol: float = 1e-4, time_limit: float | None = 10.0, hint: str = "",
                   seed: int | None = None) -> None:
    """Check ``student_fn`` against ``reference`` on every case; raise a teaching ``AssertionError``
    at the first case where they differ.

    ``reference`` is a dotted name (``"layerwise.msd.msd_loss"``) or the function itself. For each
    case the student's function runs first, on its own deep copy of the arguments, inside the
    guard's window; a private copy of its output is taken; only then is the reference's output
    computed (on another copy, checked to be unchanged) and compared. While the student's function
    runs, no expected value exists anywhere. An answer that calls the reference, or that inspects,
    pauses or changes the grader (see :mod:`layerwise.grading.guard`), scores 0 with a message
    that says what was seen.
    """
    if not callable(student_fn):
        raise AssertionError(f"expected a function, got {describe(student_fn)}: did you run the cell that defines it?")
    if not cases:
        raise ValueError("cases is empty")
    ref_fn, ref_module, original, code = _resolve(reference)
    name = ref_fn.__name__
    try:
        params = list(inspect.signature(ref_fn).parameters)
    except (TypeError, ValueError):
        params = []
    for case in cases:
        if not isinstance(case, Case):
            raise TypeError(f"cases must hold grading.Case objects, got {type(case).__name__}")
    mods = original.__name__
    files = frozenset(_module_files([original, ref_module]) | (   # and the name its code was compiled under
        {str.__str__(code.co_filename)} if code is not None and isinstance(code.co_filename, str) else set()))
    allowed = frozenset()
    if not isinstance(reference, str):   # a reference function, maybe defined in a notebook or a test file
        mods = f"{original.__name__}.{name}"
        ref_file = getattr(getattr(reference, "__code__", None), "co_filename", None)
        student_file = getattr(getattr(student_fn, "__code__", None), "co_filename", None)
        files = frozenset({str.__str__(ref_file)} if isinstance(ref_file, str) and ref_file != student_file else ())
        if isinstance(ref_file, str):
            allowed = frozenset({str.__str__(ref_file)})
    status = _G["begin_check"](files, _fingerprints(code), allowed, (original, ref_module))
    if status != ["ok"]:
        raise TamperingError(f"{name}: the course's grader could not start its watch, so the item scores 0 "
                             "(was the grader replaced or changed by the notebook?)")
    failure: BaseException | None = None
    try:
        for case in cases:
            _check_case(student_fn, ref_fn, case, name, params, mods, atol, rtol, time_limit, hint, seed)
    except BaseException as e:  # noqa: BLE001  (decided below, after the watch has ended)
        failure = e
    finally:
        hits, findings = _G["end_check"]()
    if hits or findings:            # what the guard saw wins over any other outcome
        raise _tripped(name, hits, findings, mods) from None
    if failure is not None:
        raise failure
