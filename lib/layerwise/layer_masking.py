"""Layer masking (Balasubramanian & Feizi, "Towards Improved Input Masking for Convolutional
Neural Networks", ICCV 2023).

Removing part of an image by painting it black or grey does not make a CNN *ignore* it: the
network sees a grey blob, with edges and a shape. Layer masking instead carries a keep-mask
``m`` (1 = visible, 0 = removed) through every layer of a trained CNN (paper §3):

- before a convolution the removed cells are filled from their visible neighbours
  (:func:`neighbor_pad`, repeated kernel-width times), so the filter sees no artificial edge;
- after it, the mask becomes ``max_pool(m)`` with the convolution's kernel, stride and padding
  (:func:`propagate_mask`): an output is visible when any input under its window is; the output
  is multiplied by that mask;
- batch norm and activations keep ``f(x ⊙ m) ⊙ m``; max-pooling pools the mask too; a residual
  sum multiplies the two masks;
- the final global average pool averages over visible cells only (:func:`masked_global_pool`).

Two rules differ from the official ``sal_layers`` code (our reading, declared in chapter 9): the
official average pools average ``x ⊙ m`` over the whole window without dividing by the visible
count, and its max-pooling takes the max of ``x ⊙ m`` over the whole window (a removed cell is a 0
that can win); here average pools renormalise by the visible count and only visible cells can win
a max.

:class:`LayerMasked` applies these rules to an existing model (traced with ``torch.fx``), without
rewriting it. The remaining functions are the paper's experiments in small: removing random
patches with colour fills (missingness bias, §4), the object's silhouette as a mask (the
mask-shape leak, §5) and LIME with shared perturbations scored against the object (§6).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from layerwise.core.checks import float_tensor


__all__ = [
    "neighbor_pad", "propagate_mask", "masked_global_pool", "Masked", "LayerMasked",
    "patch_segments", "random_removal", "keep_from_segments", "fill_removed", "missingness_metrics",
    "lime_perturbations", "lime_kernel_weights", "lime_scores", "segment_agreement",
]

IntPair = int | tuple[int, int]


# --------------------------------------------------------------------------------------- checks

def _check_x(x: Any, name: str = "x") -> torch.Tensor:
    return float_tensor(x, name, 4, "(B, C, H, W)")


def _check_keep(keep: Any, like: torch.Tensor | None = None, name: str = "keep") -> torch.Tensor:
    if not isinstance(keep, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of 0s and 1s, got {type(keep).__name__}")
    if not keep.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of 0s and 1s, got dtype {keep.dtype} "
                        "(convert a boolean mask with .to(x.dtype))")
    if keep.dim() != 4:
        raise ValueError(f"{name} must be a (B, 1, H, W) tensor, got shape {tuple(keep.shape)}")
    if not bool(((keep == 0) | (keep == 1)).all()):
        raise ValueError(f"{name} must hold only 0 (removed) and 1 (visible)")
    if like is not None:
        b, c, h, w = like.shape
        if keep.shape[0] != b or keep.shape[2:] != (h, w) or keep.shape[1] not in (1, c):
            raise ValueError(f"{name} has shape {tuple(keep.shape)} but x is {tuple(like.shape)}: "
                             f"expected ({b}, 1, {h}, {w}) or ({b}, {c}, {h}, {w})")
    return keep


def _pair(v: Any, name: str, minimum: int) -> tuple[int, int]:
    vals = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    if (not isinstance(vals, (tuple, list)) or len(vals) != 2
            or any(isinstance(a, bool) or not isinstance(a, int) or a < minimum for a in vals)):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])


# --------------------------------------------------------------------------- the three operations

def neighbor_pad(x: torch.Tensor, keep: torch.Tensor, iterations: int) -> torch.Tensor:
    """Fill removed cells from their visible neighbours (paper §3, "neighbour padding").

    x: ``(B, C, H, W)``; keep: ``(B, 1, H, W)`` (or ``(B, C, H, W)``) of 0/1, 1 = visible.
    First every removed cell is set to 0, so its value cannot leak. Then, ``iterations`` times,
    every still-empty cell that has at least one filled cell among its 3×3 neighbours gets the
    mean of those filled neighbours and becomes filled itself: a front that grows one cell per
    iteration from the visible region into the removed one. Visible cells never change; cells
    the front has not reached stay 0. Returns a tensor shaped and typed like ``x``.
    """
    _check_x(x)
    _check_keep(keep, x)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    keep = keep.to(x.dtype)
    out = torch.where(keep > 0, x, torch.zeros((), dtype=x.dtype, device=x.device))
    filled = keep.expand_as(x).contiguous()
    c = x.shape[1]
    ones = torch.ones(c, 1, 3, 3, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        total = F.conv2d(out, ones, padding=1, groups=c)        # sum of filled neighbours (3×3)
        count = F.conv2d(filled, ones, padding=1, groups=c)     # how many of them are filled
        new = (filled == 0) & (count > 0)
        out = torch.where(new, total / count.clamp_min(1), out)
        filled = torch.where(new, torch.ones_like(filled), filled)
    return out


def _propagate(keep: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    # Zero padding done by hand (a padded cell is not visible): max_pool2d itself only allows
    # padding up to half the kernel, a convolution allows any.
    padded = F.pad(keep, (padding[1], padding[1], padding[0], padding[0]))
    return F.max_pool2d(padded, kernel, stride, 0, dilation)


def propagate_mask(keep: torch.Tensor, kernel: IntPair, stride: IntPair, padding: IntPair) -> torch.Tensor:
    """The keep-mask after a convolution or pooling layer (paper §3, Eq. for ``m^{l+1}``).

    keep: ``(B, 1, H, W)`` of 0/1; kernel, stride, padding: ints or ``(h, w)`` pairs, those of
    the layer. An output cell is visible when *any* input cell under its window is visible
    (padding counts as removed): a max-pool of the mask with the layer's geometry, computed on
    the zero-padded mask so that any padding is allowed. Returns ``(B, 1, H', W')`` with the
    layer's output size, dtype of ``keep``.
    """
    _check_keep(keep)
    return _propagate(keep, _pair(kernel, "kernel", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0))


def masked_global_pool(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Global average pooling over the visible cells only: ``Σ x ⊙ m / Σ m`` (paper §3).

    x: ``(B, C, H, W)``; keep: ``(B, 1, H, W)`` (or ``(B, C, H, W)``) of 0/1. Returns ``(B, C)``;
    an image with no visible cell gets 0 (the official code's ``+ 1e-8`` in the denominator).
    """
    _check_x(x)
    _check_keep(keep, x)
    keep = keep.to(x.dtype)
    total = torch.where(keep > 0, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum((2, 3))
    count = keep.sum((2, 3))
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


# --------------------------------------------------------------------------- wrapping a model

class Masked(NamedTuple):
    """A feature map with its keep-mask: x ``(B, C, H, W)``, keep ``(B, 1, H, W)``."""

    x: torch.Tensor
    keep: torch.Tensor


def _elementwise(fn: Callable[[torch.Tensor], torch.Tensor], v: Masked) -> Masked:
    """BN and activations: ``f(x ⊙ m) ⊙ m`` (removed cells stay exactly 0)."""
    y = fn(v.x * v.keep)
    return Masked(y * v.keep, v.keep)


def _conv(conv: nn.Conv2d, v: Masked, fill: str) -> Masked:
    if conv.padding_mode != "zeros":
        raise TypeError(f"layer masking supports Conv2d with padding_mode='zeros' only, got {conv.padding_mode!r}")
    kh, kw = conv.kernel_size
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            pad = (0, 0)
        else:  # 'same' (stride 1): total padding d*(k-1) per axis; asymmetric when odd
            th, tw = conv.dilation[0] * (kh - 1), conv.dilation[1] * (kw - 1)
            if th % 2 or tw % 2:
                raise TypeError("layer masking does not support padding='same' with an even effective kernel")
            pad = (th // 2, tw // 2)
    else:
        pad = tuple(conv.padding)
    x = neighbor_pad(v.x, v.keep, kw) if fill == "neighbor" else v.x * v.keep
    keep = _propagate(v.keep, (kh, kw), tuple(conv.stride), pad, tuple(conv.dilation))
    return Masked(conv(x) * keep, keep)


def _max_pool(v: Masked, kernel, stride, padding, dilation, ceil_mode) -> Masked:
    neg = torch.full((), float("-inf"), dtype=v.x.dtype, device=v.x.device)
    y = F.max_pool2d(torch.where(v.keep > 0, v.x, neg), kernel, stride, padding, dilation, ceil_mode)
    keep = F.max_pool2d(v.keep, kernel, stride, padding, dilation, ceil_mode)
    return Masked(torch.where(keep > 0, y, torch.zeros_like(y)), keep)


def _ratio_pool(pool: Callable[[torch.Tensor], torch.Tensor], v: Masked) -> Masked:
    """An average pool over visible cells only: ``pool(x ⊙ m) / pool(m)`` (the pool's own divisor cancels)."""
    num, den = pool(v.x * v.keep), pool(v.keep)
    keep = (den > 0).to(v.keep.dtype)
    return Masked(torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num)), keep)


