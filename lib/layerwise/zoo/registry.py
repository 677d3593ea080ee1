"""The zoo's registry, manifest and checkpoint-or-train loading."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["Recipe", "REGISTRY", "register", "build", "load", "train", "check", "verify", "manifest",
           "sha256", "MANIFEST", "WEIGHTS", "training_set_size"]

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "weights"
MANIFEST = HERE / "manifest.json"


@dataclass
class Recipe:
    """How to make one zoo model.

    - ``build(config) → nn.Module``: the untrained model.
    - ``fit(model, config, steps, generator, device) → dict``: trains in place; returns
      metrics, including ``metric`` (lower is better) on held-out data.
    - ``evaluate(model, generator, device) → float``: ``metric`` recomputed on fresh data.
    - ``tolerance``, ``slack``: ``evaluate`` must stay ≤ tolerance × the manifest's value + slack.
    """

    name: str
    build: Callable[[dict], nn.Module]
    fit: Callable[..., dict]
    evaluate: Callable[..., float]
    config: dict
    steps: int
    seed: int
    metric: str
    description: str
    requires: tuple[str, ...] = ()
    tolerance: float = 1.5
    slack: float = 0.0
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, Recipe] = {}


def training_set_size(n: int, steps: int, batch_size: int, floor: int = 256) -> int:
    """How many of a recipe's ``n`` training examples to generate for a run of ``steps`` steps of
    ``batch_size``: all ``n`` when the run can use them (every full recipe run does), fewer for
    a short smoke run (``make test`` trains every recipe for 2 steps), never below ``floor``."""
    return int(min(n, max(floor, steps * batch_size)))


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the zoo (its name must be new)."""
    if recipe.name in REGISTRY:
        raise ValueError(f"a zoo recipe named {recipe.name!r} is already registered")
    REGISTRY[recipe.name] = recipe
    return recipe


def _recipe(name: str) -> Recipe:
    if name not in REGISTRY:
        raise KeyError(f"no zoo model named {name!r}; available: {sorted(REGISTRY)}")
    return REGISTRY[name]


def manifest() -> dict[str, dict]:
    """The committed manifest: one entry per trained model."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _weights_path(name: str) -> Path:
    return WEIGHTS / f"{name}.safetensors"


def _cache_path(name: str) -> Path:
    root = Path(os.environ.get("LAYERWISE_CACHE", Path.home() / ".cache" / "layerwise"))
    return root / "zoo" / f"{name}.safetensors"


def verify(name: str) -> bool:
    """True when the committed weights of ``name`` exist and match the manifest's sha256."""
    entry = manifest().get(name)
    path = _weights_path(name)
    return bool(entry) and path.exists() and sha256(path) == entry["sha256"]


def build(name: str) -> nn.Module:
    """The untrained model of recipe ``name`` (seeded, so identical every time)."""
    recipe = _recipe(name)
    torch.manual_seed(recipe.seed)
    return recipe.build(recipe.config)


def _load_file(model: nn.Module, path: Path, device) -> nn.Module:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()


def load(name: str, *, device: torch.device | str | None = None, train_if_missing: bool = True,
         progress: bool | None = None) -> nn.Module:
    """The trained model ``name`` in eval mode: the committed weights if intact, else a cached
    copy, else trained now with the recipe (and cached under ``~/.cache/layerwise``)."""
    device = torch.device(device or "cpu")
    if verify(name):
        return _load_file(build(name), _weights_path(name), device)
    cached = _cache_path(name)
    if cached.exists():
        return _load_file(build(name), cached, device)
    if not train_if_missing:
        raise FileNotFoundError(f"zoo model {name!r} has no weights; run `make zoo` or load(train_if_missing=True)")
    print(f"zoo: no weights for {name!r}; training it now with its recipe "
          f"({_recipe(name).steps} steps; see `python -m layerwise.zoo list`)", file=sys.stderr)
    model, _ = train(name, device=device, out=cached, progress=progress)
    return model.eval()


def train(name: str, *, steps: int | None = None, device: torch.device | str | None = None,
          out: Path | None = None, progress: bool | None = None, write_manifest: bool = False):
    """Train ``name`` from scratch with its recipe; save to ``out`` (if given).

    Returns (model, entry) where entry is the manifest record. With ``write_manifest`` the
    entry is stored in the package manifest (what ``make zoo`` does).
    """
    from safetensors.torch import save_file

    recipe = _recipe(name)
    device = torch.device(device or "cpu")
    model = build(name).to(device)
    generator = torch.Generator().manual_seed(recipe.seed)
    n_steps = recipe.steps if steps is None else steps
    start = time.perf_counter()
    metrics = recipe.fit(model, recipe.config, n_steps, generator, device, progress=progress)
    wall = time.perf_counter() - start
    model.eval()
    entry: dict[str, Any] = {
        "description": recipe.description,
        "recipe": f"{recipe.fit.__module__}.{recipe.fit.__qualname__}",
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": recipe.config,
        "seed": recipe.seed,
        "steps": n_steps,
        "requires": list(recipe.requires),
        "metric": {"name": recipe.metric, "value": float(metrics["metric"])},
        "metrics": {k: float(v) for k, v in metrics.items() if k != "metric"},
        "tolerance": recipe.tolerance,
        "slack": recipe.slack,
        "wall_time_s": round(wall, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {device.type}",
        "torch": torch.__version__,
        "command": f"python -m layerwise.zoo train {name}",
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out), metadata={"name": name, "config": json.dumps(recipe.config)})
        entry["sha256"] = sha256(out)
        entry["bytes"] = out.stat().st_size
        entry["file"] = str(out.relative_to(HERE)) if out.is_relative_to(HERE) else str(out)
    if write_manifest:
        data = manifest()
        data[name] = entry
        MANIFEST.write_text(json.dumps(dict(sorted(data.items())), indent=2, ensure_ascii=False) + "\n")
    return model, entry


def check(name: str, *, seed: int = 12345, device: torch.device | str | None = None) -> tuple[float, float]:
    """(metric on fresh data, allowed maximum from the manifest) for the committed model."""
    entry = manifest().get(name)
    if not entry:
        raise KeyError(f"zoo model {name!r} is not in the manifest; run `make zoo`")
    recipe = _recipe(name)
    device = torch.device(device or "cpu")
    model = load(name, device=device, train_if_missing=False)
    value = recipe.evaluate(model, torch.Generator().manual_seed(seed), device)
    return float(value), entry["metric"]["value"] * recipe.tolerance + recipe.slack
