"""The grader's watch: one Python audit hook per process, installed once and never removable.

``check_function`` (in :mod:`layerwise.grading.check`) asks this guard to watch each call of a
student's function. While a check is in progress the guard

- records calls into the reference module, in every thread: a profiler follows the grading
  thread and every thread started through ``threading.Thread.start``, and the reference
  module's functions are swapped for tripwires while the student's function runs;
- records what tampering and introspection raise as audit events (PEP 578) when the code that
  caused them is the submission's (a notebook cell, code the notebook compiled, or a file outside
  the Python installation and the library): reading frames (``sys._getframe``, ``inspect``,
  ``tb_frame``, ``gi_frame``, ``sys._current_frames``), switching the profiler or tracer,
  ``gc.get_objects``/``get_referrers``/``get_referents``, ``ctypes``, building code objects,
  compiling or executing code, unpickling, signals, processes, reading the library's source;
- records notebook code that runs while the grader itself works (copying inputs, computing the
  reference output, comparing): a left-behind object, a signal handler, a patched library
  function;
- compares, after each call, what the grader relies on (``builtins``, ``torch``, ``copy``,
  ``importlib``, ``threading``, the check module itself ...) with a snapshot.

Attribution walks out from the frame that caused an event, through the standard-library
modules that act for their caller (``inspect``, ``traceback``, ``ctypes``, ``pickle`` ...): torch's or
the standard library's own use of these APIs does not count; a cell's use through them does.

**Armed** mode (``arm()``, which ``nbgrader_config.py`` runs at kernel start, before any cell)
also watches the notebook outside checks: tampering at the top level of a cell is recorded and
every later cell then fails with a message; each test cell whose code calls ``check_function``
must actually have run the grader (a cell that only appears to, because the grader was
replaced, fails when it ends); the snapshot is taken before any notebook code ran.

The hook keeps its state in closures that nothing outside it references, uses only builtins
captured when it was installed, and never calls code the notebook could have replaced. This
raises the bar a long way, but in-kernel grading cannot be airtight: the submission runs with
the kernel's rights (see the README, "For instructors").
"""

from __future__ import annotations

import sys

CTL = "layerwise.grading.ctl"
PROFILE_EVENT = "layerwise.grading.profile"


def _profile(frame, event, arg, _audit=sys.audit, _name=PROFILE_EVENT):  # noqa: ANN001
    """The profile function: forwards every event to the audit hook (it holds no state itself)."""
    _audit(_name, frame, event, arg)


def _trace_global(frame, event, arg):  # noqa: ANN001
    """The global trace function the guard installs when a notebook removed its profiler during a
    test cell: it traces nothing itself; the test cell's frame gets :func:`_trace_local`."""
    return None


def _trace_local(frame, event, arg, _audit=sys.audit, _name=PROFILE_EVENT):  # noqa: ANN001
    """Local trace function of a test cell's frame: forwards its events like :func:`_profile`."""
    _audit(_name, frame, event, arg)
    return frame.f_trace


# The control functions. Each only raises one audit event; the hook checks that the event comes
# from these very functions, called from the genuine check module, and answers through ``box``.

def api(_audit=sys.audit):
    """The guard's control functions as the hook installed them (installing it when none is)."""
    box = []
    _audit("layerwise.grading.ctl", "api", box)
    if not box:
        _install(armed=False)
        _audit("layerwise.grading.ctl", "api", box)
    return box[0]


def arm(_audit=sys.audit) -> None:
    """Install the guard in armed mode. Call it at kernel start, before any notebook cell runs
    (``nbgrader_config.py`` does, through ``IPKernelApp.exec_lines``)."""
    import layerwise.grading.check  # noqa: F401  (installs the hook; its module then is in the snapshot)
    box = []
    _audit("layerwise.grading.ctl", "api", box)
    if not box:
        _install(armed=True)
    else:
        _audit("layerwise.grading.ctl", "arm", box)


def is_armed(_audit=sys.audit) -> bool:
    box = []
    _audit("layerwise.grading.ctl", "armed", box)
    return bool(box and box[0])


def begin_check(ref_files, fingerprints, allowed_files, modules, _audit=sys.audit):
    box = []
    _audit("layerwise.grading.ctl", "begin_check", box, ref_files, fingerprints, allowed_files, modules)
    return box


def begin_call(_audit=sys.audit):
    box = []
    _audit("layerwise.grading.ctl", "begin_call", box)
    return box


def end_call(_audit=sys.audit):
    box = []
    _audit("layerwise.grading.ctl", "end_call", box)
    return box


def status(_audit=sys.audit):
    """(reference calls, other findings) recorded so far in the current check."""
    box = []
    _audit("layerwise.grading.ctl", "status", box)
    return box[0] if box else ((), ())


def end_check(_audit=sys.audit):
    box = []
    _audit("layerwise.grading.ctl", "end_check", box)
    return box[0] if box else ((), ())


def notebook_findings(_audit=sys.audit):
    """What the guard recorded outside checks (armed mode only)."""
    box = []
    _audit("layerwise.grading.ctl", "notebook", box)
    return box[0] if box else ()


# --------------------------------------------------------------------------- the hook

