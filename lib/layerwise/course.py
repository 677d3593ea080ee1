"""Course machinery: find the chapters and assignments, execute the book, release exercises.

Everything is discovered from the directory layout, so adding a paper never touches this file:

- chapters: ``book/<part>/<nn>_<name>.ipynb``
- assignments: ``solutions/<nn>_<name>/<nn>_<name>.ipynb`` (nbgrader source), released to
  ``exercises/<nn>_<name>/`` by ``nbgrader generate_assignment``.

Command line (used by the Makefile)::

    python -m layerwise.course execute [--profile auto] [--out _build/src] [--workers 2]
    python -m layerwise.course release
    python -m layerwise.course verdicts --from _build/src [--write]
    python -m layerwise.course dashboard --book _build/src

The dashboard (``book/results.md`` of the staged book, :func:`write_dashboard`) is generated from
every executed chapter's ``*.results.json`` before Jupyter Book builds the HTML.

The fast profile's verdicts of every chapter are pinned in ``tests/verdicts.json`` (the chapter
tests fail, naming the claim, when one changes); ``verdicts --write`` re-pins the chapters found in
an executed book (the others stay as pinned), a deliberate act to review in the diff.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
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
DASHBOARD = Path("book") / "results.md"
VERDICT_ORDER = ("yes", "partly", "no", "n/a")
#: (text, background) of each verdict's badge: the same as ``layerwise.core.report.VERDICT_COLOURS``
#: (this module imports nothing of the library; tests/test_book.py checks they agree).
VERDICT_COLOURS = {"yes": ("#116329", "#dafbe1"), "partly": ("#7d4e00", "#fff1c2"),
                   "no": ("#a40e26", "#ffe0e3"), "n/a": ("#424a53", "#eaeef2")}
VERDICT_SYMBOLS = {"yes": "✓", "partly": "◐", "no": "✗", "n/a": "–"}


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


def collect_results(executed: Path) -> list[dict]:
    """Every executed chapter's results table under ``executed`` (a staged book), in chapter order.

    Each is the ``*.results.json`` that ``core.paper_table`` saved next to its notebook, plus
    ``page`` (the notebook's path relative to ``executed``, POSIX) and ``title`` (its first heading).
    Tables without their notebook next to them are left out."""
    executed = Path(executed)
    found = []
    for path in executed.rglob("*.results.json"):
        table = json.loads(path.read_text())
        notebook = path.with_name(f"{table['chapter']}.ipynb")
        if not notebook.exists():
            continue
        cells = json.loads(notebook.read_text()).get("cells", [])
        first = "".join(cells[0]["source"]) if cells else ""
        title = re.match(r"#\s+(.+)", first)
        found.append({**table, "page": notebook.relative_to(executed).as_posix(),
                      "title": title.group(1).strip() if title else table["chapter"]})
    return sorted(found, key=lambda t: t["page"])          # the book's order: part folders, then chapters


def _badge(verdict: str) -> str:
    fg, bg = VERDICT_COLOURS[verdict]
    slug = "na" if verdict == "n/a" else verdict
    return (f"<span class='layerwise-verdict layerwise-verdict-{slug}' style='display:inline-block;"
            f"padding:0.05em 0.55em;border-radius:0.8em;font-weight:600;white-space:nowrap;color:{fg};"
            f"background:{bg};border:1px solid {fg}'>{VERDICT_SYMBOLS[verdict]} {verdict}</span>")


def _when(meta: dict) -> str:
    try:
        return dt.datetime.fromisoformat(meta["created"]).strftime("%Y-%m-%d %H:%M")
    except (KeyError, TypeError, ValueError):
        return "unknown"


def dashboard_markdown(results: list[dict], page: str = DASHBOARD.as_posix()) -> str:
    """The dashboard page (MyST Markdown) for ``results`` (:func:`collect_results`) placed at
    ``page``: the verdicts counted over the course, one summary row per chapter (linked), and every
    claim with the paper's value, ours and its verdict badge, each row linking to its chapter."""
    here = Path(page).parent
    counts = {v: sum(r["reproduced"] == v for t in results for r in t["rows"]) for v in VERDICT_ORDER}
    total = sum(counts.values())
    out = ["# Results across the course", "",
           "Every chapter ends its experiment with a table of the paper's claims: the paper's number, "
           "ours from the run that built this page, and whether the claim reproduced. This page "
           "collects those tables; it is generated when the book is built "
           "(`python -m layerwise.course dashboard`), from the `*.results.json` file each chapter "
           "saves, so it always shows the same run as the chapters.", "",
           f"**Over the course:** {total} claims in {len(results)} chapters: "
           + " · ".join(f"{_badge(v)} {counts[v]}" for v in VERDICT_ORDER) + ".", ""]
    cell = "padding:0.3em 0.45em;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top"
    num = cell.replace("text-align:left", "text-align:right")
    heads = ["chapter"] + [f"{VERDICT_SYMBOLS[v]} {v}" for v in VERDICT_ORDER] + ["run"]
    rows = ["<tr>" + "".join(f"<th style='{cell if h == 'chapter' else num}'>{html.escape(h)}</th>"
                             for h in heads) + "</tr>"]
    for t in results:
        href = html.escape(Path(os.path.relpath(t["page"], here)).with_suffix(".html").as_posix())
        n = {v: sum(r["reproduced"] == v for r in t["rows"]) for v in VERDICT_ORDER}
        number = t["chapter"].split("_", 1)[0]
        rows.append(f"<tr data-summary='{html.escape(t['chapter'])}'><td style='{cell}'><a href='{href}'>"
                    f"{number} · {html.escape(t['title'])}</a></td>"
                    + "".join(f"<td style='{num}'>{n[v]}</td>" for v in VERDICT_ORDER)
                    + f"<td style='{num}'>{html.escape(t['profile'])}, {_when(t.get('meta', {}))}</td></tr>")
    out.append("<table class='layerwise-dashboard-summary' style='width:100%;border-collapse:collapse;"
               "font-size:0.9em'>" + "".join(rows) + "</table>")
    out += ["", "## Every claim", "",
            "The verdict follows each chapter's stated rule (statistical claims: "
            "`layerwise.core.compare` over seeds; exact claims: the tolerance the claim states). "
            "Follow a chapter's link for the experiment behind each row.", ""]
    cell = "padding:0.3em 0.4em;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top"
    heads = ("ch.", "reproduced?", "claim", "paper", "ours")
    rows = [f"<tr>{''.join(f'<th style={chr(34)}{cell}{chr(34)}>{h}</th>' for h in heads)}</tr>"]
    for t in results:
        href = html.escape(Path(os.path.relpath(t["page"], here)).with_suffix(".html").as_posix())
        number = t["chapter"].split("_", 1)[0]
        for r in t["rows"]:
            rows.append(
                f"<tr data-chapter='{html.escape(t['chapter'])}'>"
                f"<td style='{cell};white-space:nowrap'><a href='{href}' title='{html.escape(t['title'])}'>{number}</a></td>"
                f"<td style='{cell};white-space:nowrap'>{_badge(r['reproduced'])}</td>"
                + "".join(f"<td style='{cell};overflow-wrap:anywhere'>{html.escape(r[k])}</td>"
                          for k in ("claim", "paper", "ours")) + "</tr>")
    out.append("<table class='layerwise-dashboard' style='width:100%;border-collapse:collapse;font-size:0.9em'>"
               + "".join(rows) + "</table>")
    return "\n".join(out) + "\n"


def write_dashboard(book: Path) -> Path:
    """Write the dashboard page into a staged, executed book (``book/results.md``); returns its path."""
    book = Path(book)
    path = book / DASHBOARD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_markdown(collect_results(book)))
    return path


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
    da = sub.add_parser("dashboard", help="write the results dashboard into an executed book")
    da.add_argument("--book", default="_build/src", help="folder of an executed book")
    ve = sub.add_parser("verdicts", help="compare an executed book's fast-profile verdicts with tests/verdicts.json")
    ve.add_argument("--from", dest="src", default="_build/src", help="folder of an executed book")
    ve.add_argument("--write", action="store_true", help="rewrite tests/verdicts.json from it (review the diff)")
    a = ap.parse_args(argv)
    if a.cmd == "dashboard":             # the executed book may lie anywhere (relative to the cwd)
        print(f"wrote {write_dashboard(Path(a.book).resolve())}")
        return 0
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
