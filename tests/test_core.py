"""Tests of the shared machinery: profiles, seeding, data, training loop, plots, tables, timing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from layerwise.core import (ConvTrunk, band, batches, compare_times, evaluate, get_device, paper_table, pick,
                            plot_curves, resolve_profile, seed_everything, setup, train)
from layerwise.core.train import stack
from layerwise.data import cifar10, cifar10_available, digits
from layerwise.data.datasets import write_fake_cifar10


# ----------------------------------------------------------------------------- env & profiles

def test_resolve_profile(monkeypatch):
    monkeypatch.delenv("LAYERWISE_PROFILE", raising=False)
    assert resolve_profile("fast") == "fast" and resolve_profile("FULL") == "full"
    expected = "full" if torch.cuda.is_available() else "fast"
    assert resolve_profile("auto") == expected
    monkeypatch.setenv("LAYERWISE_PROFILE", "full")
    assert resolve_profile("auto") == "full"
    assert resolve_profile("fast") == "fast"      # an explicit profile wins over the environment


@pytest.mark.parametrize("bad", ["quick", "", "cpu"])
def test_resolve_profile_rejects_unknown(bad):
    with pytest.raises(ValueError, match="profile"):
        resolve_profile(bad)


def test_pick():
    assert pick("fast", fast=1, full=2) == 1 and pick("full", fast=1, full=2) == 2
    with pytest.raises(ValueError, match="missing"):
        pick("fast", fast=1)
    with pytest.raises(ValueError, match="unknown"):
        pick("fast", fast=1, full=2, huge=3)


def test_seed_everything_is_reproducible():
    seed_everything(3)
    a = torch.rand(4), np.random.rand(2)
    g = seed_everything(3)
    b = torch.rand(4), np.random.rand(2)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert isinstance(g, torch.Generator)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
    with pytest.raises(TypeError, match="seed"):
        seed_everything("1")


def test_setup_and_device(capsys):
    info = setup("fast", seed=1)
    assert info["profile"] == "fast" and info["device"] == get_device()
    assert "profile=fast" in capsys.readouterr().out
    assert get_device("cpu") == torch.device("cpu")


# ----------------------------------------------------------------------------- data

def test_digits_split_is_seeded_stratified_and_disjoint():
    a, b, c = digits(seed=0), digits(seed=0), digits(seed=1)
    assert a.X_train.shape[1:] == (1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.X_train, b.X_train) and not torch.equal(a.X_train, c.X_train)
    assert len(a.y_train) + len(a.y_test) == 1797
    assert 0.0 <= a.X_train.min() and a.X_train.max() <= 1.0
    counts = torch.bincount(a.y_test, minlength=10)
    assert counts.min() >= 33                        # every class in the test split (stratified)
    flat = digits(flat=True)
    assert flat.X_train.shape[1:] == (64,)
    with pytest.raises(ValueError, match="test_size"):
        digits(test_size=1.5)


def test_cifar10_reader_on_a_file_in_the_real_format(tmp_path):
    write_fake_cifar10(tmp_path, n_train=50, n_test=10)
    assert cifar10_available(tmp_path)
    d = cifar10(tmp_path)
    assert d.X_train.shape == (50, 3, 32, 32) and d.X_test.shape == (10, 3, 32, 32)
    assert d.y_train.dtype == torch.int64 and d.num_classes == 10
    raw = cifar10(tmp_path, normalize=False, limit=20)
    assert raw.X_train.shape[0] == 20 and raw.X_test.shape[0] == 4
    assert 0.0 <= raw.X_train.min() and raw.X_train.max() <= 1.0


def test_cifar10_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        cifar10(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- training loop

def test_batches_cover_an_epoch_once():
    X, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(X, y, 3, generator=torch.Generator().manual_seed(0))])
    assert len(seen) == 9 and len(set(seen.tolist())) == 9          # drop_last
    seen = torch.cat([yb for _, yb in batches(X, y, 3, shuffle=False, drop_last=False)])
    assert seen.tolist() == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(X, y, 0))
    with pytest.raises(ValueError, match="rows"):
        list(batches(X, y[:5], 2))


def test_train_records_history_and_learns():
    d = digits(flat=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    h = train(model, d.train, F.cross_entropy, opt, epochs=2, batch_size=64, eval_data=d.test, progress=False)
    steps = 2 * (len(d.y_train) // 64)
    assert h.steps == steps and len(h.acc) == steps
    assert len(h.eval_acc) == 2 and h.eval_step[-1] == steps
    assert h.loss[-1] < h.loss[0] and h.eval_acc[-1] > 0.8
    loss, acc = evaluate(model, *d.test)
    assert acc == pytest.approx(h.eval_acc[-1])
    assert stack([h, h], "loss").shape == (2, steps)
    assert h.final()["eval_error"] == pytest.approx(1 - h.eval_acc[-1])


def test_train_rejects_bad_arguments():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    X, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="epochs"):
        train(model, (X, y), F.cross_entropy, opt, epochs=0)
    with pytest.raises(TypeError, match="train_data"):
        train(model, (X.numpy(), y), F.cross_entropy, opt, epochs=1)


def test_train_stops_on_nan():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    X, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(FloatingPointError):
        train(model, (X, y), lambda out, t: out.sum() * float("nan"), opt, epochs=1, batch_size=4, progress=False)


def test_conv_trunk_shapes():
    t = ConvTrunk(3, (8, 16))
    assert t(torch.randn(2, 3, 32, 32)).shape == (2, 16) and t.out_features == 16
    with pytest.raises(ValueError, match="widths"):
        ConvTrunk(3, ())


# ----------------------------------------------------------------------------- plots, tables, timing

def test_band_and_smoothing():
    runs = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    mean, lo, hi = band(runs)
    assert mean.tolist() == [2.0, 3.0, 4.0] and lo.tolist() == [1, 2, 3] and hi.tolist() == [3, 4, 5]
    mean, _, _ = band(runs, smooth=2)
    assert mean.tolist() == [2.0, 2.5, 3.5]
    with pytest.raises(ValueError, match="smooth"):
        band(runs, smooth=0)


def test_plot_curves_draws_one_line_per_label():
    import matplotlib
    matplotlib.use("Agg")
    ax = plot_curves({"a": np.random.rand(3, 20), "b": np.random.rand(3, 20)}, smooth=3)
    assert len(ax.get_lines()) == 2 and [t.get_text() for t in ax.get_legend().get_texts()] == ["a (n=3)", "b (n=3)"]


def test_paper_table_renders_and_saves_json(tmp_path):
    rows = [dict(claim="faster", paper="yes", ours=0.123456, reproduced=True),
            dict(claim="better", paper=1.0, ours=2.0, reproduced="partly")]
    t = paper_table("99_demo", rows, profile="fast", out_dir=tmp_path, extra={"k": 1})
    data = json.loads((tmp_path / "99_demo.results.json").read_text())
    assert data["chapter"] == "99_demo" and data["profile"] == "fast" and data["extra"] == {"k": 1}
    assert [r["reproduced"] for r in data["rows"]] == ["yes", "partly"] and data["rows"][0]["ours"] == "0.1235"
    assert "<table" in t._repr_html_() and "| faster | yes | 0.1235 | yes |" in t.to_markdown()
    with pytest.raises(ValueError, match="reproduced"):
        paper_table("x", [dict(claim="c", paper=1, ours=1, reproduced="maybe")], profile="fast", out_dir=tmp_path)
    with pytest.raises(ValueError, match="missing"):
        paper_table("x", [dict(claim="c")], profile="fast", out_dir=tmp_path)


def test_compare_times_orders_a_slow_and_a_fast_function():
    import time
    t = compare_times({"slow": lambda: time.sleep(0.004), "fast": lambda: None}, repeats=5, warmup=1)
    assert t["slow"] > t["fast"]
    with pytest.raises(ValueError, match="repeats"):
        compare_times({"a": lambda: None}, repeats=0)
    with pytest.raises(TypeError, match="callable"):
        compare_times({"a": 3})


def test_train_step_fn_updates_the_model():
    from layerwise.core import train_step_fn
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    before = F.cross_entropy(model(x), y).item()
    step = train_step_fn(model, F.cross_entropy, x, y, lr=0.5)
    for _ in range(5):
        step()
    assert F.cross_entropy(model(x), y).item() < before
    with pytest.raises(TypeError, match="model"):
        train_step_fn(lambda t: t, F.cross_entropy, x, y)


def test_live_figure_renders_and_redraws_without_leaving_figures_open():
    import ipywidgets as widgets
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from layerwise.core.plot import live_figure

    calls = []

    def draw(k, name):
        calls.append((k, name))
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot(range(k))
        ax.set_title(name)

    slider, box = widgets.IntSlider(value=2, min=1, max=5), widgets.Dropdown(options=["a", "b"], value="a")
    open_before = len(plt.get_fignums())
    panel = live_figure(draw, k=slider, name=box)
    image = panel.children[-1]
    first = image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and calls == [(2, "a")]
    slider.value = 4
    box.value = "b"
    assert calls[-1] == (4, "b") and image.value != first
    assert slider.continuous_update is False
    assert len(plt.get_fignums()) == open_before, "live_figure must close the figures it draws"
    with pytest.raises(ValueError, match="controls"):
        live_figure(draw)
    with pytest.raises(TypeError, match="draw"):
        live_figure("not a function", k=slider)
    kept = plt.figure()
    with pytest.raises(ValueError, match="new matplotlib figure"):
        live_figure(lambda k: kept.gca().plot(range(k)), k=slider)     # draws on an existing figure
    assert plt.fignum_exists(kept.number), "a figure live_figure did not make must stay open"
    plt.close(kept)


def test_live_figure_caches_and_prerenders():
    import ipywidgets as widgets
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from layerwise.core.plot import live_figure

    calls = []
    open_before = set(plt.get_fignums())

    def draw(k):
        calls.append(k)
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot(range(k + 1))
        return fig

    slider = widgets.IntSlider(value=1, min=0, max=4)
    panel = live_figure(draw, prerender=[{"k": k} for k in range(5)], k=slider)
    image = panel.children[-1]
    assert calls == [0, 1, 2, 3, 4] and panel.renders[0] == 5        # every stop drawn up front, once
    pngs = {}
    for k in (3, 0, 3, 1):
        slider.value = k
        pngs.setdefault(k, image.value)
        assert image.value == pngs[k]
    assert calls == [0, 1, 2, 3, 4], "a cached setting must not be drawn again"
    small = live_figure(draw, cache=1, k=widgets.IntSlider(value=0, min=0, max=4))
    small.children[0].value, small.children[0].value = 2, 0
    assert calls[-2:] == [2, 0], "with cache=1 only the latest rendering is kept"
    uncached = live_figure(draw, cache=0, k=widgets.IntSlider(value=0))
    uncached.children[0].value, uncached.children[0].value = 1, 0
    assert calls[-3:] == [0, 1, 0]
    for bad, word in [(dict(cache=-1), "cache"), (dict(dpi=0), "dpi"), (dict(prerender=[{"j": 1}]), "prerender")]:
        with pytest.raises(ValueError, match=word):
            live_figure(draw, k=widgets.IntSlider(), **bad)
    assert set(plt.get_fignums()) == open_before, "live_figure must close the figures it draws"


def test_compare_rule_on_known_cases():
    from layerwise.core.report import RULE, RULES, compare

    assert RULE in RULES
    big = compare([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    assert big.holds and bool(big) and big.diff == pytest.approx(9.0) and big.p < 1e-3
    assert big.se == pytest.approx(np.sqrt(1 / 3 + 1 / 3))
    # no effect at all: never "yes" under either rule
    same = compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert not same.holds and same.diff == 0 and same.p == pytest.approx(0.5)
    assert not compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], rule="t05").holds
    # lower is better: the sign flips
    assert compare([1.0, 1.1, 0.9], [5.0, 5.2, 4.9], higher_is_better=False).holds
    assert not compare([5.0, 5.2, 4.9], [1.0, 1.1, 0.9], higher_is_better=False).holds
    # the legacy rule (> 1 s.e.) says yes where the 5 % t-test does not
    a, b = [1.3, 1.0, 1.6], [1.0, 0.8, 1.1]
    legacy, t05 = compare(a, b, rule="se"), compare(a, b, rule="t05")
    assert legacy.holds and not t05.holds and 0.05 < t05.p < 0.2
    # pairing removes the seed-to-seed spread shared by both arms
    base = np.array([1.0, 5.0, 9.0])
    ours = base + np.array([0.5, 0.6, 0.4])
    assert not compare(ours, base, rule="t05").holds
    paired = compare(ours, base, paired=True, rule="t05")
    assert paired.holds and paired.diff == pytest.approx(0.5) and paired.se == pytest.approx(0.1 / np.sqrt(3))
    # non-inferiority: slightly worse, but within the margin
    assert not compare([0.98, 0.99, 1.0], [1.0, 1.01, 1.02], rule="t05").holds
    assert compare([0.98, 0.99, 1.0], [1.0, 1.01, 1.02], margin=0.2, rule="t05").holds
    # identical differences on every seed: no noise, the sign decides
    assert compare([2.0, 3.0], [1.0, 2.0], paired=True).holds and compare([2.0, 3.0], [1.0, 2.0], paired=True).se == 0
    assert "±" in str(big)


def test_compare_false_positive_rate_under_no_effect():
    """Under no effect the 5 % rule says "yes" about 5 % of the time; the 1-s.e. rule far more often."""
    from layerwise.core.report import compare

    rng = np.random.default_rng(0)
    draws = rng.normal(size=(4000, 2, 3))
    t05 = np.mean([compare(a, b, rule="t05").holds for a, b in draws])
    se = np.mean([compare(a, b, rule="se").holds for a, b in draws])
    paired = np.mean([compare(a, b, paired=True, rule="t05").holds for a, b in draws])
    assert 0.03 < t05 < 0.07 and 0.03 < paired < 0.07
    assert 0.12 < se < 0.22


def test_compare_bad_input():
    from layerwise.core.report import compare

    for args, kwargs, word in [(([1.0], [1.0, 2.0]), {}, "ours"), (([1.0, 2.0], [[1.0], [2.0]]), {}, "baseline"),
                               (([1.0, float("nan")], [1.0, 2.0]), {}, "NaN"),
                               (([1.0, 2.0], [1.0, 2.0]), {"margin": -1}, "margin"),
                               (([1.0, 2.0], [1.0, 2.0]), {"rule": "3se"}, "rule"),
                               (([1.0, 2.0, 3.0], [1.0, 2.0]), {"paired": True}, "paired")]:
        with pytest.raises(ValueError, match=word):
            compare(*args, **kwargs)
