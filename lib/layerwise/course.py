"""Course machinery: find the chapters and assignments, execute the book, release exercises.

Everything is discovered from the directory layout, so adding a paper never touches this file:

- chapters: ``book/<part>/<nn>_<name>.ipynb``
- assignments: ``solutions/<nn>_<name>/<nn>_<name>.ipynb`` (nbgrader source), released to
  ``exercises/<nn>_<name>/`` by ``nbgrader generate_assignment``.

Command line (used by the Makefile)::

    python -m layerwise.course execute [--profile auto] [--out _build/src] [--workers 2]
    python -m layerwise.course release
    python -m layerwise.course verdicts --from _build/src [--write]

The fast profile's verdicts of every chapter are pinned in ``tests/verdicts.json`` (the chapter
tests fail, naming the claim, when one changes); ``verdicts --write`` re-pins the chapters found in
an executed book (the others stay as pinned), a deliberate act to review in the diff.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHAPTER_RE = re.compile(r"^\d\d[a-z]?_[a-z0-9_]+\.ipynb$")
BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib")
VERDICTS = Path("tests") / "verdicts.json"


def repo_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder above ``start`` (default: cwd) with ``_toc.yml``."""
    p = (start or Path.cwd()).resolve()
    for q in (p, *p.parents):
        if (q / "_toc.yml").exists() and (q / "book").is_dir():
            return q
    raise FileNotFoundError(f"no course root (a folder with _toc.yml and book/) above {p}")


