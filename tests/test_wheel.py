"""The Colab path, offline: the package built as a wheel, installed into a fresh virtualenv with only
its declared dependencies (and the extras a chapter's install cell asks for), runs a zoo-loading
chapter's setup from outside the repository.

Offline, so the fresh venv cannot download anything: its dependencies are the distributions of this
environment that the wheel's requirements (extras included) reach, and only those, linked into a
folder that a ``.pth`` file puts on the venv's path; ``pip install --no-index`` of the wheel then
fails if a requirement is not declared (it finds nothing to install it from). pip's own
configuration and ``PIP_*`` variables are switched off for it, so no local wheel folder or index
can fill a gap either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from layerwise.course import chapters

ROOT = Path(__file__).resolve().parents[1]
INSTALL = re.compile(r'%pip install[^\n]*"layerwise(?:\[([a-z,\s]+)\])? @ git\+([^"]+)"')


def zoo_chapter() -> Path:
    """The first chapter (in book order) whose code loads a model from the zoo."""
    for chapter in sorted(chapters(ROOT), key=lambda p: p.relative_to(ROOT).as_posix()):
        nb = nbformat.read(chapter, as_version=4)
        if any("zoo.load(" in c.source for c in nb.cells if c.cell_type == "code"):
            return chapter
    pytest.skip("no chapter loads a model from the zoo")


def setup_cells(chapter: Path) -> tuple[str, list[str]]:
    """(extras its install cell asks for, the chapter's code up to and including the first cell
    that calls ``zoo.load``, as plain Python with ``PROFILE = "fast"``)."""
    from IPython.core.inputtransformer2 import TransformerManager

    nb = nbformat.read(chapter, as_version=4)
    extras, code = "", []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        m = INSTALL.search(cell.source)
        if m:
            extras = (m.group(1) or "").replace(" ", "")
        source = 'PROFILE = "fast"' if "parameters" in cell.metadata.get("tags", []) else cell.source
        code.append(TransformerManager().transform_cell(source))
        if "zoo.load(" in cell.source:
            break
    return extras, code


def _closure(requirements: list[str], extras: set[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requirements`` (with ``extras`` for the root) reach."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        env = [{"extra": e} for e in (wanted or {""})]
        if req.marker is not None and not any(req.marker.evaluate(e) for e in env):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in found:
            continue
        dist = metadata.distribution(req.name)          # PackageNotFoundError: this env lacks it too
        found[key] = dist
        todo += [(Requirement(r), set(req.extras)) for r in (dist.requires or [])]
    return found


def _link_site(dists: dict[str, metadata.Distribution], into: Path) -> None:
    """Link every top-level file or folder the distributions installed (their RECORD) into ``into``."""
    into.mkdir(parents=True)
    for dist in dists.values():
        site = Path(dist.locate_file(""))
        tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            if (site / top).exists() and not (into / top).exists():
                (into / top).symlink_to(site / top)


def _quiet_pip_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


@pytest.mark.slow
def test_wheel_installs_what_a_zoo_chapter_needs_and_runs_its_setup(tmp_path: Path):
    t0 = time.perf_counter()
    chapter = zoo_chapter()
    extras, cells = setup_cells(chapter)
    # 1. the wheel, built from a copy of the sources (no build/ or egg-info left in the checkout)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, env=_quiet_pip_env())
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheel = next((tmp_path / "dist").glob("layerwise-*.whl"))
    t_wheel = time.perf_counter()
    # 2. a fresh venv whose path holds only the declared dependencies of layerwise[extras]
    requires = metadata.Distribution.at(_wheel_metadata(wheel, tmp_path / "meta")).requires or []
    deps = _closure(list(requires), set(filter(None, extras.split(","))))
    _link_site(deps, tmp_path / "deps")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "layerwise-test-deps.pth").write_text(str(tmp_path / "deps") + "\n")
    target = f"{wheel}[{extras}]" if extras else str(wheel)
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index",
                           "--no-build-isolation", target], capture_output=True, text=True, env=_quiet_pip_env())
    assert proc.returncode == 0, (f"installing {wheel.name} with its declared dependencies failed "
                                  f"(a dependency missing from pyproject.toml?):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    t_install = time.perf_counter()
    # 3. the chapter's setup, from a folder outside the repository, as its Colab install cell leaves it
    run = tmp_path / "elsewhere"
    run.mkdir()
    script = "\n\n".join(cells) + (
        "\n\nimport layerwise, pathlib\n"
        "assert pathlib.Path(layerwise.__file__).is_relative_to(pathlib.Path(sys.prefix)), layerwise.__file__\n"
        "from layerwise import zoo\n"
        "print('LOADED-FROM', pathlib.Path(zoo.__file__).parent)\n")
    (run / "chapter_setup.py").write_text(script)
    proc = subprocess.run([str(py), "chapter_setup.py"], cwd=run, capture_output=True, text=True, timeout=600,
                          env=_quiet_pip_env(MPLBACKEND="Agg", LAYERWISE_PROFILE="fast", LAYERWISE_PROGRESS="0",
                                             OMP_NUM_THREADS="1", HOME=str(run), XDG_CACHE_HOME=str(run / ".cache")))
    assert proc.returncode == 0, (f"{chapter.name}'s setup failed in a venv made from the wheel "
                                  f"(extras: {extras or 'none'}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert "LOADED-FROM" in proc.stdout and str(venv) in proc.stdout.split("LOADED-FROM", 1)[1], proc.stdout
    assert "no weights for" not in proc.stderr, f"zoo.load trained instead of loading the wheel's weights:\n{proc.stderr[-2000:]}"
    t_run = time.perf_counter()
    print(f"wheel test ({chapter.name}, extras {extras or 'none'}, {len(deps)} dependencies): build "
          f"{t_wheel - t0:.1f} s, venv + install {t_install - t_wheel:.1f} s, setup {t_run - t_install:.1f} s")


def _wheel_metadata(wheel: Path, into: Path) -> Path:
    """Unpack the wheel's ``.dist-info`` into ``into``; returns its folder."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if ".dist-info/" in n]
        z.extractall(into, names)
    return next(into.glob("*.dist-info"))
