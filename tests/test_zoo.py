"""The model zoo: committed weights match their manifest, still do their job on fresh data,
and every recipe still trains."""

from __future__ import annotations

import pytest
import torch

from layerwise import zoo
from layerwise.zoo import registry

MANIFEST = zoo.manifest()
NAMES = sorted(zoo.REGISTRY)


def test_every_recipe_has_committed_weights_and_a_manifest_entry():
    missing = [n for n in NAMES if n not in MANIFEST]
    assert not missing, f"run `make zoo`: no manifest entry for {missing}"
    for name, entry in MANIFEST.items():
        assert name in zoo.REGISTRY, f"manifest entry {name!r} has no registered recipe"
        for key in ("config", "seed", "steps", "metric", "sha256", "wall_time_s", "command"):
            assert key in entry, f"manifest entry {name!r} lacks {key!r}"
        assert entry["config"] == zoo.REGISTRY[name].config, f"{name}: recipe config changed since `make zoo`"


@pytest.mark.parametrize("name", NAMES)
def test_weights_match_their_manifest(name):
    path = zoo.WEIGHTS / f"{name}.safetensors"
    assert path.exists(), f"{path} is missing"
    assert zoo.sha256(path) == MANIFEST[name]["sha256"], f"{name}: weights differ from the manifest's sha256"
    assert path.stat().st_size == MANIFEST[name]["bytes"]
    assert path.stat().st_size < 8e6, f"{name}: keep committed weights small (a few MB)"
    assert zoo.verify(name)


@pytest.mark.parametrize("name", NAMES)
def test_model_still_does_its_job_on_fresh_data(name):
    value, limit = zoo.check(name, seed=2024)
    assert value <= limit, f"{name}: {MANIFEST[name]['metric']['name']} = {value:.4g} on fresh data, limit {limit:.4g}"
    # and the trained model is far better than the untrained one on the same data
    recipe = zoo.REGISTRY[name]
    untrained = recipe.evaluate(zoo.build(name).eval(), torch.Generator().manual_seed(2024), torch.device("cpu"))
    assert value < 0.8 * untrained, f"{name}: trained {value:.4g} is not clearly better than untrained {untrained:.4g}"


@pytest.mark.parametrize("name", NAMES)
def test_recipe_runs_a_few_steps(name):
    model, entry = zoo.train(name, steps=2, progress=False)
    assert entry["steps"] == 2 and entry["metric"]["value"] == entry["metric"]["value"]  # not NaN
    assert not model.training


def test_build_is_deterministic_and_load_is_eval_mode():
    name = NAMES[0]
    a, b = zoo.build(name).state_dict(), zoo.build(name).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not zoo.load(name).training


def test_unknown_and_missing_models(monkeypatch, tmp_path):
    with pytest.raises(KeyError, match="available"):
        zoo.load("no_such_model")
    monkeypatch.setattr(registry, "WEIGHTS", tmp_path)            # as if nothing were committed
    monkeypatch.setenv("LAYERWISE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="make zoo"):
        zoo.load(NAMES[0], train_if_missing=False)


def test_manifest_names_the_code_that_made_each_model():
    for name, entry in MANIFEST.items():
        recipe = zoo.REGISTRY[name]
        assert entry["recipe"] == f"{recipe.fit.__module__}.{recipe.fit.__qualname__}", (
            f"{name}: the manifest's recipe {entry['recipe']!r} is not where the recipe's fit function lives")
        model = zoo.build(name)
        assert entry["class"] == f"{type(model).__module__}.{type(model).__qualname__}", name


def test_recipe_modules_are_discovered_and_hold_recipes_only():
    """Every module in zoo/recipes/ is imported by the zoo and registers its models there; recipe
    modules export configs and zoo helpers, not the method (that lives in the paper module)."""
    import importlib
    import inspect

    modules = zoo.recipe_modules()
    files = sorted(p.stem for p in (zoo.registry.HERE / "recipes").glob("*.py") if not p.stem.startswith("_"))
    assert modules == files
    by_module = {m: [n for n, r in zoo.REGISTRY.items() if r.fit.__module__ == f"layerwise.zoo.recipes.{m}"]
                 for m in modules}
    assert all(by_module.values()), f"a recipe module registers no model: {by_module}"
    assert sorted(n for names in by_module.values() for n in names) == NAMES, "a recipe lives outside zoo/recipes/"
    for m in modules:
        mod = importlib.import_module(f"layerwise.zoo.recipes.{m}")
        classes = [n for n, v in vars(mod).items() if inspect.isclass(v) and v.__module__ == mod.__name__]
        assert not classes, f"zoo/recipes/{m}.py defines classes {classes}: models belong in the paper's module"


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        zoo.register(zoo.REGISTRY[NAMES[0]])