def _is_global(size: Any) -> bool:
    if isinstance(size, int):
        return size == 1
    return isinstance(size, (tuple, list)) and tuple(size) == (1, 1)


_ELEMENTWISE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
                        nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Identity,
                        nn.Dropout, nn.Dropout2d)
_SPATIAL_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_PLAIN_MODULES = (nn.Flatten, nn.Linear, nn.Softmax, nn.LogSoftmax, nn.BatchNorm1d, nn.Dropout,
                  nn.Identity) + _ELEMENTWISE_MODULES
_ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, torch.sigmoid,
                          torch.tanh, F.hardswish, F.dropout, torch.nn.functional.sigmoid}
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}


class _MaskInterpreter(fx.Interpreter):
    """Runs the traced graph on :class:`Masked` values, applying the layer-masking rule of each node."""

    def __init__(self, gm: fx.GraphModule, fill: str):
        super().__init__(gm)
        self.fill = fill

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        v = args[0] if args else None
        if not isinstance(v, Masked):
            if any(isinstance(a, Masked) for a in args):
                raise TypeError(f"layer masking: module {target!r} ({type(mod).__name__}) gets a masked feature "
                                "map in an argument other than the first")
            return super().call_module(target, args, kwargs)
        if isinstance(mod, nn.Conv2d):
            return _conv(mod, v, self.fill)
        if isinstance(mod, nn.MaxPool2d):
            return _max_pool(v, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
        if isinstance(mod, nn.AvgPool2d):
            return _ratio_pool(mod, v)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            if _is_global(mod.output_size):
                return masked_global_pool(v.x, v.keep)[:, :, None, None]
            return _ratio_pool(mod, v)
        if isinstance(mod, _ELEMENTWISE_MODULES):
            return _elementwise(mod, v)
        raise TypeError(f"layer masking: module {target!r} ({type(mod).__name__}) received a spatial feature map "
                        "with a mask; it is not supported there (put a global average pooling before it)")

    def call_function(self, target, args, kwargs):
        masked = [a for a in args if isinstance(a, Masked)]
        if not masked:
            return super().call_function(target, args, kwargs)
        name = getattr(target, "__name__", repr(target))
        if target in _ADD:       # a residual sum: visible where both branches are (official sal_resnet)
            a, b = args[0], args[1]
            if isinstance(a, Masked) and isinstance(b, Masked):
                keep = a.keep * b.keep
                return Masked((a.x + b.x) * keep, keep)
            v, other = (a, b) if isinstance(a, Masked) else (b, a)
            if isinstance(other, (int, float)):
                return Masked((v.x + other) * v.keep, v.keep)
        elif target in _MUL:
            a, b = args[0], args[1]
            v, other = (a, b) if isinstance(a, Masked) else (b, a)
            if isinstance(other, (int, float)):
                return Masked(v.x * other, v.keep)
        elif target in _ELEMENTWISE_FUNCTIONS and isinstance(args[0], Masked):
            return _elementwise(lambda t: target(t, *args[1:], **kwargs), args[0])
        elif target is F.max_pool2d:
            p = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), args[1:]), **kwargs)
            k = p.get("kernel_size")
            return _max_pool(args[0], k, p.get("stride") or k, p.get("padding", 0), p.get("dilation", 1),
                             p.get("ceil_mode", False))
        elif target is F.adaptive_avg_pool2d and _is_global(args[1] if len(args) > 1 else kwargs.get("output_size")):
            return masked_global_pool(args[0].x, args[0].keep)[:, :, None, None]
        elif target is torch.mean and _spatial_dims(args[1:], kwargs):
            return _mean(args[0], _spatial_dims(args[1:], kwargs)[1])
        raise TypeError(f"layer masking does not support the function {name} on a masked feature map")

    def call_method(self, target, args, kwargs):
        self_obj = args[0]
        if not isinstance(self_obj, Masked):
            if any(isinstance(a, Masked) for a in args[1:]):
                raise TypeError(f"layer masking does not support the method .{target}() on a masked feature map")
            return super().call_method(target, args, kwargs)
        if target == "mean" and _spatial_dims(args[1:], kwargs):
            return _mean(self_obj, _spatial_dims(args[1:], kwargs)[1])
        if target in ("relu", "sigmoid", "tanh"):
            return _elementwise(lambda t: getattr(t, target)(), self_obj)
        if target in ("contiguous", "float"):
            return self_obj
        raise TypeError(f"layer masking does not support the method .{target}() on a masked feature map")


