"""Course machinery: find the chapters and assignments, execute the book, release exercises.

Everything is discovered from the directory layout, so adding a paper never touches this file:

- chapters: ``book/<part>/<nn>_<name>.ipynb``
- assignments: ``solutions/<nn>_<name>/<nn>_<name>.ipynb`` (nbgrader source), released to
  ``exercises/<nn>_<name>/`` by ``nbgrader generate_assignment``.

Command line (used by the Makefile)::

    python -m layerwise.course execute [--profile auto] [--out _build/src]
    python -m layerwise.course release
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


def execute_book(root: Path, out: Path, profile: str = "auto") -> dict[str, float]:
    """Stage the book into ``out`` and execute every chapter there. Returns seconds per chapter."""
    stage_book(root, out)
    times = {}
    for nb in chapters(root):
        rel = nb.relative_to(root)
        print(f"executing {rel} (PROFILE={profile}) ...", flush=True)
        times[str(rel)] = execute_chapter(nb, out / rel, profile)
        print(f"  done in {times[str(rel)]:.1f} s", flush=True)
    return times


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
    sub.add_parser("release", help="regenerate exercises/ from solutions/")
    a = ap.parse_args(argv)
    root = repo_root()
    if a.cmd == "execute":
        out = (root / a.out).resolve()
        times = execute_book(root, out, a.profile)
        print("chapter times (s): " + ", ".join(f"{k}: {v:.0f}" for k, v in times.items()))
    else:
        release(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