def _install(armed: bool) -> None:  # noqa: C901  (one closure on purpose: its state is private)
    import builtins as _b
    # Every builtin the hook's closures use is bound here, as a local of _install, so that the
    # closures keep the originals even if a notebook later rebinds builtins.<name>.
    type, len, id, isinstance, str, tuple, list = _b.type, _b.len, _b.id, _b.isinstance, _b.str, _b.tuple, _b.list
    set, frozenset, dict, int, bytes, bool, object = _b.set, _b.frozenset, _b.dict, _b.int, _b.bytes, _b.bool, _b.object
    compile, exec, sorted, zip, any, range, getattr = _b.compile, _b.exec, _b.sorted, _b.zip, _b.any, _b.range, _b.getattr
    staticmethod, classmethod, property = _b.staticmethod, _b.classmethod, _b.property
    RuntimeError, BaseException, KeyboardInterrupt = _b.RuntimeError, _b.BaseException, _b.KeyboardInterrupt
    SystemExit, TypeError, OSError, ValueError = _b.SystemExit, _b.TypeError, _b.OSError, _b.ValueError
    IndexError, AttributeError, Exception, ImportError = _b.IndexError, _b.AttributeError, _b.Exception, _b.ImportError
    import _thread
    import dis
    import functools
    import gc
    import os
    import signal
    import site
    import linecache
    import sys as sysmod
    import sysconfig
    import threading
    import time
    import types

    if armed:  # snapshot torch and numpy before any notebook code can touch them
        try:
            import numpy  # noqa: F401
            import torch  # noqa: F401
            import torch.nn.functional  # noqa: F401
        except ImportError:  # pragma: no cover
            pass

    getframe, current_frames = sysmod._getframe, sysmod._current_frames
    setprofile, getprofile, gettrace = sysmod.setprofile, sysmod.getprofile, sysmod.gettrace
    modules_, meta_path_, path_hooks_ = sysmod.modules, sysmod.meta_path, sysmod.path_hooks
    get_ident, sleep, monotonic = _thread.get_ident, time.sleep, time.monotonic
    getsignal = signal.getsignal
    line_cache = linecache.cache
    signals = tuple(sorted(int(s) for s in signal.valid_signals()))
    getcwd, stat_ = os.getcwd, os.stat
    get_objects = gc.get_objects
    gc_callbacks = gc.callbacks
    collect = gc.collect
    FunctionType, MethodType, CodeType = types.FunctionType, types.MethodType, types.CodeType
    BuiltinFunctionType, ModuleType = types.BuiltinFunctionType, types.ModuleType
    type_dict = type.__dict__["__dict__"].__get__
    module_dict = ModuleType.__dict__["__dict__"].__get__
    type_module = type.__dict__["__module__"].__get__
    function_dict = FunctionType.__dict__["__dict__"].__get__
    thread_dict = threading.Thread.__dict__["__dict__"].__get__
    thread_starters = tuple(x for x in (getattr(_thread, "start_new_thread", None), getattr(_thread, "start_new", None),
                                        getattr(_thread, "start_joinable_thread", None)) if x is not None)
    THREAD_START = threading.Thread.start.__code__
    thread_active = threading._active
    threading_globals = threading.__dict__
    RETURN_VALUE = dis.opmap.get("RETURN_VALUE", -1)
    PROFILE, CTL_ = PROFILE_EVENT, CTL
    profile_fn = _profile
    trace_global, trace_local = _trace_global, _trace_local
    settrace = sysmod.settrace
    me = modules_[__name__]
    API = {n: getattr(me, n) for n in ("api", "arm", "is_armed", "begin_check", "begin_call", "end_call",
                                        "status", "end_check", "notebook_findings")}
    API_CODE = {n: f.__code__ for n, f in API.items()}
    run_code = None
    transparent_codes = set()     # functions outside the transparent modules that act for their caller
    if "IPython" in modules_:
        try:
            from IPython.core import interactiveshell
            run_code = interactiveshell.InteractiveShell.run_code.__code__
            wrapped_open = getattr(interactiveshell, "_modified_open", None)   # IPython's open() in cells
            if isinstance(wrapped_open, types.FunctionType):
                transparent_codes.add(wrapped_open.__code__)
        except Exception:  # noqa: BLE001  (no IPython shell: no cells to watch)
            pass

    def norm(p: str) -> str:
        """An absolute, normalised path (no symlink resolution), with string operations only."""
        if not p.startswith("/"):
            p = getcwd() + "/" + p
        out = []
        for part in p.split("/"):
            if part == "" or part == ".":
                continue
            if part == "..":
                if out:
                    out.pop()
                continue
            out.append(part)
        return "/" + "/".join(out)

    def with_slash(p: str) -> str:
        return p if p.endswith("/") else p + "/"

    grading_dir = with_slash(os.path.dirname(os.path.abspath(__file__)))
    lib_dir = with_slash(os.path.dirname(grading_dir.rstrip("/")))            # .../layerwise/
    roots = set()
    for p in [sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")] + \
             list(site.getsitepackages() if hasattr(site, "getsitepackages") else []) + [lib_dir]:
        if p:
            roots.add(with_slash(norm(p)))
            roots.add(with_slash(os.path.realpath(p)))
    ROOTS = tuple(sorted(roots))
    stdlib = [with_slash(norm(p)) for p in {sysconfig.get_paths()["stdlib"], os.path.realpath(sysconfig.get_paths()["stdlib"])}]
    sitepk = [with_slash(norm(p)) for p in {sysconfig.get_paths()["purelib"], os.path.realpath(sysconfig.get_paths()["purelib"])}]
    # Modules that act on behalf of their caller: an event they raise is attributed further out.
    transparent = ["<frozen os>", "<frozen posixpath>", "<frozen genericpath>", "<frozen codecs>", "<frozen io>",
                   "<frozen runpy>"]
    for d in stdlib:
        transparent += [d + m for m in (
            "inspect.py", "traceback.py", "linecache.py", "tokenize.py", "dis.py", "pdb.py", "bdb.py", "code.py",
            "codeop.py", "logging/", "asyncio/", "ctypes/", "pickle.py", "_compat_pickle.py", "copyreg.py",
            "pickletools.py", "_pyio.py", "pathlib.py", "shutil.py", "os.py", "tempfile.py", "subprocess.py",
            "multiprocessing/", "concurrent/", "threading.py", "runpy.py", "io.py", "codecs.py", "fileinput.py",
            "zipfile", "tarfile.py", "glob.py", "types.py", "functools.py", "contextlib.py", "weakref.py",
            "_weakrefset.py", "copy.py", "signal.py", "sched.py", "timeit.py", "cProfile.py", "profile.py",
            "trace.py", "pty.py", "platform.py", "shlex.py", "operator.py", "reprlib.py", "pprint.py",
            "importlib/resources", "importlib/readers.py", "importlib/abc.py")]
    for d in sitepk:
        transparent += [d + m for m in ("stack_data/", "executing/", "pure_eval/", "asttokens/", "cloudpickle/",
                                        "dill/", "IPython/core/ultratb.py", "IPython/core/debugger.py",
                                        "IPython/core/oinspect.py", "IPython/utils/frame.py", "pydevd", "debugpy/")]
    TRANSPARENT = tuple(transparent)
    IMPORTLIB = ("<frozen importlib.", "<frozen zipimport>")
    # Threads the kernel's own machinery starts after the first cell (armed mode judges any other
    # thread that is running when a check begins as the notebook's).
    ALLOWED_THREAD_MODULES = ("ipykernel.", "IPython.", "jupyter_client.", "zmq.", "tornado.", "tqdm.",
                              "traitlets.", "comm.", "debugpy.", "execnet.", "_pytest.", "pytest_timeout", "xdist.")

    # The library's own source files (to notice a notebook reading them) and their longer lines
    # (to notice a notebook compiling a copy of them).
    lib_inodes = set()
    lib_lines = set()
    for base, _dirs, files in os.walk(lib_dir):
        if "__pycache__" in base or base.startswith(grading_dir.rstrip("/")) and False:
            continue
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(base, f)
                try:
                    st = os.stat(path)
                    lib_inodes.add((st.st_dev, st.st_ino))
                    if not path.startswith(grading_dir):
                        with open(path, encoding="utf-8") as fh:
                            for line in fh:
                                s = line.strip()
                                if len(s) >= 30 and not s.startswith(("#", '"""', "'''")):
                                    lib_lines.add(s)
                except OSError:  # pragma: no cover
                    pass

    TRUSTED, CELL, TAINTED, FOREIGN, NEUTRAL = 0, 1, 2, 3, 4
    SUBMISSION = (CELL, TAINTED, FOREIGN)
    MISSING = object()
    FrameType = types.FrameType
    dget = dict.get                      # unbound: a dict subclass cannot intercept it
    mro_of = type.__dict__["__mro__"].__get__

    # Anything a notebook hands to the hook (audit-event arguments can be forged with sys.audit,
    # attributes can hold str subclasses ...) is only type-checked and compared by identity
    # until its type is known to be a plain builtin one.
    def is_a(obj, base):
        for k in mro_of(type(obj)):
            if k is base:
                return True
        return False

    def one_of(x, options):
        for o in options:
            if x is o:
                return True
        return False

    def sname(x):
        return x if type(x) is str else "?"

    class State:
        pass

    S = State()
    S.armed = armed
    S.check = None
    S.busy = set()
    S.kcache = {}
    S.tainted = set()
    S.cell_files = set()
    S.nb_findings = []
    S.baseline = None            # thread ids alive before the first notebook cell (armed)
    S.install_threads = frozenset(current_frames())
    S.signals = {}
    S.snapshot = []
    S.rescan = False
    S.hidden_code = None
    S.hidden_file = None
    S.hidden_frame = None
    S.hidden_checks = 0
    S.templates = {}
    S.internal_errors = 0
    S.deliberate = False
    S.main_tid = threading.main_thread().ident
    S.sticky = []                # found outside checks, not stopping the notebook: added to every later check
    S.expect_unset = 0           # CPython's own unsetting of our profiler after we raised from it
    S.check_module = None
    S.lib_execs = set()          # library files whose module code has run (a second run is a re-import)

    class Check:
        pass

    class Tripwire:
        """What a reference function's code becomes while the student's function runs."""

        @property
        def real(self):  # noqa: ANN201  (reached by LOAD_ATTR in the tripwire code)
            c = S.check
            if c is not None:
                c.ref_hits.append(self.name + called_from(getframe(2)))
            raise RuntimeError(f"{self.name} calls the reference implementation, which this exercise asks you to "
                               "write yourself: the call was blocked by the course's grader")

    TRIP_MARK = 9876543210123

    # ---------------------------------------------------------------- classification
    def classify(fn):
        if type(fn) is not str:
            return NEUTRAL
        k = S.kcache.get(fn)
        if k is not None:
            return k
        if fn in S.tainted:
            k = TAINTED
        elif fn in S.cell_files:
            k = CELL
        elif fn.startswith(ROOTS) or fn.startswith("<frozen "):
            k = TRUSTED
        elif fn.startswith("<ipython-input-") and not S.armed:
            k = CELL
        elif fn.startswith("<"):
            k = NEUTRAL
        elif not S.armed and "/ipykernel_" in fn:
            k = CELL
        else:
            k = FOREIGN
        S.kcache[fn] = k
        return k

    def called_from(f):
        """' from <qualname>' when ``f`` (the caller of a reference function) is the submission's code."""
        if f is None:
            return ""
        code = f.f_code
        if classify(code.co_filename) not in SUBMISSION:
            return ""
        return " from " + sname(code.co_qualname)

    def taint(fn):
        if type(fn) is str and not fn.startswith(grading_dir):
            S.tainted.add(fn)
            S.kcache.pop(fn, None)

    def culprit(f, skip=None):
        """(kind, frame) of the first frame outwards from ``f`` that is not in a transparent module."""
        skip = TRANSPARENT if skip is None else skip
        n = 0
        while f is not None and n < 500:
            code = f.f_code
            fn = code.co_filename
            if type(fn) is not str or not (fn.startswith(skip) or code in transparent_codes):
                return classify(fn), f
            f = f.f_back
            n += 1
        return TRUSTED, None

    def via(f0, f):
        """' via inspect.py' when the event was raised by a transparent module acting for ``f``."""
        if f0 is None or f0 is f:
            return ""
        return " via " + sname(f0.f_code.co_filename).rpartition("/")[2]

    def where(f):
        return "" if f is None else f" in {sname(f.f_code.co_qualname)}()"

    # ---------------------------------------------------------------- recording
    def found(text, block=True):
        """Record a finding for the check in progress (or, armed, for the notebook); raise to
        block the operation when ``block``."""
        c = S.check
        if c is not None:
            if text not in c.findings:
                c.findings.append(text)
        elif S.armed:
            if text not in S.nb_findings:
                S.nb_findings.append(text)
        else:
            return
        if block:
            S.deliberate = True
            raise RuntimeError(f"blocked by the course's grader: the code {text}")

    # ---------------------------------------------------------------- snapshot of what the grader relies on
    def snapshot_targets():
        out = []
        mods = modules_

        def mod(name, keys=None, skip=()):
            m = dget(mods, name)
            if m is None:
                return
            try:
                d = module_dict(m)
            except TypeError:
                return
            if keys is None:
                out.append((name, d, {k: v for k, v in d.items() if type(k) is str and k not in skip and (
                    k in ("__import__", "__build_class__") or not (k.startswith("__") and k.endswith("__")))}))
            else:
                out.append((name, d, {k: d[k] for k in keys if k in d}))

        def cls(label, c):
            try:
                d = type_dict(c)
            except TypeError:
                return
            out.append((label, d, dict(d)))

        mod("builtins", skip=("exit", "quit", "get_ipython", "display", "_", "__", "___", "copyright", "credits",
                              "license", "help", "dreload", "runfile", "input", "raw_input"))  # ipykernel rebinds input
        mod("sys", keys=("setprofile", "settrace", "getprofile", "gettrace", "audit", "addaudithook", "_getframe",
                         "_current_frames", "modules", "meta_path", "path_hooks", "path_importer_cache", "exc_info"))
        for name in ("copy", "copyreg", "importlib", "importlib._bootstrap", "importlib._bootstrap_external",
                     "importlib.util", "importlib.machinery", "_thread", "signal", "gc", "types", "functools",
                     "operator", "math", "itertools", "hashlib", "inspect", "linecache", "dis", "numpy", "torch",
                     "torch.nn", "torch.nn.functional", "torch.linalg", "torch.special", "torch.fft", "torch.nn.init",
                     "torch._tensor", "torch.overrides", "torch._C._dynamo.eval_frame"):
            mod(name)
        mod("threading", skip=("_profile_hook", "_trace_hook", "_counter"))
        t = dget(mods, "torch")
        if t is not None:
            cls("torch.Tensor", dget(module_dict(t), "Tensor"))
            nn = dget(mods, "torch.nn")
            if nn is not None:
                cls("torch.nn.Module", dget(module_dict(nn), "Module"))
                cls("torch.nn.Parameter", dget(module_dict(nn), "Parameter"))
        be = dget(mods, "importlib._bootstrap_external")
        if be is not None:
            for n in ("FileFinder", "SourceFileLoader", "SourceLoader", "FileLoader", "PathFinder", "_LoaderBasics",
                      "SourcelessFileLoader", "ExtensionFileLoader"):
                c = dget(module_dict(be), n)
                if c is not None:
                    cls(n, c)
        b = dget(mods, "importlib._bootstrap")
        if b is not None:
            for n in ("ModuleSpec", "BuiltinImporter", "FrozenImporter", "_ModuleLockManager"):
                c = dget(module_dict(b), n)
                if c is not None:
                    cls(n, c)
        cls("threading.Thread", threading.Thread)
        out.append(("sys.meta_path", meta_path_, tuple(meta_path_)))
        out.append(("sys.path_hooks", path_hooks_, tuple(path_hooks_)))
        out.append(("sys.modules", None, {n: dget(mods, n) for n in (
            "sys", "builtins", "copy", "copyreg", "importlib", "importlib._bootstrap", "importlib._bootstrap_external",
            "importlib.util", "threading", "_thread", "signal", "gc", "torch", "numpy", "math", "types",
            "functools", "hashlib", "layerwise", "layerwise.grading", "layerwise.grading.guard",
            "layerwise.grading.check", "inspect")
            if n in mods}))
        return out

    def rewrapped_by_library(new, old):
        """True for a chain of functions of installed libraries that wraps the very object it
        replaced (``functools.wraps``): torch does this to ``torch.manual_seed`` when
        ``torch._dynamo`` is first imported, which an honest notebook can cause."""
        f = new
        for _ in range(6):
            if type(f) is not FunctionType:
                return False
            try:
                if classify(f.__code__.co_filename) != TRUSTED:
                    return False
                f = dget(function_dict(f), "__wrapped__")
            except (TypeError, AttributeError):
                return False
            if f is old:
                return True
        return False

    def library_hook(x):
        """True for an import finder or path hook that an installed library defines: ``six`` adds
        one to ``sys.meta_path`` when it is first imported, which an honest notebook (or a test
        run that collects other modules after the grader's start) can cause."""
        try:
            if type(x) is FunctionType:
                return classify(x.__code__.co_filename) == TRUSTED
            k = x if is_a(x, type) else type(x)
            name = type_module(k)
            m = dget(modules_, name) if type(name) is str else None
            fn = dget(module_dict(m), "__file__") if type(m) is ModuleType else None
        except (TypeError, AttributeError):
            return False
        return type(fn) is str and classify(fn) == TRUSTED

    def only_library_hooks_added(now, snap):
        """The old entries are all still there, in order, and every new one is a library's."""
        it = iter(now)
        if not all(any(a is b for b in it) for a in snap):
            return False
        return all(library_hook(x) for x in now if not any(x is y for y in snap))

    def snapshot_changes():
        """Names the notebook rebound or deleted in what the grader relies on."""
        changed = []
        for i, (label, d, snap) in enumerate(S.snapshot):
            if label == "sys.meta_path" or label == "sys.path_hooks":
                if len(d) != len(snap) or any(a is not b for a, b in zip(d, snap)):
                    if only_library_hooks_added(list(d), snap):
                        S.snapshot[i] = (label, d, tuple(d))
                    else:
                        changed.append(label)
                continue
            if label == "sys.modules":
                for n, m in snap.items():
                    if dget(modules_, n, MISSING) is not m:
                        changed.append(f"sys.modules[{n!r}]")
                continue
            for k, v in snap.items():
                new = d.get(k, MISSING)
                if new is not v and rewrapped_by_library(new, v):
                    snap[k] = new      # e.g. importing torch._dynamo wraps torch.manual_seed
                    continue
                if new is not v:
                    changed.append(f"{label}.{k}")
                    if len(changed) > 12:
                        return changed
        return changed

    # ---------------------------------------------------------------- threads, signals, tracers
    partial_type = functools.partial

    def code_kind(h, depth=0):
        """TRUSTED for builtins, ints, None and library functions; else the kind of the code that
        calling ``h`` runs (a function's, a bound method's, a partial's, a callable object's ``__call__``)."""
        t = type(h)
        if h is None or t is BuiltinFunctionType or is_a(h, int) or depth > 5:
            return TRUSTED
        if t is MethodType:
            return code_kind(h.__func__, depth + 1)
        if t is FunctionType:
            return classify(h.__code__.co_filename)
        if t is partial_type:
            return code_kind(h.func, depth + 1)
        for k in mro_of(t):
            call = dget(type_dict(k), "__call__")
            if call is not None:
                return classify(call.__code__.co_filename) if type(call) is FunctionType else TRUSTED
        return TRUSTED

    def handler_name(h):
        t = type(h)
        if t is MethodType:
            h = h.__func__
            t = type(h)
        if t is partial_type:
            h = h.func
            t = type(h)
        if t is FunctionType:
            return sname(h.__code__.co_qualname)
        return "a callable object"

    def registered_hooks():
        """Callables from the notebook that the interpreter calls later on its own: gc callbacks,
        sys.excepthook / unraisablehook, threading.excepthook."""
        out = []
        for h in list(gc_callbacks):
            if code_kind(h) in SUBMISSION:
                out.append(f"a gc callback ({handler_name(h)})")
        for label, h in (("sys.excepthook", dget(module_dict(sysmod), "excepthook")),
                         ("sys.unraisablehook", dget(module_dict(sysmod), "unraisablehook")),
                         ("threading.excepthook", dget(threading_globals, "excepthook"))):
            if code_kind(h) in SUBMISSION:
                out.append(f"{label} ({handler_name(h)})")
        return out

    def record_signals():
        out = {}
        for s in signals:
            try:
                out[s] = getsignal(s)
            except (ValueError, OSError):
                pass
        return out

    def signal_changes(reference):
        bad = []
        for s in signals:
            try:
                h = getsignal(s)
            except (ValueError, OSError):
                continue
            if h is not reference.get(s, MISSING) and code_kind(h) in SUBMISSION:
                bad.append(f"{handler_name(h)} for signal {s}")
        return bad

    def thread_name(tid):
        t = dget(thread_active, tid)
        if t is None:
            return f"a thread started outside threading (id {tid})"
        try:
            name = dget(thread_dict(t), "_name")
        except TypeError:
            name = None
        return f"thread {name!r}" if type(name) is str else f"thread {tid}"

    def thread_is_suspicious(tid, f, strict):
        g = f
        n = 0
        while g is not None and n < 300:
            if classify(g.f_code.co_filename) in SUBMISSION:
                return True
            g = g.f_back
            n += 1
        if not strict:
            return False
        t = dget(thread_active, tid)
        if t is None:
            return True
        try:
            mod = type_dict(type(t)).get("__module__")
            if mod == "threading" or type(mod) is not str:
                target = dget(thread_dict(t), "_target")
                tt = type(target)
                if tt is MethodType:
                    target = target.__func__
                    tt = type(target)
                if tt is FunctionType:
                    mod = target.__module__
                elif tt is BuiltinFunctionType:
                    mod = target.__module__
                else:
                    mod = None
        except (TypeError, AttributeError):
            return True
        return not (type(mod) is str and mod.startswith(ALLOWED_THREAD_MODULES))

    def foreign_threads():
        me_ = get_ident()
        out = []
        strict = S.armed and S.baseline is not None
        base = S.baseline if strict else S.install_threads
        for tid, f in current_frames().items():
            if tid == me_ or (strict and tid in base):
                continue
            if thread_is_suspicious(tid, f, strict and tid not in base):
                out.append(thread_name(tid))
        return out

    # ---------------------------------------------------------------- tripwires
    def template(n):
        t = S.templates.get(n)
        if t is None:
            names = [f"v{i}" for i in range(n)]
            lines = ["def _outer():"]
            if names:
                lines.append("    " + " = ".join(names) + " = None")
            lines.append("    def _trip(*args, **kwargs):")
            if names:
                lines.append("        if False:")
                lines.append("            (" + ", ".join(names) + ",)")
            lines.append(f"        return ({TRIP_MARK}).real")
            lines.append("    return _trip")
            ns = {}
            exec(compile("\n".join(lines) + "\n", "<layerwise grading tripwire>", "exec"), ns)  # noqa: S102
            t = S.templates[n] = ns["_outer"]().__code__
        return t

    def reference_functions(mods, ref_files):
        seen = set()
        out = []

        def add(f, depth=0):
            if type(f) is not FunctionType or id(f) in seen or depth > 4:
                return
            seen.add(id(f))
            fn = f.__code__.co_filename
            if type(fn) is str and fn in ref_files:
                out.append(f)
            try:
                w = dget(function_dict(f), "__wrapped__")
            except TypeError:
                w = None
            if w is not None:
                add(w, depth + 1)

        def add_any(v, depth=0):
            t = type(v)
            if t is FunctionType:
                add(v)
            elif t is staticmethod or t is classmethod:
                add(v.__func__)
            elif t is property:
                for g in (v.fget, v.fset, v.fdel):
                    add(g)
            elif depth == 0 and is_a(v, type):
                try:
                    for x in list(type_dict(v).values()):
                        add_any(x, 1)
                except TypeError:
                    pass

        for m in mods:
            try:
                d = module_dict(m)
            except TypeError:
                continue
            for v in list(d.values()):
                add_any(v)
        if S.rescan:
            for o in get_objects():
                if type(o) is FunctionType and id(o) not in seen:
                    fn = o.__code__.co_filename
                    if type(fn) is str and fn in ref_files:
                        seen.add(id(o))
                        out.append(o)
        trips = []
        for f in out:
            code = f.__code__
            obj = Tripwire()
            obj.name = sname(code.co_name)
            t = template(len(code.co_freevars))
            consts = tuple(obj if (type(k) is int and k == TRIP_MARK) else k for k in t.co_consts)
            trips.append((f, code, t.replace(co_consts=consts, co_name=obj.name)))
        return trips

    def arm_tripwires(c):
        for f, orig, trip in c.trips:
            if f.__code__ is orig:
                f.__code__ = trip

    def disarm_tripwires(c):
        for f, orig, trip in c.trips:
            if f.__code__ is trip:
                f.__code__ = orig

    # ---------------------------------------------------------------- control
    def caller_is(frame, name):
        return frame is not None and frame.f_code is API_CODE[name]

    def genuine_check_frame(f):
        if f is None:
            return False
        fn = f.f_code.co_filename
        return type(fn) is str and fn.startswith(grading_dir)

    def called_by_check(f, c):
        """``f`` (the grader's window function) runs for the check in progress: its caller, or that
        caller's caller (check_function -> _check_case -> _call_student), is the check's frame."""
        g = f.f_back
        for _ in range(2):
            if g is None:
                return False
            if g is c.frame:
                return True
            if not genuine_check_frame(g):
                return False
            g = g.f_back
        return False

    def all_of_type(xs, t):
        for x in xs:
            if type(x) is not t:
                return False
        return True

    def on_ctl(args, tid):
        if len(args) < 2:
            return
        op, box = args[0], args[1]
        if type(op) is not str or type(box) is not list:
            return
        if op == "api":
            box.append(dict(API))
            return
        if op == "armed":
            box.append(S.armed)
            return
        if op == "notebook":
            box.append(tuple(S.nb_findings))
            return
        f1 = getframe(2)   # 0: on_ctl, 1: hook, 2: the control function that raised the event
        if op == "arm":
            if caller_is(f1, "arm") and not S.armed:
                S.armed = True
                S.kcache.clear()
                S.snapshot = snapshot_targets()
            return
        if op not in API_CODE or op in ("api", "arm", "is_armed", "notebook_findings") or not caller_is(f1, op):
            return
        f2 = f1.f_back
        if not genuine_check_frame(f2):
            return
        c = S.check
        if op == "begin_check":
            if c is not None:
                if tid == c.tid or tid in c.watched:
                    found("called the grader from inside the graded function", block=False)
                S.deliberate = True
                raise RuntimeError("the course's grader is already checking a function")
            if len(args) < 6:
                return
            ref_files, fps, allowed, mods = args[2], args[3], args[4], args[5]
            if type(ref_files) is not frozenset or type(fps) is not frozenset or type(allowed) is not frozenset \
                    or type(mods) is not tuple or not all_of_type(ref_files, str) or not all_of_type(fps, bytes) \
                    or not all_of_type(allowed, str):
                return
            c = Check()
            c.tid = tid
            c.frame = f2
            c.ref_files = ref_files
            c.fps = fps
            c.allowed = allowed
            c.findings = []
            c.inherited = list(S.nb_findings) + [x for x in S.sticky if x not in S.nb_findings]
            c.ref_hits = []
            c.window = False
            c.watched = set()
            c.pending = []
            c.unwatched = 0
            c.threads_before = frozenset()
            caller = f2.f_back
            c.counted = bool(S.hidden_file is not None and caller is not None
                             and caller.f_code.co_filename == S.hidden_file)
            g = f2.f_globals
            c.mod_dict = g
            c.mod_snap = dict(g)
            c.prev_profile = getprofile()
            c.prev_thread_profile = dget(threading_globals, "_profile_hook")
            c.signals = record_signals()
            c.trips = reference_functions(mods, ref_files)
            c.tripped = frozenset(id(t[0]) for t in c.trips)
            c.prev_trace = gettrace()
            S.check = c
            if S.check_module is None:
                cm = dget(modules_, "layerwise.grading.check")
                if cm is not None and type(cm) is ModuleType and module_dict(cm) is g:
                    S.check_module = cm
                    for label, d, snap in S.snapshot:
                        if label == "sys.modules":
                            snap["layerwise.grading.check"] = cm
            # what was already there when the check began
            changes = snapshot_changes()
            if changes:
                found("changed what the grader relies on: " + ", ".join(changes), block=False)
            bad = signal_changes(S.signals)
            if bad:
                found(f"installed a signal handler ({bad[0]}) that is still in place", block=False)
            if code_kind(gettrace()) in SUBMISSION:
                found("installed a trace function (sys.settrace) that is still in place", block=False)
            if c.prev_profile is not profile_fn and code_kind(c.prev_profile) in SUBMISSION:
                found("installed a profile function (sys.setprofile) that is still in place", block=False)
            th = foreign_threads()
            if th:
                found(f"started {th[0]}, which is running while the grader checks", block=False)
            for h in registered_hooks():
                found(f"registered {h}, which is still in place", block=False)
            setprofile(profile_fn)
            box.append("ok")
            return
        if c is None or tid != c.tid:
            return
        if op == "begin_call":
            if c.window or not called_by_check(f2, c):
                return
            c.threads_before = frozenset(current_frames())
            c.call_trace = gettrace()
            c.window = True
            if getprofile() is not profile_fn:
                setprofile(profile_fn)
            arm_tripwires(c)
            box.append("ok")
            return
        if op == "end_call":
            if not c.window or not called_by_check(f2, c):
                return
            c.window = False
            disarm_tripwires(c)
            if getprofile() is not profile_fn:
                setprofile(profile_fn)
            after_call(c)
            box.append("ok")
            return
        if op == "status":
            box.append(report(c))
            return
        if op == "end_check":
            if f2 is not c.frame:
                return
            if c.window:
                c.window = False
                disarm_tripwires(c)
            setprofile(c.prev_profile)
            threading_globals["_profile_hook"] = c.prev_thread_profile
            if c.counted:
                S.hidden_checks += 1
            S.check = None
            box.append(report(c))
            return

    def report(c):
        """(reference calls, findings): this check's own findings first, then those inherited from
        earlier in the notebook."""
        return tuple(c.ref_hits), tuple(c.findings) + tuple(x for x in c.inherited if x not in c.findings)

    def after_call(c):
        changes = snapshot_changes()
        if changes:
            found("changed what the grader relies on: " + ", ".join(changes), block=False)
        changed = sorted(k for k, v in c.mod_snap.items() if type(k) is str and dget(c.mod_dict, k, MISSING) is not v)
        if changed:
            found("changed the grader's own functions: " + ", ".join(changed[:5]), block=False)
        bad = signal_changes(c.signals)
        if bad:
            found(f"installed a signal handler ({bad[0]})", block=False)
        for h in registered_hooks():
            found(f"registered {h}", block=False)
        tr = gettrace()
        if tr is not c.call_trace:
            if code_kind(tr) in SUBMISSION:
                found("installed a trace function (sys.settrace)", block=False)
            settrace(c.call_trace)
        # threads it started must be done when it returns
        deadline = monotonic() + 0.3
        while True:      # (a library's own helper thread, e.g. tqdm's monitor, may stay)
            alive = [t for t, f in current_frames().items()
                     if t not in c.threads_before and thread_is_suspicious(t, f, True)]
            if not alive or monotonic() > deadline:
                break
            sleep(0.005)
        if alive:
            found(f"started {thread_name(alive[0])}, which was still running when the function returned", block=False)
        for t in c.pending:
            try:
                ident = dget(thread_dict(t), "_ident")
            except TypeError:
                ident = None
            if type(ident) is int and ident not in c.watched:
                found("started a thread that ran outside the grader's watch (was threading.setprofile changed?)",
                      block=False)
        if c.unwatched:
            found("started a thread with _thread directly, outside the grader's watch", block=False)

    # ---------------------------------------------------------------- profile events
    def on_profile(args, tid):
        if len(args) != 3:
            return
        frame, ev, arg = args[0], args[1], args[2]
        if type(frame) is not FrameType or type(ev) is not str:
            return
        c = S.check
        if c is not None:
            if tid == c.tid:
                inside = c.window
            else:
                # a thread whose profiler we set up, through threading._profile_hook, in Thread.start
                c.watched.add(tid)
                inside = True
            if ev == "call":
                code = frame.f_code
                fn = code.co_filename
                if type(fn) is not str:
                    return
                if inside:
                    if fn in c.ref_files:
                        c.ref_hits.append(sname(code.co_name) + called_from(frame.f_back))
                    elif code is THREAD_START:
                        t = dget(frame.f_locals, "self")
                        if t is not None:
                            c.pending.append(t)
                        threading_globals["_profile_hook"] = profile_fn
                    else:
                        k = classify(fn)
                        if (k == NEUTRAL or k == TAINTED or (k == FOREIGN and S.armed)) and code.co_code in c.fps:
                            c.ref_hits.append(f"{sname(code.co_name)} (a copy of the reference's code)"
                                              + called_from(frame.f_back))
                else:
                    k = classify(fn)
                    if (k == CELL or k == TAINTED or k == FOREIGN) and fn not in c.allowed:
                        found(f"kept running while the grader was checking the result "
                              f"(in {sname(code.co_name)}())", block=False)
            elif ev == "c_call" and inside and one_of(arg, thread_starters) and frame.f_code is not THREAD_START:
                c.unwatched += 1
            return
        if S.hidden_code is not None and tid == S.main_tid:
            if ev == "call":
                if S.hidden_frame is None and frame.f_code is S.hidden_code:
                    S.hidden_frame = frame
            elif ev == "return" and frame is S.hidden_frame:
                S.hidden_frame = None
                S.hidden_code = None
                # the watch of this test cell is over: what follows (IPython showing a traceback,
                # the next cell) runs without the profiler or tracer
                setprofile(None)
                if gettrace() is trace_global:
                    settrace(None)
                try:
                    normal = frame.f_code.co_code[frame.f_lasti] == RETURN_VALUE
                except (IndexError, TypeError):
                    normal = False
                if normal and S.hidden_checks == 0:
                    S.deliberate = True
                    S.expect_unset = 1        # CPython unsets the profiler (or tracer) it raised from
                    raise RuntimeError(
                        "this test cell calls check_function, but the course's grader never ran here: something in "
                        "the notebook replaced or bypassed it, so this item scores 0. The exercise asks for your own "
                        "torch code; leave the grader and the test cells as they are.")

    # ---------------------------------------------------------------- cells (armed)
    def calls_check_function(code, depth=0):
        for n in code.co_names:
            if type(n) is str and n == "check_function":
                return True
        if depth > 3:
            return False
        for k in code.co_consts:
            if type(k) is CodeType and calls_check_function(k, depth + 1):
                return True
        return False

    def is_test_cell(code, fn):
        """A test cell's code calls check_function and its source carries nbgrader's hidden-test
        marker (IPython registers each cell's source in linecache before running it)."""
        if not calls_check_function(code):
            return False
        entry = dget(line_cache, fn)
        if type(entry) is not tuple or len(entry) < 3 or type(entry[2]) is not list:
            return True               # no source to look at: treat it as a test cell
        for line in entry[2]:
            if type(line) is str and "BEGIN HIDDEN TESTS" in line:
                return True
        return False

    def on_cell(code, f1):
        fn = code.co_filename
        if type(fn) is not str:
            return
        # a cell run from inside another cell (get_ipython().run_cell) is code the notebook generated
        g = f1.f_back
        n = 0
        nested = False
        while g is not None and n < 300:
            if classify(g.f_code.co_filename) in SUBMISSION:
                nested = True
                break
            g = g.f_back
            n += 1
        if nested:
            taint(fn)
            return
        if fn not in S.tainted:
            S.cell_files.add(fn)
            S.kcache.pop(fn, None)
        if not S.armed:
            return
        if S.baseline is None:
            S.baseline = frozenset(current_frames())
            S.signals = record_signals()
        c = S.check
        if c is not None:  # a check left behind by an interrupted cell
            disarm_tripwires(c)
            threading_globals["_profile_hook"] = c.prev_thread_profile
            S.check = None
        changes = snapshot_changes()
        if changes:
            found("changed what the grader relies on: " + ", ".join(changes), block=False)
        bad = signal_changes(S.signals)
        if bad:
            found(f"installed a signal handler ({bad[0]})", block=False)
        if code_kind(gettrace()) in SUBMISSION:
            found("installed a trace function (sys.settrace)", block=False)
        p = getprofile()
        if p is not None and p is not profile_fn and code_kind(p) in SUBMISSION:
            found("installed a profile function (sys.setprofile)", block=False)
        th = foreign_threads()
        if th:
            found(f"started {th[0]}, which is still running", block=False)
        for h in registered_hooks():
            found(f"registered {h}", block=False)
        if S.nb_findings:
            if getprofile() is profile_fn:
                setprofile(None)
            S.hidden_code = None
            S.deliberate = True
            raise RuntimeError(
                "The course's grader stopped this notebook here. Earlier, the notebook's code "
                + "; ".join(S.nb_findings[:30])
                + ("" if not S.sticky else "; it also " + "; ".join(S.sticky[:30]))
                + ". This exercise asks for your own torch code: a notebook that inspects, pauses or changes the "
                "grader scores 0 from that point on. If this came from leftover debugging code, remove it and ask "
                "your instructor to re-grade.")
        S.expect_unset = 0
        if gettrace() is trace_global:
            settrace(None)
        if is_test_cell(code, fn):
            S.hidden_code = code
            S.hidden_file = fn
            S.hidden_frame = None
            S.hidden_checks = 0
            setprofile(profile_fn)
        else:
            S.hidden_code = None
            S.hidden_file = None
            if getprofile() is profile_fn:
                setprofile(None)

    # ---------------------------------------------------------------- audit events
    def on_exec(ev, args, tid):
        code = args[0] if args else None
        if type(code) is not CodeType:
            return
        f1 = getframe(2)
        if f1 is None:
            return
        if run_code is not None and f1.f_code is run_code:
            on_cell(code, f1)
            return
        fn = code.co_filename
        if S.check is None and not S.armed:
            if type(fn) is str and fn.startswith(lib_dir):
                if fn in S.lib_execs and culprit(f1, TRANSPARENT + IMPORTLIB)[0] in SUBMISSION:
                    S.rescan = True
                S.lib_execs.add(fn)
            return
        lib = type(fn) is str and fn.startswith(lib_dir)
        again = lib and fn in S.lib_execs
        if lib:
            S.lib_execs.add(fn)
        k, f = culprit(f1)
        if k not in SUBMISSION:
            if again and culprit(f1, TRANSPARENT + IMPORTLIB)[0] in SUBMISSION:
                S.rescan = True      # the notebook re-imported a library module: look for old copies too
            return
        if lib:
            S.rescan = True
            found(f"executed the library's own code ({fn.rpartition('/')[2]}){where(f)}")
        elif S.check is not None:
            found(f"executed code generated at run time (exec/eval){where(f)}")

    def on_compile(ev, args, tid):
        if len(args) < 2:
            return
        src, fn = args[0], args[1]
        f0 = getframe(2)
        k, f = culprit(f0)
        if k not in SUBMISSION:
            return
        taint(fn)
        if type(fn) is str and (fn.startswith(ROOTS) or (S.armed and fn in S.cell_files)):
            found(f"compiled code under the name of a library file or of a cell ({fn.rpartition('/')[2]}){where(f)}")
        if S.check is not None:
            found(f"compiled code at run time (compile/exec/eval){where(f)}")
            return
        if not S.armed:
            return
        text = None
        if type(src) is str:
            text = src
        elif type(src) is bytes:
            text = src.decode("utf-8", "replace")
        if text is not None:
            hits = 0
            for line in text.split("\n"):
                if line.strip() in lib_lines:
                    hits += 1
                    if hits >= 3:
                        found(f"compiled a copy of the library's source{where(f)}")
                        return

    def path_of(p):
        if type(p) is bytes:
            p = p.decode("utf-8", "surrogateescape")
        if type(p) is not str or not p:
            return None
        return norm(p)

    def is_lib_file(p):
        try:
            st = stat_(p)
        except (OSError, ValueError, TypeError):
            return False
        return (st.st_dev, st.st_ino) in lib_inodes

    def on_open(ev, args, tid):
        if (S.check is None and not S.armed) or not args:
            return
        p = path_of(args[0])
        if p is None:
            return
        mode = args[1] if len(args) > 1 else None
        flags = args[2] if len(args) > 2 else 0
        writing = (type(mode) is str and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or \
                  (type(flags) is int and bool(flags & 0o3))        # O_WRONLY | O_RDWR
        proc = p.startswith("/proc/") and (p.endswith("/mem") or "/mem" in p)
        if writing:
            if not (proc or p.startswith(ROOTS) or is_lib_file(p)):
                return
        elif not (proc or (p.endswith((".py", ".pyc")) and (p.startswith(lib_dir) or is_lib_file(p)))):
            return
        f0 = getframe(2)
        k, f = culprit(f0)
        if k not in SUBMISSION:
            return
        name = p.rpartition("/")[2]
        if proc:
            found(f"opened the process's memory ({p}){where(f)}")
        elif writing:
            found(f"wrote to {name} in the Python installation or the library{where(f)}")
        else:
            found(f"read the library's source ({name}){via(f0, f)}{where(f)}")

    def on_fs(ev, args, tid):
        if S.check is None and not S.armed:
            return
        hit = False
        for a in args[:2]:
            p = path_of(a)
            if p is not None and (p.startswith(ROOTS) or is_lib_file(p)):
                hit = True
        if not hit:
            return
        f0 = getframe(2)
        k, f = culprit(f0)
        if k in SUBMISSION:
            found(f"changed files of the Python installation or the library ({ev}){where(f)}")

    DESCRIBE = {
        "sys._getframe": "read the call stack (sys._getframe)",
        "sys._current_frames": "read the call stacks of all threads (sys._current_frames)",
        "sys.setprofile": "switched the grader's watch (sys.setprofile)",
        "sys.settrace": "installed a trace function (sys.settrace)",
        "sys.addaudithook": "added an audit hook (sys.addaudithook)",
        "gc.get_objects": "searched the interpreter's objects (gc.get_objects)",
        "gc.get_referrers": "searched the interpreter's objects (gc.get_referrers)",
        "gc.get_referents": "searched the interpreter's objects (gc.get_referents)",
        "code.__new__": "built a code object at run time (code.__new__ / code.replace)",
        "function.__new__": "built a function from a code object (types.FunctionType)",
        "marshal.loads": "loaded code with marshal",
        "marshal.load": "loaded code with marshal",
        "pickle.find_class": "unpickled objects (pickle.find_class)",
        "os.kill": "sent a signal (os.kill)",
        "os.killpg": "sent a signal (os.killpg)",
        "signal.pthread_kill": "sent a signal (signal.pthread_kill)",
        "subprocess.Popen": "started a process (subprocess)",
        "os.system": "started a process (os.system)",
        "os.exec": "replaced the process (os.exec*)",
        "os.posix_spawn": "started a process (os.posix_spawn)",
        "os.spawn": "started a process (os.spawn*)",
        "os.fork": "forked the process (os.fork)",
        "os.forkpty": "forked the process (os.forkpty)",
        "pty.spawn": "started a process (pty.spawn)",
        "mmap.__new__": "mapped memory (mmap)",
        "sys._getframemodulename": "read the call stack (sys._getframemodulename)",
    }
    # In armed mode these count outside checks too (at the top level of a cell).
    NOTEBOOK_LEVEL = frozenset({
        "sys.setprofile", "sys.settrace", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "code.__new__", "function.__new__", "marshal.loads", "marshal.load", "os.kill",
        "os.killpg", "signal.pthread_kill", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
        "os.spawn", "os.fork", "os.forkpty", "pty.spawn"})
    # Let through (recorded): the grader's watch survives them (the tripwires, and the profiler is
    # put back), so that the reference call that usually follows is recorded too.
    NOT_BLOCKED = frozenset({"sys.setprofile", "sys.settrace"})
    FRAME_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "sys._getframemodulename"})
    FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code", "gi_code", "cr_code",
                             "ag_code"})

    def sticky(text):
        if text not in S.sticky:
            S.sticky.append(text)

    def in_test_cell(tid):
        return S.armed and S.check is None and S.hidden_frame is not None and tid == S.main_tid

    def on_simple(ev, args, tid):
        c = S.check
        if ev in NOT_BLOCKED and S.expect_unset:
            S.expect_unset -= 1      # CPython unsetting what raised: not the notebook's doing
            return
        if c is None and not (S.armed and (ev in NOTEBOOK_LEVEL or (ev in FRAME_EVENTS and in_test_cell(tid)))):
            return
        f0 = getframe(2)
        k, f = culprit(f0)
        if k not in SUBMISSION:
            return
        text = DESCRIBE.get(ev, ev)
        if ev == "pickle.find_class" and len(args) >= 2 and type(args[0]) is str and type(args[1]) is str:
            text = f"unpickled {args[0]}.{args[1]} (pickle.find_class)"
        text = text + via(f0, f) + where(f)
        if c is None and ev in NOT_BLOCKED:
            # Outside checks, pausing or replacing the profiler or tracer does not stop the notebook;
            # it fails every later item. The test cell in progress keeps its watch: whichever of
            # profiler and tracer this call removes, the other one is put in place first.
            sticky(text)
            hf = S.hidden_frame
            if hf is not None and tid == S.main_tid:
                if ev == "sys.setprofile":
                    settrace(trace_global)
                    hf.f_trace = trace_local
                    hf.f_trace_lines = False
                else:
                    setprofile(profile_fn)
            return
        if c is None and ev in FRAME_EVENTS:
            sticky(text)         # a frame taken during a test cell's visible tests fails every later check
            return
        found(text, block=ev not in NOT_BLOCKED)

    def on_getattr(ev, args, tid):
        if len(args) < 2 or type(args[1]) is not str:
            return
        name = args[1]
        c = S.check
        if c is None:
            if S.armed:
                on_getattr_outside(args, tid)
            return
        if name == "__code__":
            obj = args[0]
            if not c.window or type(obj) is not FunctionType:
                return
            code = obj.__code__
            fn = code.co_filename
            if id(obj) in c.tripped or (type(fn) is str and (fn in c.ref_files or fn.startswith(grading_dir))):
                f0 = getframe(2)
                k, f = culprit(f0)
                if k in SUBMISSION:
                    found(f"read the code object of {sname(code.co_name)}{where(f)}")
            return
        if name not in FRAME_ATTRS:
            return
        f0 = getframe(2)
        k, f = culprit(f0)
        if k in SUBMISSION:
            found(f"read a frame ({name}){via(f0, f)}{where(f)}")

    def on_getattr_outside(args, tid):
        """Armed, during a test cell's visible tests: a frame taken fails every later check."""
        if len(args) < 2 or type(args[1]) is not str or args[1] not in FRAME_ATTRS or not in_test_cell(tid):
            return
        f0 = getframe(3)
        k, f = culprit(f0)
        if k in SUBMISSION:
            sticky(f"read a frame ({args[1]}){via(f0, f)}{where(f)}")

    def on_setattr(ev, args, tid):
        if len(args) < 2 or type(args[1]) is not str:
            return
        obj, name = args[0], args[1]
        if type(obj) is not FunctionType or name not in ("__code__", "__defaults__", "__kwdefaults__"):
            return
        if S.check is None and not S.armed:
            return
        fn = obj.__code__.co_filename
        ours = type(fn) is str and fn.startswith(grading_dir)
        if not ours and S.check is None:
            return
        f0 = getframe(2)
        k, f = culprit(f0)
        if k in SUBMISSION:
            found(f"changed {name} of {sname(obj.__code__.co_name)}{where(f)}")

    def on_ctypes(ev, args, tid):
        if S.check is None and not S.armed:
            return
        f0 = getframe(2)
        k, f = culprit(f0)
        if k not in SUBMISSION:
            return
        what = ev
        if ev.startswith("ctypes.dlsym") and len(args) >= 2 and type(args[1]) is str:
            what = f"{ev} {args[1]}"
        found(f"used ctypes ({what}){where(f)}")

    handlers = {
        CTL_: None,
        "exec": on_exec,
        "compile": on_compile,
        "open": on_open,
        "object.__getattr__": on_getattr,
        "object.__setattr__": on_setattr,
    }
    for ev in DESCRIBE:
        handlers[ev] = on_simple
    for ev in ("os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate", "os.chmod", "os.chown",
               "os.utime", "os.mkdir", "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree",
               "shutil.rmtree", "shutil.move", "shutil.chown", "os.chflags", "os.lchflags"):
        handlers[ev] = on_fs

    def hook(event, args):
        if type(event) is not str:
            return
        if event == PROFILE:
            h = on_profile
        else:
            h = handlers.get(event, MISSING)
            if h is MISSING:
                if not event.startswith("ctypes."):
                    return
                h = on_ctypes
        if type(args) is not tuple:
            return
        tid = get_ident()
        if tid in S.busy:
            return
        S.busy.add(tid)
        try:
            if h is on_profile:
                on_profile(args, tid)
            elif h is None:
                on_ctl(args, tid)
            else:
                h(event, args, tid)
        except RuntimeError:
            if S.deliberate:
                S.deliberate = False
                raise
            S.internal_errors += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001  (a bug here must never break the kernel)
            S.internal_errors += 1
        finally:
            S.busy.discard(tid)

    S.snapshot = snapshot_targets()
    sysmod.addaudithook(hook)
