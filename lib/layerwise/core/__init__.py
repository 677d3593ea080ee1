"""Shared machinery for every chapter: environment, training, plots, tables, timing."""

from layerwise.core.env import get_device, seed_everything, resolve_profile, pick, setup, progress_bar
from layerwise.core.train import History, train, evaluate, batches, fit_steps, EMA
from layerwise.core.plot import plot_curves, band, image_grid, live_figure, use_book_style, figure_size
from layerwise.core.report import paper_table, ResultsTable, compare, Comparison
from layerwise.core.timing import compare_times, train_step_fn
from layerwise.core.models import ConvTrunk, BasicBlock, SmallResNet

__all__ = [
    "get_device", "seed_everything", "resolve_profile", "pick", "setup", "progress_bar",
    "History", "train", "evaluate", "batches", "fit_steps", "EMA",
    "plot_curves", "band", "image_grid", "live_figure", "use_book_style", "figure_size",
    "paper_table", "ResultsTable", "compare", "Comparison",
    "compare_times", "train_step_fn", "ConvTrunk", "BasicBlock", "SmallResNet",
]
