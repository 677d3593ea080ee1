"""ART: Anonymous Region Transformer for Variable Multi-Layer Transparent Image Generation
(Pu et al., CVPR 2025, arXiv:2502.18364; official inference code microsoft/art-msra).

ART generates a *merged* image, a *background* and any number of transparent *foreground
layers* jointly, from a global prompt and an **anonymous region layout**: one box per layer,
without a per-box description. What makes many layers affordable is the **layer-wise region
crop** (paper §3.2): every layer is a full canvas of latent tokens, but only the tokens inside
its box enter the transformer:

1. each box is aligned to the global token grid (:func:`align_box`: floor the start, ceil the
   end; the official ``adjust_coordinate``);
2. the sequence is [merged, background, crop of layer 1, …, crop of layer K], each crop flattened
   row-major (:func:`crop_tokens`, the official ``crop_each_layer``); the merged image and the
   background use the whole canvas as their box;
3. every token carries its absolute position ``(layer, y, x)`` (:func:`layer_position_ids`):
   3-axis rotary embeddings, plus, in the released model, a learned per-layer embedding;
4. plain full attention runs over that one sequence (the saving is in its length,
   :func:`attention_cost`), and the processed tokens are written back into each layer's canvas
   (:func:`fill_tokens`, the official ``fill_in_processed_tokens``), whose outside is set to the
   "empty" value (the latent of grey, here grey with alpha 0);
5. transparent layers are encoded over 50 % grey, ``α·RGB + (1 − α)·0.5`` (:func:`gray_encode`;
   paper §3.1), so that "nothing" is the same grey everywhere.

This module is the method at our scale: pixel-space layers (colour + alpha, no VAE),
:class:`AnonymousRegionDiT` (a :class:`~layerwise.diffusion.dit.TinyDiT` with the layer
embedding), the packing of a batch of layouts into padded sequences (:func:`pack_regions`,
:func:`unpack_regions`), the training loss on crop tokens only, sampling, the paper's consistency
metric, and the cost measurements. Choices that are ours and not the paper's are marked *(ours)*.

Conventions: token grids are ``(B, L, h, w, D)`` (layer ``L``, row ``y``, column ``x``, feature
``D``); boxes are ``(x0, y0, x1, y1)`` with exclusive ends, in pixels for :func:`align_box` and in
token-grid cells everywhere else; a box with ``x1 == x0`` or ``y1 == y0`` is *empty* (a layer that
is absent: it contributes no tokens, as the official ``None`` box).
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from layerwise.core.train import History, fit_steps
from layerwise.data.layouts import layered_scenes, sprite_layout
from layerwise.data.rgba import compose
from layerwise.data.scene import Scene, stack_scenes
from layerwise.diffusion.dit import DiTConfig, TinyDiT, patchify, unpatchify
from layerwise.core.env import progress_bar
from layerwise.diffusion.schedule import ddim_step, make_scheduler, q_sample

__all__ = [
    "GREY", "PREDICTIONS", "gray_encode", "gray_decode",
    "align_box", "token_boxes", "region_tokens", "crop_tokens", "fill_tokens", "layer_position_ids", "full_position_ids",
    "attention_cost", "attention_matrix_bytes",
    "ARTConfig", "AnonymousRegionDiT", "POSITION_VARIANTS", "art_zoo_name",
    "RegionBatch", "scene_layers", "pack_regions", "unpack_regions", "pack_full", "unpack_full", "split_layers",
    "layered_batch",
    "target", "to_eps_x0", "regional_loss", "full_loss", "fit_art", "generate", "heldout_loss",
    "psnr", "consistency_psnr", "alpha_in_box", "box_iou", "layer_metrics", "layout_image", "attention_ablation", "position_ablation",
    "peak_bytes", "COST_CONFIG", "cost_layout", "cost_pass", "measure_cost",
]

#: The value a transparent pixel is encoded as (paper §3.1: layers are flattened over 50 % grey).
GREY = 0.5
#: What an :class:`AnonymousRegionDiT` may predict: the velocity ``v`` or the noise ``ε``.
PREDICTIONS = ("v", "eps")


# ----------------------------------------------------------------------------- argument checks

def _float_tensor(x, name: str, min_dim: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")
    return x


def _int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return v


def _size(size, name: str = "size") -> tuple[int, int]:
    pair = tuple(size) if isinstance(size, (tuple, list, torch.Size)) else (size, size)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {size!r}")
    return _int(pair[0], name), _int(pair[1], name)


def _boxes(boxes, name: str = "boxes", grid: tuple[int, int] | None = None) -> Tensor:
    """Token-grid boxes ``(L, 4)`` as a long tensor; checks order and (with ``grid = (h, w)``) bounds."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be an integer tensor (L, 4) of (x0, y0, x1, y1), got {type(boxes).__name__}")
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (token-grid cells), got dtype {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
        raise ValueError(f"{name} must have shape (L, 4) with L >= 1, got {tuple(boxes.shape)}")
    b = boxes.long()
    x0, y0, x1, y1 = b.unbind(1)
    if bool(((x1 < x0) | (y1 < y0)).any()):
        i = int(torch.nonzero((x1 < x0) | (y1 < y0))[0])
        raise ValueError(f"{name}[{i}] = {b[i].tolist()} is not a box (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
    if grid is not None:
        h, w = grid
        full = (x1 > x0) & (y1 > y0)
        out = full & ((x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h))
        if bool(out.any()):
            i = int(torch.nonzero(out)[0])
            raise ValueError(f"{name}[{i}] = {b[i].tolist()} lies outside the {h}×{w} token grid")
    return b


# ----------------------------------------------------------------------------- transparency encoding

def gray_encode(rgba: Tensor) -> Tensor:
    """Flatten straight-alpha layers over 50 % grey (paper §3.1): ``α·RGB + (1 − α)·0.5``.

    rgba: ``(..., 4, H, W)`` floating, values in [0, 1] → ``(..., 3, H, W)``, same dtype. Fully
    transparent pixels become grey whatever colour they stored; opaque ones keep their colour.
    """
    _float_tensor(rgba, "rgba", 3)
    if rgba.shape[-3] != 4:
        raise ValueError(f"rgba must have shape (..., 4, H, W), got {tuple(rgba.shape)}")
    a = rgba[..., 3:4, :, :]
    return a * rgba[..., :3, :, :] + (1 - a) * GREY


def gray_decode(encoded: Tensor, alpha: Tensor, eps: float = 1e-3) -> Tensor:
    """The inverse of :func:`gray_encode` given the alpha: straight RGBA ``(..., 4, H, W)``.

    encoded: ``(..., 3, H, W)``; alpha: ``(..., H, W)`` or ``(..., 1, H, W)``, both in [0, 1].
    ``RGB = (encoded − (1 − α)·0.5) / α`` where ``α > eps`` (grey elsewhere), clipped to [0, 1].
    Compositing the result over a background ``bg`` gives ``encoded + (1 − α)(bg − 0.5)``.
    """
    _float_tensor(encoded, "encoded", 3)
    _float_tensor(alpha, "alpha", 2)
    if encoded.shape[-3] != 3:
        raise ValueError(f"encoded must have shape (..., 3, H, W), got {tuple(encoded.shape)}")
    a = alpha if alpha.dim() == encoded.dim() else alpha.unsqueeze(-3)
    if a.shape[-3] != 1 or a.shape[-2:] != encoded.shape[-2:]:
        raise ValueError(f"alpha must be (..., H, W) or (..., 1, H, W) matching encoded {tuple(encoded.shape)}, "
                         f"got {tuple(alpha.shape)}")
    a = a.clamp(0.0, 1.0)
    ok = a > eps
    rgb = torch.where(ok, (encoded - (1 - a) * GREY) / torch.where(ok, a, torch.ones_like(a)),
                      torch.full_like(encoded, GREY))
    return torch.cat([rgb.clamp(0.0, 1.0), a.expand_as(encoded[..., :1, :, :])], dim=-3)


# ----------------------------------------------------------------------------- boxes, crops and positions

def align_box(box, patch: int, size) -> tuple[int, int, int, int] | None:
    """Align a pixel box ``(x0, y0, x1, y1)`` (exclusive ends) to the global grid of ``patch``-pixel
    tokens: clamp it to the canvas, floor the start and ceil the end to multiples of ``patch``
    (the official ``adjust_coordinate``, with ``patch`` = VAE factor × DiT patch = 16 there).

    size: the canvas, an int or ``(H, W)`` in pixels, a multiple of ``patch``. Returns the aligned
    box as 4 ints (multiples of ``patch``), or ``None`` for an empty box (``x1 == x0`` or
    ``y1 == y0``: a layer with nothing in it). A box with ``x1 < x0`` or ``y1 < y0``, or one that
    does not overlap the canvas at all, is an error.
    """
    patch = _int(patch, "patch")
    h, w = _size(size)
    if h % patch or w % patch:
        raise ValueError(f"size {h}×{w} must be a multiple of patch={patch}")
    if isinstance(box, Tensor):
        if box.numel() != 4:
            raise ValueError(f"box must hold 4 numbers (x0, y0, x1, y1), got shape {tuple(box.shape)}")
        vals = box.flatten().tolist()
    elif isinstance(box, (tuple, list)) and len(box) == 4:
        vals = list(box)
    else:
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in vals):
        raise TypeError(f"box must hold 4 finite numbers, got {vals!r}")
    x0, y0, x1, y1 = vals
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {vals} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
    if x1 == x0 or y1 == y0:
        return None
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise ValueError(f"box {vals} lies outside the {h}×{w} canvas")
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    return (int(math.floor(x0 / patch)) * patch, int(math.floor(y0 / patch)) * patch,
            int(math.ceil(x1 / patch)) * patch, int(math.ceil(y1 / patch)) * patch)


def token_boxes(boxes, patch: int, size) -> Tensor:
    """Pixel boxes (a tensor ``(L, 4)`` or a list of boxes / ``None``) → aligned token-grid boxes
    ``(L, 4)`` long: :func:`align_box` divided by ``patch``; empty boxes become ``(0, 0, 0, 0)``."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must have shape (L, 4), got {tuple(boxes.shape)}")
        items = list(boxes)
    elif isinstance(boxes, (list, tuple)):
        items = list(boxes)
    else:
        raise TypeError(f"boxes must be a tensor (L, 4) or a list of boxes, got {type(boxes).__name__}")
    if not items:
        raise ValueError("boxes is empty")
    out = torch.zeros(len(items), 4, dtype=torch.long)
    for i, b in enumerate(items):
        a = None if b is None else align_box(b, patch, size)
        if a is not None:
            out[i] = torch.tensor(a) // patch
    return out


def region_tokens(boxes: Tensor) -> Tensor:
    """Tokens each box contributes: ``(L,)`` long, ``(x1 − x0)·(y1 − y0)`` (0 for an empty box)."""
    b = _boxes(boxes)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def crop_tokens(grid_tokens: Tensor, boxes: Tensor) -> Tensor:
    """The layer-wise region crop (official ``crop_each_layer``): one sequence of the tokens inside the boxes.

    grid_tokens: ``(B, L, h, w, D)``, every layer's full token grid; boxes: ``(L, 4)`` integer
    token-grid boxes ``(x0, y0, x1, y1)``, exclusive ends, one per layer (the same layout for the
    whole batch). Returns ``(B, N, D)`` with ``N`` = the boxes' total area: layer 0's crop first,
    then layer 1's, …; inside a crop row by row (row-major). Empty boxes contribute nothing.
    """
    _float_tensor(grid_tokens, "grid_tokens")
    if grid_tokens.dim() != 5:
        raise ValueError(f"grid_tokens must have shape (B, L, h, w, D), got {tuple(grid_tokens.shape)}")
    b, n_layers, h, w, d = grid_tokens.shape
    boxes = _boxes(boxes, grid=(h, w))
    if boxes.shape[0] != n_layers:
        raise ValueError(f"boxes has {boxes.shape[0]} rows but grid_tokens has {n_layers} layers")
    parts = [grid_tokens[:, i, y0:y1, x0:x1].reshape(b, -1, d)
             for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()) if x1 > x0 and y1 > y0]
    return torch.cat(parts, dim=1) if parts else grid_tokens.new_zeros(b, 0, d)


def fill_tokens(seq: Tensor, boxes: Tensor, like: Tensor) -> Tensor:
    """Write a cropped sequence back into the layers' canvases (official ``fill_in_processed_tokens``).

    seq: ``(B, N, D)`` in the order of :func:`crop_tokens`; boxes: ``(L, 4)`` as there; like:
    ``(B, L, h, w, D)``, the canvas outside the boxes (zeros, or the "empty" value). Returns a copy
    of ``like`` with every box's tokens taken from ``seq``: ``fill_tokens(crop_tokens(g, boxes),
    boxes, like)`` equals ``g`` inside the boxes and ``like`` outside.
    """
    _float_tensor(seq, "seq")
    _float_tensor(like, "like")
    if seq.dim() != 3:
        raise ValueError(f"seq must have shape (B, N, D), got {tuple(seq.shape)}")
    if like.dim() != 5:
        raise ValueError(f"like must have shape (B, L, h, w, D), got {tuple(like.shape)}")
    b, n_layers, h, w, d = like.shape
    boxes = _boxes(boxes, grid=(h, w))
    if boxes.shape[0] != n_layers:
        raise ValueError(f"boxes has {boxes.shape[0]} rows but like has {n_layers} layers")
    n = int(region_tokens(boxes).sum())
    if seq.shape[0] != b or seq.shape[1] != n or seq.shape[2] != d:
        raise ValueError(f"seq must have shape (B={b}, N={n}, D={d}) for these boxes, got {tuple(seq.shape)}")
    out = like.clone().to(seq.dtype) if like.dtype != seq.dtype else like.clone()
    start = 0
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if x1 > x0 and y1 > y0:
            k = (x1 - x0) * (y1 - y0)
            out[:, i, y0:y1, x0:x1] = seq[:, start:start + k].reshape(b, y1 - y0, x1 - x0, d)
            start += k
    return out


def layer_position_ids(boxes: Tensor) -> Tensor:
    """Absolute 3-axis positions ``(layer, y, x)`` of the tokens :func:`crop_tokens` takes: ``(N, 3)`` long.

    boxes: ``(L, 4)`` integer token-grid boxes. Token ``(y, x)`` of the crop of layer ``l`` gets
    ``(l, y, x)``, its row and column *on the canvas* (not inside the crop): tokens of different
    layers at the same place share ``(y, x)`` and differ in ``l``. The layer index is the box's
    row, also when an earlier box is empty (the official code keeps the indices too).
    """
    b = _boxes(boxes)
    ids = []
    for i, (x0, y0, x1, y1) in enumerate(b.tolist()):
        if x1 > x0 and y1 > y0:
            ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
            ids.append(torch.stack([torch.full_like(ys, i), ys, xs], dim=-1).reshape(-1, 3))
    return torch.cat(ids) if ids else torch.zeros(0, 3, dtype=torch.long)


def full_position_ids(n_layers: int, grid) -> Tensor:
    """Positions of every token of ``n_layers`` full ``grid = (h, w)`` canvases: ``(n_layers·h·w, 3)``
    (the full-attention baseline's sequence)."""
    n_layers = _int(n_layers, "n_layers")
    h, w = _size(grid, "grid")
    full = torch.tensor([[0, 0, w, h]] * n_layers)
    return layer_position_ids(full)


# ----------------------------------------------------------------------------- what it costs

def attention_cost(n_tokens, dim: int, depth: int = 1) -> float | Tensor:
    """Analytic multiply-add count ×2 (FLOPs) of ``depth`` transformer blocks over ``n_tokens`` tokens.

    Per block: ``12·N·d²`` multiply-adds in the linear layers (q, k, v and the output projection:
    ``4·N·d²``; an MLP of width ``4d``: ``8·N·d²``) and ``2·N²·d`` in attention (``Q Kᵀ`` and the
    weighted sum of ``V``); FLOPs are twice that: ``depth · (24·N·d² + 4·N²·d)``. Normalisations,
    the timestep conditioning and the softmax are left out. The second term wins once ``N > 6·d``.
    n_tokens: a number or a tensor of numbers.
    """
    dim, depth = _int(dim, "dim"), _int(depth, "depth")
    if isinstance(n_tokens, Tensor):
        n = n_tokens.double()
        if bool((n < 0).any()):
            raise ValueError("n_tokens must be >= 0")
    else:
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, float)) or n_tokens < 0:
            raise ValueError(f"n_tokens must be a number >= 0, got {n_tokens!r}")
        n = float(n_tokens)
    return depth * (24 * n * dim ** 2 + 4 * n ** 2 * dim)