def _spatial_dims(args, kwargs) -> tuple[bool, bool] | None:
    """For ``mean(dims, keepdim)`` calls: ``(True, keepdim)`` when the dims are exactly H and W."""
    dims = args[0] if args else kwargs.get("dim")
    keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
    if dims is None:
        return None
    dims = {d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    return (True, bool(keepdim)) if dims == {2, 3} else None


def _mean(v: Masked, keepdim: bool) -> torch.Tensor:
    out = masked_global_pool(v.x, v.keep)
    return out[:, :, None, None] if keepdim else out


class LayerMasked(nn.Module):
    """A trained CNN run with layer masking: ``LayerMasked(model)(x, keep) -> logits``.

    model: any ``nn.Module`` that ``torch.fx`` can trace, built from Conv2d (zero padding),
    BatchNorm2d, elementwise activations, MaxPool2d/AvgPool2d, residual additions, and a global
    average pooling (``AdaptiveAvgPool2d(1)`` or a mean over H, W) after which come plain layers
    (Flatten, Linear, …). Anything else on a masked feature map raises a ``TypeError`` naming it.
    The model is shared, not copied; it must be in eval mode (batch statistics would see the
    removed cells).

    fill: ``"neighbor"`` (the paper: neighbour padding, kernel-width iterations, before every
    convolution) or ``"zero"`` (removed cells enter the convolutions as 0: an ablation).
    x: ``(B, C, H, W)``; keep: ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)`` of 0/1 or bool,
    1 = visible. With ``keep`` all ones the output equals ``model(x)``.
    """

    def __init__(self, model: nn.Module, fill: str = "neighbor"):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if fill not in ("neighbor", "zero"):
            raise ValueError(f"fill must be 'neighbor' or 'zero', got {fill!r}")
        self.model = model
        self.fill = fill
        try:
            self.graph_module = fx.symbolic_trace(model)
        except Exception as e:  # data-dependent control flow and the like
            raise TypeError(f"model could not be traced with torch.fx ({type(e).__name__}: {e}); "
                            "layer masking needs a traceable model") from e
        for node in self.graph_module.graph.nodes:
            if node.op == "call_module":
                mod = self.graph_module.get_submodule(node.target)
                if not isinstance(mod, _SPATIAL_MODULES + _PLAIN_MODULES):
                    raise TypeError(f"layer masking does not support the module {node.target!r} of type "
                                    f"{type(mod).__name__}")

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        keep = self._check_inputs(x, keep)
        out = _MaskInterpreter(self.graph_module, self.fill).run(Masked(x, keep))
        if isinstance(out, Masked):
            raise TypeError("the model's output is still a spatial feature map: layer masking needs a global "
                            "average pooling before the output")
        return out

    def _check_inputs(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` and bring ``keep`` to ``(B, 1, H, W)`` in x's dtype."""
        _check_x(x)
        if not isinstance(keep, torch.Tensor):
            raise TypeError(f"keep must be a torch.Tensor, got {type(keep).__name__}")
        if keep.dim() == 2:
            keep = keep.expand(x.shape[0], 1, *keep.shape)
        elif keep.dim() == 3:
            keep = keep.unsqueeze(1)
        keep = keep.to(x.dtype) if keep.dtype == torch.bool else keep
        _check_keep(keep, x)
        if keep.shape[1] != 1:
            raise ValueError(f"keep must have one channel (the same mask for every channel), got {tuple(keep.shape)}")
        if any(m.training for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            raise ValueError("model has batch norm in training mode: call model.eval() before layer masking")
        return keep.to(x.dtype)

    @torch.no_grad()
    def masks(self, x: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """The keep-mask after every layer that changes it: ``{node name: (B, 1, H', W')}``, in
        the order the graph runs them, starting with ``"input"`` (to watch the mask shrink)."""
        keep = self._check_inputs(x, keep)
        out = {"input": keep}
        recorder = _MaskInterpreter(self.graph_module, self.fill)
        run_node = recorder.run_node

        def record(node):
            value = run_node(node)
            if isinstance(value, Masked) and (value.keep.shape != list(out.values())[-1].shape
                                              or not torch.equal(value.keep, list(out.values())[-1])):
                out[node.name] = value.keep
            return value

        recorder.run_node = record
        recorder.run(Masked(x, keep))
        return out

    def extra_repr(self) -> str:
        return f"fill={self.fill!r}"


# --------------------------------------------------------------------------- the experiments

def patch_segments(height: int, width: int, patch: int) -> torch.Tensor:
    """Segment ids of a grid of ``patch × patch`` squares, row-major: ``(H, W)`` int64 in
    ``[0, (H/patch)·(W/patch))`` (the paper's 16×16 patches of a 224×224 image)."""
    for n, v in (("height", height), ("width", width), ("patch", patch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{n} must be a positive int, got {v!r}")
    if height % patch or width % patch:
        raise ValueError(f"patch={patch} must divide height={height} and width={width}")
    rows = torch.arange(height) // patch
    cols = torch.arange(width) // patch
    return rows[:, None] * (width // patch) + cols[None, :]


def random_removal(num_images: int, num_segments: int, fraction: float, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Which segments to remove: ``(num_images, num_segments)`` bool with exactly
    ``round(fraction · num_segments)`` True per row, chosen uniformly at random (paper §4)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if num_images < 1 or num_segments < 1:
        raise ValueError(f"num_images and num_segments must be >= 1, got {num_images}, {num_segments}")
    k = int(round(fraction * num_segments))
    order = torch.rand(num_images, num_segments, generator=generator).argsort(1)
    return order < k   # argsort of iid noise is a uniform permutation; its first k ranks are removed


def keep_from_segments(segments: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Pixel keep-masks from removed segments. segments: ``(H, W)`` or ``(B, H, W)`` int ids;
    removed: ``(B, S)`` bool. Returns ``(B, 1, H, W)`` float32, 0 where the pixel's segment is removed."""
    if not isinstance(segments, torch.Tensor) or segments.dim() not in (2, 3) or segments.is_floating_point():
        raise ValueError("segments must be an (H, W) or (B, H, W) integer tensor")
    if not isinstance(removed, torch.Tensor) or removed.dim() != 2 or removed.dtype != torch.bool:
        raise ValueError("removed must be a (B, S) bool tensor")
    b = removed.shape[0]
    seg = segments.expand(b, *segments.shape[-2:]) if segments.dim() == 2 else segments
    if seg.shape[0] != b or int(seg.max()) >= removed.shape[1]:
        raise ValueError(f"segments {tuple(segments.shape)} and removed {tuple(removed.shape)} do not match")
    gone = torch.gather(removed.to(seg.device), 1, seg.reshape(b, -1)).view_as(seg)
    return (~gone).float().unsqueeze(1)


def fill_removed(x: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor | str) -> torch.Tensor:
    """The usual way to remove pixels: paint them. x: ``(B, C, H, W)``; keep: ``(B, 1, H, W)``;
    fill: a colour ``(C,)`` (in the model's input space) or ``"mean"`` (each image's own mean
    colour). Returns ``x ⊙ m + fill ⊙ (1 − m)``."""
    _check_x(x)
    _check_keep(keep, x)
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill must be a (C,) colour tensor or 'mean', got {fill!r}")
        colour = x.mean((2, 3), keepdim=True)
    else:
        if not isinstance(fill, torch.Tensor) or fill.shape != (x.shape[1],):
            raise ValueError(f"fill must be a ({x.shape[1]},) colour tensor or 'mean', got {fill!r}")
        colour = fill.to(x)[None, :, None, None]
    return torch.where(keep > 0, x, colour.expand_as(x))


def missingness_metrics(preds: torch.Tensor, labels: torch.Tensor, clean_preds: torch.Tensor,
                        num_classes: int) -> dict[str, float]:
    """The three measures of missingness bias (paper §4) for predictions ``(N,)`` on masked
    images: accuracy against ``labels``, the entropy (nats) of the histogram of predicted
    classes (low: the fill pushes everything to a few classes), and the fraction of predictions
    equal to ``clean_preds`` (those on the unmasked images)."""
    for n, t in (("preds", preds), ("labels", labels), ("clean_preds", clean_preds)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape != preds.shape:
            raise ValueError(f"{n} must be an (N,) tensor like preds")
    hist = torch.bincount(preds.cpu(), minlength=num_classes).double()
    p = hist / hist.sum()
    entropy = max(0.0, float(-(p[p > 0] * p[p > 0].log()).sum()))   # no "-0.0" for a single class
    return {"accuracy": float((preds == labels).double().mean()), "entropy": entropy,
            "unchanged": float((preds == clean_preds).double().mean())}


def lime_perturbations(num_samples: int, num_segments: int, keep_prob: float = 0.5, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """LIME's random on/off patterns: ``(num_samples, num_segments)`` bool, True = segment kept,
    each kept with probability ``keep_prob``; the first row keeps everything (the image itself).
    Sharing one draw between every fill method makes their explanations comparable (paper §6)."""
    if num_samples < 2 or num_segments < 1:
        raise ValueError(f"num_samples must be >= 2 and num_segments >= 1, got {num_samples}, {num_segments}")
    if not 0.0 < keep_prob < 1.0:
        raise ValueError(f"keep_prob must be in (0, 1), got {keep_prob}")
    z = torch.rand(num_samples, num_segments, generator=generator) < keep_prob
    z[0] = True
    return z


def lime_kernel_weights(z: torch.Tensor, kernel_width: float = 0.25) -> torch.Tensor:
    """LIME's sample weights: ``exp(-d² / w²)`` with ``d`` the cosine distance between each
    pattern ``z: (N, S)`` and the all-kept pattern (LIME's default for images). Returns ``(N,)``."""
    zf = z.double()
    cos = zf.sum(1) / (zf.norm(dim=1) * math.sqrt(z.shape[1])).clamp_min(1e-12)
    d = 1.0 - cos
    return torch.exp(-d ** 2 / kernel_width ** 2)


def lime_scores(z: torch.Tensor, target_prob: torch.Tensor, weights: torch.Tensor, alpha: float = 1.0) -> np.ndarray:
    """One score per segment: the coefficients of a weighted ridge regression (scikit-learn
    ``Ridge``) of the target-class probability on the on/off pattern. z: ``(N, S)``;
    target_prob, weights: ``(N,)``. Returns ``(S,)``."""
    from sklearn.linear_model import Ridge

    if z.dim() != 2 or target_prob.shape != (z.shape[0],) or weights.shape != (z.shape[0],):
        raise ValueError(f"z must be (N, S) and target_prob, weights (N,), got {tuple(z.shape)}, "
                         f"{tuple(target_prob.shape)}, {tuple(weights.shape)}")
    reg = Ridge(alpha=alpha)
    reg.fit(z.double().cpu().numpy(), target_prob.double().cpu().numpy(), sample_weight=weights.cpu().numpy())
    return reg.coef_


def segment_agreement(scores: np.ndarray | torch.Tensor, segments: torch.Tensor, object_mask: torch.Tensor) -> float:
    """How well segment scores point at the object (the official LIME evaluation): the cosine
    similarity between ``scores: (S,)`` and, per segment, ``Σ (object_mask − mean(object_mask))``
    over its pixels. segments, object_mask: ``(H, W)``. 1 = the scores rank exactly by object
    content; 0 = unrelated."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    om = object_mask.double().cpu()
    seg = segments.cpu()
    gt = torch.zeros(s.shape[0], dtype=torch.float64).index_add_(0, seg.reshape(-1), (om - om.mean()).reshape(-1))
    den = float(s.norm() * gt.norm())
    return float((s * gt).sum()) / den if den > 0 else 0.0