def chapters(root: Path) -> list[Path]:
    """Every chapter notebook under ``book/``, sorted by number."""
    found = [p for p in (root / "book").rglob("*.ipynb")
             if ".ipynb_checkpoints" not in p.parts and CHAPTER_RE.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def assignments(root: Path) -> list[str]:
    """The names of every nbgrader assignment in ``solutions/``."""
    return sorted(d.name for d in (root / "solutions").iterdir()
                  if d.is_dir() and (d / f"{d.name}.ipynb").exists())


def _tag_injected_cell(path: Path) -> None:
    """Hide papermill's injected-parameters cell in the built book (tag it ``remove-cell``)."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell["metadata"]["tags"] = tags + ["remove-cell"]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def execute_chapter(src: Path, dest: Path, profile: str = "auto", timeout: int = 1800) -> float:
    """Execute one chapter with papermill (``PROFILE=profile``) into ``dest``; cwd is ``dest``'s
    folder, so the chapter's results JSON lands next to it. Returns seconds taken."""
    import papermill as pm

    dest.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LAYERWISE_PROGRESS", "0")  # no stale progress bars in the built book
    t0 = time.perf_counter()
    pm.execute_notebook(str(src), str(dest), parameters={"PROFILE": profile}, cwd=str(dest.parent),
                        kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    _tag_injected_cell(dest)
    return time.perf_counter() - t0


def stage_book(root: Path, out: Path) -> None:
    """Copy the book's sources (config, toc, bibliography, every non-notebook page) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, out / name)
    for p in (root / "book").rglob("*"):
        if p.is_file() and p.suffix != ".ipynb" and ".ipynb_checkpoints" not in p.parts:
            target = out / p.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)


def _execute_one(args: tuple[str, str, str]) -> float:
    src, dest, profile = args
    return execute_chapter(Path(src), Path(dest), profile)


def execute_book(root: Path, out: Path, profile: str = "auto", workers: int = 1) -> dict[str, float]:
    """Stage the book into ``out`` and execute every chapter there, ``workers`` chapters at a time
    (each in its own kernel; on a CPU the fast profile uses one torch thread per kernel, see
    :func:`layerwise.core.env.setup`). Returns seconds per chapter."""
    from concurrent.futures import ProcessPoolExecutor

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    stage_book(root, out)
    jobs = [(str(nb), str(out / nb.relative_to(root)), profile) for nb in chapters(root)]
    times = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (src, _, _), seconds in zip(jobs, pool.map(_execute_one, jobs)):
            rel = str(Path(src).relative_to(root))
            times[rel] = seconds
            print(f"executed {rel} (PROFILE={profile}) in {seconds:.1f} s", flush=True)
    return times


def collect_verdicts(executed: Path) -> dict[str, list[dict[str, str]]]:
    """``{chapter: [{"claim", "reproduced"}, ...]}`` from the ``*.results.json`` files under ``executed``."""
    found = {}
    for path in sorted(Path(executed).rglob("*.results.json")):
        table = json.loads(path.read_text())
        found[table["chapter"]] = {"profile": table["profile"],
                                   "rows": [{"claim": r["claim"], "reproduced": r["reproduced"]} for r in table["rows"]]}
    return found


def pinned_verdicts(root: Path) -> dict:
    """The committed fast-profile verdicts (``tests/verdicts.json``), or ``{}`` if there are none yet."""
    path = root / VERDICTS
    return json.loads(path.read_text()) if path.exists() else {}


def verdict_changes(pinned: list[dict], rows: list[dict]) -> list[str]:
    """Sentences naming every claim whose verdict differs from the pinned one (or that appeared or went)."""
    out = []
    old = {r["claim"]: r["reproduced"] for r in pinned}
    new = {r["claim"]: r["reproduced"] for r in rows}
    for claim, verdict in new.items():
        if claim not in old:
            out.append(f"new claim (not pinned): {claim!r} -> {verdict}")
        elif old[claim] != verdict:
            out.append(f"verdict changed: {claim!r}: pinned {old[claim]}, now {verdict}")
    out += [f"claim gone: {claim!r} (pinned {verdict})" for claim, verdict in old.items() if claim not in new]
    return out


def nbgrader(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``nbgrader`` from this environment (its ``bin/`` first on PATH: nbgrader needs ``alembic``)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def release(root: Path, names: list[str] | None = None) -> None:
    """Regenerate ``exercises/<name>/`` from ``solutions/<name>/`` with ``nbgrader generate_assignment``."""
    for name in names or assignments(root):
        nbgrader(["generate_assignment", name, "--force"], cwd=root)
        print(f"released exercises/{name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m layerwise.course", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("execute", help="execute every chapter into a staged copy of the book")
    ex.add_argument("--profile", default="auto", choices=["auto", "fast", "full"])
    ex.add_argument("--out", default="_build/src")
    ex.add_argument("--workers", type=int, default=2, help="chapters executed at a time (default 2)")
    sub.add_parser("release", help="regenerate exercises/ from solutions/")
    ve = sub.add_parser("verdicts", help="compare an executed book's fast-profile verdicts with tests/verdicts.json")
    ve.add_argument("--from", dest="src", default="_build/src", help="folder of an executed book")
    ve.add_argument("--write", action="store_true", help="rewrite tests/verdicts.json from it (review the diff)")
    a = ap.parse_args(argv)
    root = repo_root()
    if a.cmd == "execute":
        out = (root / a.out).resolve()
        times = execute_book(root, out, a.profile, workers=a.workers)
        print("chapter times (s): " + ", ".join(f"{k}: {v:.0f}" for k, v in times.items()))
    elif a.cmd == "verdicts":
        found = collect_verdicts((root / a.src).resolve())
        if not found or any(t["profile"] != "fast" for t in found.values()):
            print("verdicts are pinned for the fast profile: execute the book with --profile fast first")
            return 2
        pinned = pinned_verdicts(root)
        changes = {ch: verdict_changes(pinned.get(ch, {}).get("rows", []), t["rows"]) for ch, t in found.items()}
        for ch, lines in changes.items():
            for line in lines:
                print(f"{ch}: {line}")
        if a.write:         # the chapters found replace their pinned entries; the others stay as they are
            merged = dict(sorted({**pinned, **found}.items()))
            (root / VERDICTS).write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
            print(f"wrote {VERDICTS}: {', '.join(sorted(found))} re-pinned ({len(merged)} chapters pinned)")
        elif any(changes.values()):
            return 1
    else:
        release(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