def attention_matrix_bytes(n_tokens: int, heads: int, batch: int = 1, bytes_per_value: int = 4) -> int:
    """Bytes of the ``(batch, heads, N, N)`` attention matrix a naive (materialising) kernel holds per block.

    Fused kernels (flash attention, PyTorch's CPU and GPU ``scaled_dot_product_attention``) never
    hold it; this is the number that makes full attention run out of memory without them."""
    n = _int(n_tokens, "n_tokens", 0)
    return _int(batch, "batch") * _int(heads, "heads") * n * n * _int(bytes_per_value, "bytes_per_value")


# ----------------------------------------------------------------------------- the model

@dataclass
class ARTConfig:
    """Sizes of an :class:`AnonymousRegionDiT`.

    ``channels`` per pixel of every layer (colour + alpha: 4), ``canvas`` pixels per side,
    ``patch`` pixels per token side; ``pos_axes`` 3 for ``(layer, y, x)`` rotary positions, 2 for
    ``(y, x)`` only (Table 5's 2D-RoPE); ``layer_embedding`` adds a learned vector per layer index
    (the release's ``layer_pe``, up to ``max_layers`` layers); ``box_embedding`` adds a learned
    "inside / outside my box" vector per token *(ours: how the full-attention baseline, whose layers
    are all full canvases, is told the layout)*. ``prediction``: what the network outputs, ``"v"``
    (``v = √ᾱ·ε − √(1−ᾱ)·x₀``, Salimans & Ho 2022; the nearest to FLUX's flow-matching velocity on our
    DDPM schedule, and much steadier than ε for a small pixel model at high noise) or ``"eps"``.
    """

    channels: int = 4
    canvas: int = 32
    patch: int = 4
    dim: int = 96
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    pos_axes: int = 3
    layer_embedding: bool = True
    box_embedding: bool = False
    max_layers: int = 8
    rope_base: float = 100.0
    prediction: str = "v"

    def __post_init__(self) -> None:
        if self.pos_axes not in (2, 3):
            raise ValueError(f"pos_axes must be 2 or 3, got {self.pos_axes!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; expected one of {PREDICTIONS}")
        _int(self.max_layers, "max_layers")
        self.dit_config()                                     # checks the DiT's sizes

    def dit_config(self) -> DiTConfig:
        return DiTConfig(in_channels=self.channels, image_size=self.canvas, patch=self.patch, dim=self.dim,
                         depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio, pos_axes=self.pos_axes,
                         rope_base=self.rope_base)

    @property
    def grid(self) -> int:
        return self.canvas // self.patch

    @property
    def token_dim(self) -> int:
        return self.channels * self.patch ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class AnonymousRegionDiT(nn.Module):
    """ART's denoiser at our scale: ``model(tokens, t, pos_ids, valid) → ε̂`` over a region sequence.

    A :class:`~layerwise.diffusion.dit.TinyDiT` (adaLN-Zero, rotary positions) run on the caller's
    sequence with :meth:`~layerwise.diffusion.dit.TinyDiT.forward_tokens`. ``pos_ids`` are always
    the 3-axis ``(layer, y, x)`` of :func:`layer_position_ids`; a 2-axis model rotates by ``(y, x)``
    only, and the layer embedding (if any) is looked up by the layer index, trunc-normal(0.02) at
    initialisation as in the release. ``valid`` ``(B, N)`` marks real tokens of a padded batch
    (padding is masked out as keys). No text: the model is conditioned on the layout alone *(ours)*.
    """

    def __init__(self, config: ARTConfig | None = None, **overrides):
        super().__init__()
        cfg = config or ARTConfig(**overrides)
        self.config = cfg
        self.dit = TinyDiT(cfg.dit_config())
        self.layer_embed = nn.Parameter(torch.zeros(cfg.max_layers, cfg.dim)) if cfg.layer_embedding else None
        if self.layer_embed is not None:
            nn.init.trunc_normal_(self.layer_embed, std=0.02)
        self.box_embed = nn.Parameter(torch.zeros(2, cfg.dim)) if cfg.box_embedding else None
        if self.box_embed is not None:
            nn.init.trunc_normal_(self.box_embed, std=0.02)

    def forward(self, tokens: Tensor, t: Tensor, pos_ids: Tensor, valid: Tensor | None = None,
                in_box: Tensor | None = None) -> Tensor:
        """tokens ``(B, N, D)``, t ``(B,)``, pos_ids ``(N, 3)`` or ``(B, N, 3)``, valid ``(B, N)`` bool or
        None (all real), in_box ``(B, N)`` bool (only with ``box_embedding``) → ε̂ ``(B, N, D)``."""
        cfg = self.config
        _float_tensor(tokens, "tokens", 3)
        if tokens.dim() != 3 or tokens.shape[-1] != cfg.token_dim:
            raise ValueError(f"tokens must have shape (B, N, {cfg.token_dim}), got {tuple(tokens.shape)}")
        if not isinstance(pos_ids, Tensor) or pos_ids.shape[-1] != 3 or pos_ids.dim() not in (2, 3) \
                or pos_ids.shape[-2] != tokens.shape[1]:
            raise ValueError(f"pos_ids must be (N={tokens.shape[1]}, 3) or (B, N, 3) of (layer, y, x), "
                             f"got {tuple(getattr(pos_ids, 'shape', ()))}")
        b, n, _ = tokens.shape
        layer = pos_ids[..., 0].long()
        if n and (int(layer.min()) < 0 or (self.layer_embed is not None and int(layer.max()) >= cfg.max_layers)):
            raise ValueError(f"pos_ids' layer index must be in [0, max_layers={cfg.max_layers}), got "
                             f"{int(layer.min())}..{int(layer.max())}")
        ids = pos_ids if cfg.pos_axes == 3 else pos_ids[..., 1:]
        add = None
        if self.layer_embed is not None:
            add = self.layer_embed[layer]
        if self.box_embed is not None:
            if in_box is None:
                raise ValueError("this model has a box embedding: pass in_box (B, N) bool")
            box_add = self.box_embed[in_box.long()]
            add = box_add if add is None else add + box_add
        if add is not None and add.dim() == 2:
            add = add.expand(b, n, cfg.dim)
        mask = None
        if valid is not None:
            if not isinstance(valid, Tensor) or valid.shape != (b, n) or valid.dtype != torch.bool:
                raise ValueError(f"valid must be a bool tensor (B={b}, N={n}), got "
                                 f"{getattr(valid, 'dtype', type(valid).__name__)} {tuple(getattr(valid, 'shape', ()))}")
            if not bool(valid.all()):
                mask = valid[:, None, :].expand(b, n, n)       # padding is never a key
        return self.dit.forward_tokens(tokens, t, pos_ids=ids, mask=mask, embed_add=add)


# ----------------------------------------------------------------------------- data → sequences

@dataclass
class RegionBatch:
    """A batch of layouts packed into one padded sequence each.

    ``tokens (B, N, D)`` in [-1, 1] (zeros where padded), ``pos_ids (B, N, 3)`` long,
    ``valid (B, N)`` bool (False = padding), ``boxes (B, L, 4)`` the token-grid boxes used,
    ``in_box (B, N)`` bool (True for every regional token; for the full baseline, inside the box).
    """

    tokens: Tensor
    pos_ids: Tensor
    valid: Tensor
    boxes: Tensor
    in_box: Tensor

    def to(self, device) -> "RegionBatch":
        return RegionBatch(*(x.to(device) for x in (self.tokens, self.pos_ids, self.valid, self.boxes, self.in_box)))

    @property
    def lengths(self) -> Tensor:
        return self.valid.sum(1)


def _check_batch(batch) -> "RegionBatch":
    if not isinstance(batch, RegionBatch):
        raise TypeError(f"batch must be a RegionBatch (from pack_regions / pack_full / layered_batch), "
                        f"got {type(batch).__name__}")
    return batch


def scene_layers(batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """A :func:`~layerwise.data.scene.stack_scenes` batch as ART's layer stack.

    Returns ``canvases (B, 2 + K, 4, H, W)`` in [0, 1] (merged image and background with alpha 1,
    then each layer as :func:`gray_encode` d colour + its alpha), ``boxes (B, 2 + K, 4)`` long pixel
    boxes (the whole canvas for the first two, the layers' tight boxes, zeros for padding) and
    ``valid (B, 2 + K)`` bool. Only "over" layers composite exactly like this *(ours: no blend modes)*.
    """
    if not isinstance(batch, dict) or not {"image", "background", "layers", "boxes", "valid"} <= set(batch):
        raise ValueError("batch must be a stack_scenes(...) dict with image, background, layers, boxes and valid")
    image, bg, layers = batch["image"], batch["background"], batch["layers"]
    b, k, _, h, w = layers.shape
    one = torch.ones(b, 1, 1, h, w, dtype=image.dtype)
    fg = torch.cat([gray_encode(layers), layers[:, :, 3:4]], dim=2)
    canvases = torch.cat([torch.cat([image[:, None], one], 2), torch.cat([bg[:, None], one], 2), fg], dim=1)
    full = torch.tensor([0, 0, w, h]).expand(b, 2, 4)
    boxes = torch.cat([full, torch.where(batch["valid"][..., None], batch["boxes"], torch.zeros_like(batch["boxes"]))], 1)
    valid = torch.cat([torch.ones(b, 2, dtype=torch.bool), batch["valid"]], 1)
    return canvases, boxes.long(), valid


def _empty_value(channels: int, dtype=torch.float32) -> Tensor:
    """The "nothing here" pixel in [-1, 1]: grey colour, alpha 0 (the official grey latent)."""
    v = torch.zeros(channels, dtype=dtype)
    v[-1] = -1.0
    return v


def _grids(canvases: Tensor, patch: int) -> Tensor:
    """``(B, L, C, H, W)`` → token grids ``(B, L, H/p, W/p, C·p·p)``."""
    b, n_layers, c, h, w = canvases.shape
    tok = patchify(canvases.reshape(b * n_layers, c, h, w), patch)
    return tok.reshape(b, n_layers, h // patch, w // patch, -1)


def pack_regions(canvases: Tensor, boxes: Tensor, patch: int) -> RegionBatch:
    """ART's sequence for each item of a batch: crops of its layers, padded to the longest.

    canvases: ``(B, L, C, H, W)`` in [0, 1] (mapped to [-1, 1]); boxes: ``(B, L, 4)`` *pixel* boxes
    (aligned here with :func:`token_boxes`). Every item has its own layout, so the crops are taken
    per item (:func:`crop_tokens`, :func:`layer_position_ids`) and padded; ``valid`` masks the padding.
    """
    _float_tensor(canvases, "canvases")
    if canvases.dim() != 5:
        raise ValueError(f"canvases must have shape (B, L, C, H, W), got {tuple(canvases.shape)}")
    b, n_layers, c, h, w = canvases.shape
    if not isinstance(boxes, Tensor) or boxes.shape != (b, n_layers, 4):
        raise ValueError(f"boxes must have shape (B={b}, L={n_layers}, 4), got {tuple(getattr(boxes, 'shape', ()))}")
    grids = _grids(canvases * 2 - 1, patch)
    tboxes = torch.stack([token_boxes(boxes[i], patch, (h, w)) for i in range(b)])
    seqs = [crop_tokens(grids[i:i + 1], tboxes[i])[0] for i in range(b)]
    ids = [layer_position_ids(tboxes[i]) for i in range(b)]
    n = max(s.shape[0] for s in seqs)
    tokens = grids.new_zeros(b, n, grids.shape[-1])
    pos = torch.zeros(b, n, 3, dtype=torch.long)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, (s, p) in enumerate(zip(seqs, ids)):
        tokens[i, :len(s)], pos[i, :len(s)], valid[i, :len(s)] = s, p, True
    return RegionBatch(tokens, pos, valid, tboxes, valid.clone())


def _unpack_sizes(seq: Tensor, batch: "RegionBatch", patch: int, size) -> tuple[int, int, int, int, int, int]:
    """Checks ``seq`` against ``batch`` for the two unpackers; returns ``(H, W, B, L, D, C)``."""
    _float_tensor(seq, "seq", 3)
    _check_batch(batch)
    if seq.shape[:2] != batch.tokens.shape[:2]:
        raise ValueError(f"seq must have shape (B, N) = {tuple(batch.tokens.shape[:2])} in front, got {tuple(seq.shape)}")
    h, w = _size(size)
    b, n_layers = batch.boxes.shape[:2]
    d = seq.shape[-1]
    return h, w, b, n_layers, d, d // (patch * patch)


def unpack_regions(seq: Tensor, batch: RegionBatch, patch: int, size) -> Tensor:
    """The inverse of :func:`pack_regions`: ``seq (B, N, D)`` → canvases ``(B, L, C, H, W)`` in [0, 1],
    each layer's outside set to the empty value (grey, alpha 0)."""
    h, w, b, n_layers, d, c = _unpack_sizes(seq, batch, patch, size)
    like = _empty_value(c, seq.dtype).repeat_interleave(patch * patch)       # patchify's (C, p, p) order
    like = like.to(seq.device).expand(1, n_layers, h // patch, w // patch, d)
    out = []
    for i in range(b):
        k = int(batch.valid[i].sum())
        out.append(fill_tokens(seq[i:i + 1, :k], batch.boxes[i].cpu(), like)[0])
    grids = torch.stack(out)                                      # (B, L, h, w, D)
    canv = unpatchify(grids.reshape(b * n_layers, -1, d), patch, c, h, w).reshape(b, n_layers, c, h, w)
    return ((canv + 1) / 2).clamp(0.0, 1.0)


def pack_full(canvases: Tensor, boxes: Tensor, valid_layers: Tensor, patch: int) -> RegionBatch:
    """The full-attention baseline's sequence: *every* layer at full canvas size (paper Table 4's "Full Att.").

    Same arguments as :func:`pack_regions` plus ``valid_layers (B, L)`` bool (absent layers are
    padding); ``in_box`` marks the tokens inside each layer's aligned box (the layout, which this
    model is told through its box embedding)."""
    _float_tensor(canvases, "canvases", 5)
    b, n_layers, c, h, w = canvases.shape
    if not isinstance(valid_layers, Tensor) or valid_layers.shape != (b, n_layers) or valid_layers.dtype != torch.bool:
        raise ValueError(f"valid_layers must be a bool tensor (B={b}, L={n_layers})")
    grids = _grids(canvases * 2 - 1, patch)
    gh, gw = h // patch, w // patch
    tboxes = torch.stack([token_boxes(boxes[i], patch, (h, w)) for i in range(b)])
    tokens = grids.reshape(b, n_layers * gh * gw, -1)
    pos = full_position_ids(n_layers, (gh, gw)).expand(b, -1, 3).clone()
    valid = valid_layers[:, :, None].expand(b, n_layers, gh * gw).reshape(b, -1).clone()
    ys, xs = pos[..., 1], pos[..., 2]
    bx = tboxes.gather(1, pos[..., :1].expand(-1, -1, 4))           # each token's layer's box
    in_box = (xs >= bx[..., 0]) & (xs < bx[..., 2]) & (ys >= bx[..., 1]) & (ys < bx[..., 3]) & valid
    return RegionBatch(tokens, pos, valid, tboxes, in_box)


def unpack_full(seq: Tensor, batch: RegionBatch, patch: int, size) -> Tensor:
    """``seq (B, L·h·w, D)`` of :func:`pack_full` → canvases ``(B, L, C, H, W)`` in [0, 1], as generated
    (nothing is overwritten: what the model puts outside a box stays there)."""
    h, w, b, n_layers, d, c = _unpack_sizes(seq, batch, patch, size)
    canv = unpatchify(seq.reshape(b * n_layers, -1, d), patch, c, h, w).reshape(b, n_layers, c, h, w)
    return ((canv + 1) / 2).clamp(0.0, 1.0)


def split_layers(canvases: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ART's layer stack ``(B, 2 + K, 4, H, W)`` in [0, 1] → ``(merged (B, 3, H, W), background (B, 3, H, W),
    layers (B, K, 4, H, W))``, the layers as straight-alpha RGBA (:func:`gray_decode`)."""
    _float_tensor(canvases, "canvases")
    if canvases.dim() != 5 or canvases.shape[1] < 2 or canvases.shape[2] != 4:
        raise ValueError(f"canvases must have shape (B, 2 + K, 4, H, W), got {tuple(canvases.shape)}")
    fg = canvases[:, 2:]
    return canvases[:, 0, :3], canvases[:, 1, :3], gray_decode(fg[:, :, :3], fg[:, :, 3])


def layered_batch(scenes: Sequence[Scene], patch: int, *, max_layers: int | None = None,
                  full: bool = False) -> tuple[RegionBatch, dict]:
    """Scenes → the packed batch a model trains on, and the :func:`~layerwise.data.scene.stack_scenes` dict.

    ``full=False``: ART's regional sequences (:func:`pack_regions`); ``full=True``: the full-attention
    baseline's (:func:`pack_full`). ``max_layers`` pads every scene to that many foreground layers."""
    stacked = stack_scenes(scenes, max_layers)
    canvases, boxes, valid = scene_layers(stacked)
    batch = pack_full(canvases, boxes, valid, patch) if full else pack_regions(canvases, boxes, patch)
    return batch, stacked


# ----------------------------------------------------------------------------- training and sampling

def _masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    w = weight.to(pred.dtype)
    return ((pred - target).pow(2).mean(-1) * w).sum() / w.sum().clamp_min(1.0)


def target(prediction: str, x0: Tensor, noise: Tensor, abar: Tensor) -> Tensor:
    """The training target of a ``prediction`` model: ``ε`` itself, or ``v = √ᾱ·ε − √(1−ᾱ)·x₀``.
    x0, noise: ``(B, ...)``; abar: ``(B,)`` ᾱ of each item's timestep."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    if prediction == "eps":
        return noise
    a = abar.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def to_eps_x0(prediction: str, out: Tensor, x_t: Tensor, abar: Tensor) -> tuple[Tensor, Tensor]:
    """A network output ``out`` of a ``prediction`` model at ``x_t`` → ``(ε̂, x̂₀)``. For v:
    ``x̂₀ = √ᾱ·x_t − √(1−ᾱ)·v̂`` and ``ε̂ = √(1−ᾱ)·x_t + √ᾱ·v̂``; for ε: ``x̂₀ = (x_t − √(1−ᾱ)·ε̂) / √ᾱ``.
    abar: ``(B,)`` or a scalar tensor."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    a = abar.reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype) if abar.dim() else abar.to(x_t.dtype)
    if prediction == "eps":
        return out, (x_t - (1 - a).sqrt() * out) / a.sqrt()
    return (1 - a).sqrt() * x_t + a.sqrt() * out, a.sqrt() * x_t - (1 - a).sqrt() * out


def regional_loss(model: AnonymousRegionDiT, batch: RegionBatch, alphas_cumprod: Tensor, *,
                  generator: torch.Generator, t: Tensor | None = None) -> Tensor:
    """The denoising loss on the crop tokens only (padding left out): ``E ‖target − f(x_t, t)‖²`` over real
    tokens, the target :func:`target` of the model's ``prediction`` (v: our default; ε: the DDPM loss).

    One timestep per item: all layers of a design are noised and denoised together. The official
    training code was withdrawn (the paper fine-tunes FLUX with flow matching), so the loss and its
    weighting are our reading *(ours)*."""
    _check_batch(batch)
    x0 = batch.tokens
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    pred = model(q_sample(x0, t, noise, alphas_cumprod), t, batch.pos_ids, batch.valid, batch.in_box)
    goal = target(model.config.prediction, x0, noise, alphas_cumprod.to(x0.device)[t])
    return _masked_mse(pred, goal, batch.valid)


def full_loss(model: AnonymousRegionDiT, batch: RegionBatch, alphas_cumprod: Tensor, *,
              generator: torch.Generator, t: Tensor | None = None) -> Tensor:
    """The full-attention baseline's loss: every token of every present layer, inside its box or not
    (it must learn to leave the outside empty)."""
    return regional_loss(model, batch, alphas_cumprod, generator=generator, t=t)


@torch.no_grad()
def generate(model: AnonymousRegionDiT, batch: RegionBatch, *, steps: int = 25, generator: torch.Generator,
             full: bool = False, clip: bool = True, progress: bool | None = False) -> Tensor:
    """Sample a layer stack for each layout of ``batch`` (only its boxes, positions and masks are used):
    deterministic DDIM from pure noise over the packed sequence, then written back into canvases.

    With ``clip`` each step's estimate of the clean sequence, ``x̂₀``, is clipped to the data's range
    [-1, 1] and the step taken from the clipped estimate (the original DDPM sampler's clipping; ours,
    for a small pixel-space model). Returns ``(B, L, 4, H, W)`` in [0, 1] (:func:`split_layers` turns
    it into merged, background and RGBA layers). ``full=True`` for a model trained on :func:`pack_full`.
    """
    _int(steps, "steps")
    _check_batch(batch)
    device = next(model.parameters()).device
    batch = batch.to(device)
    cfg = model.config
    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    acp = scheduler.alphas_cumprod.to(device)
    x = torch.randn(tuple(batch.tokens.shape), generator=generator).to(device)
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(progress_bar(timesteps, desc="DDIM sampling", enabled=progress)):
        tt = torch.full((x.shape[0],), int(t), device=device, dtype=torch.long)
        abar, abar_prev = acp[int(t)], (acp[int(timesteps[i + 1])] if i + 1 < len(timesteps) else acp.new_tensor(1.0))
        eps, x0 = to_eps_x0(cfg.prediction, model(x, tt, batch.pos_ids, batch.valid, batch.in_box), x, abar)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        x = ddim_step(x, eps, abar, abar_prev) if i + 1 < len(timesteps) else x0
    x = torch.where(batch.valid[..., None], x, torch.zeros_like(x))
    unpack = unpack_full if full else unpack_regions
    return unpack(x, batch, cfg.patch, cfg.canvas)


def fit_art(model: AnonymousRegionDiT, *, steps: int, scenes: dict, batch_size: int = 32, lr: float = 1e-3,
            warmup: int = 100, cosine: bool = True, ema: float | None = 0.995, seed: int = 0, full: bool = False,
            generator: torch.Generator, device: torch.device | str = "cpu", progress: bool | None = None,
            desc: str = "ART training") -> History:
    """Train a layered generator with :func:`~layerwise.core.train.fit_steps` (AdamW, warm-up, a cosine decay if
    ``cosine``, clipping at 1, EMA): every step draws ``batch_size`` fresh scenes (:func:`~layerwise.data.layouts.layered_scenes` with
    ``scenes`` as its keyword arguments, seeded by ``seed`` and the step) and takes one step on
    :func:`regional_loss` (ART) or, with ``full=True``, :func:`full_loss` over
    :func:`pack_full` sequences (the baseline). Returns the :class:`~layerwise.core.train.History`."""
    _int(steps, "steps", 0)
    _int(batch_size, "batch_size")
    if not isinstance(scenes, dict):
        raise TypeError(f"scenes must be a dict of layered_scenes keyword arguments, got {type(scenes).__name__}")
    device = torch.device(device)
    model.to(device)
    acp = make_scheduler("ddpm").alphas_cumprod.to(device)
    patch = model.config.patch
    loss = full_loss if full else regional_loss
    pad = scenes.get("n_layers", (2, 6))
    pad = pad if isinstance(pad, int) else pad[1]

    def loss_fn(step: int) -> Tensor:
        batch, _ = layered_batch(layered_scenes(batch_size, seed=seed * 100_003 + step, **scenes), patch,
                                 max_layers=pad if full else None, full=full)
        return loss(model, batch.to(device), acp, generator=generator)

    return fit_steps(model, loss_fn, steps, lr=lr, warmup=warmup, cosine=cosine, clip=1.0, ema=ema,
                     progress=progress, desc=desc)


@torch.no_grad()
def heldout_loss(model: AnonymousRegionDiT, batch: RegionBatch, *, generator: torch.Generator, repeats: int = 2,
                 chunk: int = 64) -> float:
    """Mean training loss (:func:`regional_loss`) of ``model`` on ``batch`` (its real tokens) over ``repeats`` draws of timesteps and noise
    from ``generator``: two models given generators with the same seed see the same draws.

    The timesteps are *stratified*: in each repeat the B items get one timestep from each of B equal
    slices of [0, T), in random order. The estimate is unbiased like uniform draws, with far less
    variance (the loss at small t is many times the loss at large t)."""
    _int(repeats, "repeats")
    _check_batch(batch)
    device = next(model.parameters()).device
    acp = make_scheduler("ddpm").alphas_cumprod.to(device)
    n, steps = batch.tokens.shape[0], len(acp)
    was = model.training
    model.eval()
    total, weight = 0.0, 0.0
    for _ in range(repeats):
        strata = ((torch.arange(n) + torch.rand(n, generator=generator, dtype=torch.float64)) * steps / n).long()
        t_all = strata.clamp(max=steps - 1)[torch.randperm(n, generator=generator)]
        for i in range(0, n, chunk):
            part = RegionBatch(*(x[i:i + chunk] for x in (batch.tokens, batch.pos_ids, batch.valid, batch.boxes,
                                                          batch.in_box))).to(device)
            w = float(part.valid.sum())
            loss = regional_loss(model, part, acp, generator=generator, t=t_all[i:i + chunk].to(device))
            total += float(loss) * w
            weight += w
    model.train(was)
    return total / weight


# ----------------------------------------------------------------------------- metrics

def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-item PSNR in dB of images in [0, 1]: ``a, b (B, ...)`` → ``(B,)`` (capped at 100 dB)."""
    _float_tensor(a, "a", 2)
    _float_tensor(b, "b", 2)
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    mse = (a - b).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def consistency_psnr(merged: Tensor, background: Tensor, layers: Tensor) -> Tensor:
    """The paper's consistency measure: PSNR between the generated merged image and the alpha-composite
    of the generated layers over the generated background. merged, background ``(B, 3, H, W)``,
    layers ``(B, K, 4, H, W)`` straight alpha (bottom to top) → ``(B,)`` dB."""
    _float_tensor(layers, "layers", 5)
    return psnr(merged, compose(background, layers))


def alpha_in_box(alpha: Tensor, boxes: Tensor, threshold: float = 0.1) -> Tensor:
    """Share of each layer's alpha mass inside its pixel box, counting pixels with ``alpha > threshold``
    (faint speckle below it is ignored): alpha ``(B, K, H, W)``, boxes ``(B, K, 4)`` → ``(B, K)`` in [0, 1]
    (1 for a layer with nothing above the threshold: nothing lies outside)."""
    _float_tensor(alpha, "alpha", 4)
    if alpha.dim() != 4 or not isinstance(boxes, Tensor) or boxes.shape != (*alpha.shape[:2], 4):
        raise ValueError(f"alpha must be (B, K, H, W) and boxes (B, K, 4), got {tuple(alpha.shape)} and "
                         f"{tuple(getattr(boxes, 'shape', ()))}")
    h, w = alpha.shape[-2:]
    ys = torch.arange(h, device=alpha.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=alpha.device).view(1, 1, 1, w)
    bx = boxes.to(alpha.device)[..., None, None]
    inside = (xs >= bx[..., 0, :, :]) & (xs < bx[..., 2, :, :]) & (ys >= bx[..., 1, :, :]) & (ys < bx[..., 3, :, :])
    mass = alpha * (alpha > threshold)
    total = mass.sum((-2, -1))
    share = (mass * inside).sum((-2, -1)) / total.clamp_min(1e-8)
    return torch.where(total > 0, share, torch.ones_like(share))


def box_iou(alpha: Tensor, boxes: Tensor, threshold: float = 0.1) -> Tensor:
    """IoU of the tight box of ``alpha > threshold`` with the requested pixel box, per layer: alpha
    ``(B, K, H, W)``, boxes ``(B, K, 4)`` → ``(B, K)`` (0 for a layer with nothing above the threshold)."""
    _float_tensor(alpha, "alpha", 4)
    if alpha.dim() != 4 or not isinstance(boxes, Tensor) or boxes.shape != (*alpha.shape[:2], 4):
        raise ValueError(f"alpha must be (B, K, H, W) and boxes (B, K, 4), got {tuple(alpha.shape)} and "
                         f"{tuple(getattr(boxes, 'shape', ()))}")
    on = alpha > threshold
    h, w = alpha.shape[-2:]
    rows, cols = on.any(-1), on.any(-2)
    y0 = rows.int().argmax(-1)
    y1 = h - rows.flip(-1).int().argmax(-1)
    x0 = cols.int().argmax(-1)
    x1 = w - cols.flip(-1).int().argmax(-1)
    bx = boxes.to(alpha.device)
    iw = (torch.minimum(x1, bx[..., 2]) - torch.maximum(x0, bx[..., 0])).clamp_min(0)
    ih = (torch.minimum(y1, bx[..., 3]) - torch.maximum(y0, bx[..., 1])).clamp_min(0)
    inter = (iw * ih).double()
    union = ((x1 - x0) * (y1 - y0) + (bx[..., 2] - bx[..., 0]) * (bx[..., 3] - bx[..., 1])).double() - inter
    iou = inter / union.clamp_min(1)
    return torch.where(rows.any(-1), iou, torch.zeros_like(iou)).float()


def layer_metrics(canvases: Tensor, stacked: dict, *, inside: float = 0.95) -> dict[str, Tensor]:
    """What the chapter measures on generated layer stacks ``(B, 2 + K, 4, H, W)`` for the layouts of
    ``stacked`` (a :func:`~layerwise.data.scene.stack_scenes` dict with K layers).

    ``consistency_psnr (B,)``: :func:`consistency_psnr`; ``in_box (M,)``: :func:`alpha_in_box` of the M
    real layers against their tight (unaligned) pixel boxes, and ``stays_inside (M,)`` = ``in_box >=
    inside``; ``box_iou (M,)``: :func:`box_iou` with the requested box."""
    if not isinstance(stacked, dict) or not {"valid", "boxes"} <= set(stacked):
        raise ValueError("stacked must be the stack_scenes(...) dict of the layouts (with valid and boxes)")
    merged, bg, layers = split_layers(canvases)
    if stacked["valid"].shape != layers.shape[:2]:
        raise ValueError(f"canvases hold {layers.shape[1]} foreground layers but stacked has {stacked['valid'].shape[1]}")
    valid = stacked["valid"].to(layers.device)
    boxes = stacked["boxes"].to(layers.device)
    share = alpha_in_box(layers[:, :, 3], boxes)[valid]
    return {"consistency_psnr": consistency_psnr(merged, bg, layers), "in_box": share,
            "stays_inside": share >= inside, "box_iou": box_iou(layers[:, :, 3], boxes)[valid]}


def attention_ablation(config: dict, *, seeds: Sequence[int], steps: int, scenes: dict, batch_size: int = 32,
                       lr: float = 2e-3, warmup: int = 100, ema: float | None = 0.995, n_eval: int = 64,
                       ddim_steps: int = 25, device: torch.device | str = "cpu",
                       progress: bool | None = None) -> dict[str, dict[str, list[float]]]:
    """Table 4 at our scale: for each seed, train ART (regional sequences) and the full-attention baseline
    (every layer at full canvas size, told its box through a box embedding) with the same settings
    (:func:`fit_art`), then sample both on the same ``n_eval`` held-out layouts.

    config: :class:`ARTConfig` keyword arguments (``box_embedding`` is set per model). Returns
    ``{"regional": {...}, "full": {...}}``, each a dict of per-seed lists: ``consistency_psnr``,
    ``stays_inside``, ``box_iou`` (means over the layouts' layers) and ``seconds`` (training time)."""
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    pad = scenes.get("n_layers", (2, 6))
    pad = pad if isinstance(pad, int) else pad[1]
    out = {m: {k: [] for k in ("consistency_psnr", "stays_inside", "box_iou", "seconds")} for m in ("regional", "full")}
    for seed in seeds:
        held = layered_scenes(n_eval, seed=10_000 + int(seed), **scenes)
        for mode in ("regional", "full"):
            full = mode == "full"
            torch.manual_seed(int(seed))
            model = AnonymousRegionDiT(ARTConfig(**{**config, "box_embedding": full}))
            t0 = time.perf_counter()
            fit_art(model, steps=steps, scenes=scenes, batch_size=batch_size, lr=lr, warmup=warmup, ema=ema,
                    seed=int(seed), full=full, generator=torch.Generator().manual_seed(int(seed)), device=device,
                    progress=progress, desc=f"{mode} attention, seed {seed}")
            seconds = time.perf_counter() - t0
            batch, stacked = layered_batch(held, model.config.patch, max_layers=pad, full=full)
            canv = generate(model, batch, steps=ddim_steps, generator=torch.Generator().manual_seed(int(seed)), full=full)
            m = layer_metrics(canv.cpu(), stacked)
            for key in ("consistency_psnr", "stays_inside", "box_iou"):
                out[mode][key].append(float(m[key].float().mean()))
            out[mode]["seconds"].append(seconds)
    return out


def position_ablation(config: dict, *, variants: Sequence[str] = ("2d", "2d_pe", "3d"), seeds: Sequence[int],
                      steps: int, scenes: dict, batch_size: int = 32, lr: float = 2e-3, warmup: int = 100,
                      ema: float | None = 0.995, n_eval: int = 64, ddim_steps: int = 25,
                      device: torch.device | str = "cpu",
                      progress: bool | None = None) -> dict[str, dict[str, list[float]]]:
    """Table 5 at our scale: for each seed and each of ``variants`` (keys of :data:`POSITION_VARIANTS`:
    which position axes and whether a learned layer embedding), train ART on region sequences with the
    same settings (:func:`fit_art`), then measure on the same ``n_eval`` held-out designs its held-out
    loss (:func:`heldout_loss`, the same timesteps and noise for every variant) and the consistency of
    its samples.

    config: :class:`ARTConfig` keyword arguments (``pos_axes`` and ``layer_embedding`` are set per
    variant). Returns ``{variant: {"heldout_loss", "consistency_psnr", "stays_inside", "seconds"}}``,
    each a list with one value per seed (runs of the same seed share their data draws: pair them)."""
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    variants = list(variants)
    if not variants:
        raise ValueError("variants must name at least one variant")
    for v in variants:
        if v not in POSITION_VARIANTS:
            raise ValueError(f"unknown variant {v!r}; expected one of {sorted(POSITION_VARIANTS)}")
    pad = scenes.get("n_layers", (2, 6))
    pad = pad if isinstance(pad, int) else pad[1]
    keys = ("heldout_loss", "consistency_psnr", "stays_inside", "seconds")
    out = {v: {k: [] for k in keys} for v in variants}
    for seed in seeds:
        held = layered_scenes(n_eval, seed=20_000 + int(seed), **scenes)
        for v in variants:
            axes, pe = POSITION_VARIANTS[v]
            torch.manual_seed(int(seed))
            model = AnonymousRegionDiT(ARTConfig(**{**config, "pos_axes": axes, "layer_embedding": pe}))
            t0 = time.perf_counter()
            fit_art(model, steps=steps, scenes=scenes, batch_size=batch_size, lr=lr, warmup=warmup, ema=ema,
                    seed=int(seed), generator=torch.Generator().manual_seed(int(seed)), device=device,
                    progress=progress, desc=f"positions {v}, seed {seed}")
            out[v]["seconds"].append(time.perf_counter() - t0)
            batch, stacked = layered_batch(held, model.config.patch, max_layers=pad)
            out[v]["heldout_loss"].append(
                heldout_loss(model, batch, generator=torch.Generator().manual_seed(int(seed))))
            canv = generate(model, batch, steps=ddim_steps, generator=torch.Generator().manual_seed(int(seed)))
            m = layer_metrics(canv.cpu(), stacked)
            out[v]["consistency_psnr"].append(float(m["consistency_psnr"].mean()))
            out[v]["stays_inside"].append(float(m["stays_inside"].float().mean()))
    return out


def layout_image(boxes: Tensor, size, *, colors: Tensor | None = None, fill: float = 0.25) -> Tensor:
    """An anonymous region layout drawn as an RGBA image ``(4, H, W)``: each pixel box ``(x0, y0, x1, y1)`` of
    ``boxes (K, 4)`` as a one-pixel outline and a faint fill (``fill`` = its alpha) in its own colour (a
    colour wheel unless ``colors (K, 3)`` is given). Empty boxes are skipped."""
    h, w = _size(size)
    b = _boxes(boxes, grid=(h, w))
    k = b.shape[0]
    if colors is None:
        hue = torch.arange(k, dtype=torch.float32) / max(k, 1)
        colors = torch.stack([0.5 + 0.5 * torch.cos(2 * math.pi * (hue + o)) for o in (0.0, 1 / 3, 2 / 3)], 1)
    img = torch.zeros(4, h, w)
    for (x0, y0, x1, y1), c in zip(b.tolist(), colors):
        if x1 <= x0 or y1 <= y0:
            continue
        region = torch.zeros(h, w, dtype=torch.bool)
        region[y0:y1, x0:x1] = True
        edge = region.clone()
        edge[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = False
        a = torch.where(edge, 1.0, torch.where(region, fill, 0.0))
        img[:3] = torch.where(a > img[3], c.view(3, 1, 1) * torch.ones(3, h, w), img[:3])
        img[3] = torch.maximum(img[3], a)
    return img


# ----------------------------------------------------------------------------- measuring the cost

@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's C-level stderr (file descriptor 2) for a moment: some builds of PyTorch's
    profiler print a line there at every start and stop, which a notebook would show."""
    fd = 2                          # the C library's stderr (in Jupyter, sys.stderr.fileno() is another fd)
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def peak_bytes(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Peak of the memory ``fn()`` allocates above what was live when it started, in bytes.

    On the CPU (``device`` None or ``"cpu"``), measured with PyTorch's profiler
    (``profile_memory=True``): every allocation and free of the CPU allocator during the call,
    including the kernels' own scratch buffers, summed in time order; the peak of that running sum
    is returned. (The low-level ``torch.autograd.profiler`` entry point is used:
    ``torch.profiler.profile`` imports the compiler stack on first use, which costs seconds.) On a
    CUDA device, ``torch.cuda.max_memory_allocated`` after resetting the peak."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        raise ValueError(f"peak_bytes measures CPU or CUDA memory, got device {device}")
    with _quiet_stderr(), torch.autograd.profiler.profile(use_kineto=True, profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return int(peak)


#: The tiny DiT of the cost experiment: latents of ``ae32``'s size (4 channels, 8×8; patch 1, so 64 tokens a
#: layer and every token is 4×4 image pixels), 3-axis positions (head dim 24) and a layer embedding for up to
#: 52 layers (the release's 50 + merged + background). Random weights: cost does not depend on them.
COST_CONFIG = dict(channels=4, canvas=8, patch=1, dim=96, depth=4, heads=4, pos_axes=3, layer_embedding=True,
                   max_layers=52)


def cost_layout(k: int, *, generator: torch.Generator | int, canvas: int = 32, cell: int = 4,
                radius=(0.06, 0.15)) -> Tensor:
    """A layout of ``k`` foreground layers for the cost experiment: token-grid boxes ``(2 + k, 4)``.

    Rows 0 and 1 are the merged image and the background (the whole ``canvas // cell`` grid); then the
    aligned boxes (:func:`token_boxes`) of ``k`` random sprites (:func:`~layerwise.data.layouts.sprite_layout`,
    radius a fraction in ``radius`` of the ``canvas``-pixel side) on the grid of ``cell``-pixel tokens."""
    k = _int(k, "k")
    fg = token_boxes(sprite_layout(k, canvas, generator=generator, radius=radius), cell, canvas)
    side = canvas // cell
    return torch.cat([torch.tensor([[0, 0, side, side]] * 2), fg])


def cost_pass(model: AnonymousRegionDiT, boxes: Tensor, *, batch: int = 4, mode: str = "regional",
              generator: torch.Generator | int = 0) -> Callable[[], Tensor]:
    """One denoiser pass over the layer stack of layout ``boxes`` ``(L, 4)`` (token-grid boxes; row 0 the
    merged image, row 1 the background): a zero-argument function to time.

    ``mode="regional"``: ART, the full-canvas input grids cropped to the boxes (:func:`crop_tokens`),
    one transformer pass over that sequence, the output written back (:func:`fill_tokens`).
    ``mode="full"``: the baseline, every layer's whole canvas in one sequence. Random inputs.
    """
    if mode not in ("regional", "full"):
        raise ValueError(f"unknown mode {mode!r}; expected 'regional' or 'full'")
    cfg = model.config
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    gh = gw = cfg.grid
    boxes = _boxes(boxes, grid=(gh, gw))
    n_layers = boxes.shape[0]
    if n_layers > cfg.max_layers and model.layer_embed is not None:
        raise ValueError(f"boxes has {n_layers} layers but the model embeds at most max_layers={cfg.max_layers}")
    device = next(model.parameters()).device
    grids = torch.randn(batch, n_layers, gh, gw, cfg.token_dim, generator=g).to(device)
    t = torch.full((batch,), 500, device=device)
    if mode == "regional":
        ids = layer_position_ids(boxes).to(device)
        like = torch.zeros_like(grids)

        @torch.no_grad()
        def run():
            return fill_tokens(model(crop_tokens(grids, boxes), t, ids), boxes, like)
    else:
        ids = full_position_ids(n_layers, (gh, gw)).to(device)
        flat = grids.reshape(batch, n_layers * gh * gw, -1)

        @torch.no_grad()
        def run():
            return model(flat, t, ids).reshape(grids.shape)
    return run


def measure_cost(model: AnonymousRegionDiT, layouts: Sequence[Tensor], *, batch: int = 4, repeats: int = 3,
                 warmup: int = 1, memory: bool = True, progress: Callable | None = None) -> list[dict]:
    """Time (median of ``repeats`` after ``warmup`` untimed rounds, the two modes interleaved) and peak
    memory (:func:`peak_bytes`) of one regional and one full denoiser pass per layout.

    Returns one dict per layout: ``layers`` (foreground layers K), ``n_regional``, ``n_full`` (tokens
    per item), ``t_regional``, ``t_full`` (seconds), ``mem_regional``, ``mem_full`` (bytes, or None
    without ``memory``), ``flops_regional``, ``flops_full`` (:func:`attention_cost` × batch) and the
    naive attention-matrix bytes of each (:func:`attention_matrix_bytes`).
    """
    for name, v, low in (("batch", batch, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        _int(v, name, low)
    cfg = model.config
    device = next(model.parameters()).device
    rows = []
    items = list(layouts)
    for boxes in (progress(items) if progress else items):
        fns = {m: cost_pass(model, boxes, batch=batch, mode=m) for m in ("regional", "full")}
        samples = {m: [] for m in fns}
        for r in range(warmup + repeats):
            for m, fn in fns.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if r >= warmup:
                    samples[m].append(time.perf_counter() - t0)
        n_reg = int(region_tokens(boxes).sum())
        n_full = boxes.shape[0] * cfg.grid ** 2
        row = dict(layers=boxes.shape[0] - 2, n_regional=n_reg, n_full=n_full,
                   t_regional=statistics.median(samples["regional"]), t_full=statistics.median(samples["full"]),
                   mem_regional=peak_bytes(fns["regional"], device) if memory else None,
                   mem_full=peak_bytes(fns["full"], device) if memory else None,
                   flops_regional=batch * attention_cost(n_reg, cfg.dim, cfg.depth),
                   flops_full=batch * attention_cost(n_full, cfg.dim, cfg.depth),
                   naive_attn_regional=attention_matrix_bytes(n_reg, cfg.heads, batch),
                   naive_attn_full=attention_matrix_bytes(n_full, cfg.heads, batch))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the zoo's variants

#: Table 5's position ablation as model settings: name → (pos_axes, layer_embedding).
POSITION_VARIANTS = {"3d": (3, True), "2d": (2, False), "2d_pe": (2, True)}


def art_zoo_name(variant: str) -> str:
    """The zoo name of a :data:`POSITION_VARIANTS` model: ``art_sprites`` for ``"3d"`` (the main model,
    3-axis RoPE and the layer embedding, as released), ``art_sprites_2d``, ``art_sprites_2d_pe`` (the
    zoo trains all three with one recipe; :func:`position_ablation` trains them again over seeds)."""
    if variant not in POSITION_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(POSITION_VARIANTS)}")
    return "art_sprites" if variant == "3d" else f"art_sprites_{variant}"
