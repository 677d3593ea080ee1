"""Generative Image Layer Decomposition with Visual Effects (Yang et al., CVPR 2025, arXiv:2411.17864,
"LayerDecomp").

Given an image and a binary object mask, LayerDecomp outputs a clean **background** and an RGBA
**foreground** layer that keeps the object's shadows and reflections, so that compositing the two
gives the image back. The paper's pieces, as this module implements them at our scale:

1. **One in-context token sequence** (paper §3.1, Fig. 2). A DiT reads four inputs side by side:
   the noisy background ``x_t^bg``, the noisy RGBA foreground ``x_t^fg``, and two clean
   conditions, the composite ``I`` and the object mask ``M`` (:func:`segment_tokens`). Each
   segment's tokens get a learned **type embedding** (:class:`LayerDecompDiT`); attention runs over
   the whole sequence; the network predicts the two noisy segments (their clean values by default,
   ``LDConfig.prediction``), and the loss is taken **only at the noisy positions** (the outputs at
   the condition tokens are dropped).
2. **Two kinds of training data** (§3.3). Simulated triplets (image, background, foreground) are
   fully supervised. Camera-captured pairs have no foreground: their foreground noise is **masked
   out of the diffusion loss**, while their background stays supervised
   (:func:`masked_diffusion_loss`, paper Eq. 1).
3. **The consistency loss** (§3.2, Eqs. 2–3). Both branches give their clean estimate x̂₀ (the
   paper predicts noise, so ``x̂₀ = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t``, :func:`x0_from_eps`; our default
   x0-prediction outputs x̂₀ directly, :meth:`LayerDecompDiT.predict`); alpha-blending them
   (:func:`recomposite`) must give the input image back, in L1 (:func:`consistency_loss`). This is
   the only signal that teaches the foreground the effects seen only in camera data.
4. Sampling: DDIM over the two noisy segments together, the conditions fixed (:func:`decompose`).

What is ours rather than the paper's (the chapter's "paper says / we do" table): pixel space
32×32 with patch 4 instead of the latent space of an RGB VAE and an RGBA VAE; a small TinyDiT
trained from scratch instead of a 5 B text-to-image DiT; no text; the
consistency loss weight and its weighting over timesteps (the paper gives neither; we weight each
item by ``ᾱ_t``); the foreground that a camera pair's noisy foreground input starts from (we noise
the object cut out of the image by the mask, the part of the foreground that is known,
:func:`known_foreground`); each layer diffused as its difference from the image (background) or
from that cut-out (foreground) (:func:`references`); the network predicting the clean layers
(``prediction="x0"``, as chapter 14's decomposer) rather than the noise: with the residual
parametrisation most of x₀ is exactly zero, so ε-prediction's trivial answer ``ε̂ = x_t / √(1−ᾱ_t)``
already scores well and, at small t, a working ε-predictor must amplify x_t up to ~100×; a small
ε-model trained on a CPU did not get past that trivial answer (its samples were noise).

Conventions: images ``(B, 3, H, W)`` and straight-alpha RGBA layers ``(B, 4, H, W)`` in [0, 1];
masks ``(B, 1, H, W)`` in {0, 1}. The diffusion runs in model space (:func:`to_model_space`):
``2 (layer − ref)``, relative to :func:`references` (the image and the object cut out by the mask
with ``LDConfig.residual``, the zoo's setting *(ours)*; mid-grey otherwise, the usual ``2x − 1``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from layerwise.core.checks import float_tensor
from layerwise.diffusion.dit import DiTConfig, TinyDiT, grid_position_ids, patchify, unpatchify
from layerwise.diffusion.schedule import make_scheduler, q_sample

__all__ = ["SEGMENTS", "VARIANTS", "PREDICTIONS", "ld_zoo_name", "segment_tokens", "segment_types", "LDConfig", "references",
           "to_model_space", "from_model_space", "LayerDecompDiT",
           "x0_from_eps", "recomposite", "consistency_loss", "masked_diffusion_loss", "known_foreground",
           "training_loss", "train_layer_decomp", "decompose", "psnr", "alpha_error", "effect_captured",
           "evaluate_decomposition", "heldout_loss"]

#: The four segments of the token sequence, in order; the first two are noisy, the last two clean.
SEGMENTS: tuple[str, ...] = ("background", "foreground", "composite", "mask")
_CHANNELS = 4          # every segment is zero-padded to 4 channels before patchifying
_REDUCTIONS = ("mean", "sum", "none")

#: What the network outputs for the two noisy segments: their clean values ("x0", the default and
#: the zoo's), the velocity ``v = √ᾱ ε − √(1−ᾱ) x₀`` ("v") or the noise ("eps", the paper's DDPM-style
#: objective).
PREDICTIONS: tuple[str, ...] = ("x0", "v", "eps")

#: The chapter's two models: the paper's "V2" (foreground with effects, no consistency loss) and
#: "+L_consist"; the value is the consistency-loss weight each was trained with.
VARIANTS: dict[str, float] = {"v2": 0.0, "consist": 1.0}


def ld_zoo_name(variant: str) -> str:
    """The zoo name of a variant of :data:`VARIANTS`: ``layer_decomp_v2`` or ``layer_decomp_consist``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {tuple(VARIANTS)}")
    return f"layer_decomp_{variant}"


# ----------------------------------------------------------------------------- argument checks

def _image(x: Any, name: str, channels: int) -> Tensor:
    float_tensor(x, name, 4, f"(B, {channels}, H, W)")
    if x.shape[1] != channels or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W) with B >= 1, got {tuple(x.shape)}")
    return x


def _same_size(named: dict[str, Tensor]) -> None:
    shapes = {k: (v.shape[0], *v.shape[-2:]) for k, v in named.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("batch size and (H, W) must agree: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in named.items()))


def _mask(mask: Any, name: str = "mask") -> Tensor:
    _image(mask, name, 1)
    if ((mask < 0) | (mask > 1)).any():
        raise ValueError(f"{name} must hold values in [0, 1] (a binary object mask), got range "
                         f"[{float(mask.min()):.3g}, {float(mask.max()):.3g}]")
    return mask


def _abar(abar_t: Any, like: Tensor) -> Tensor:
    """ᾱ_t as a tensor broadcastable over ``like: (B, ...)``."""
    if isinstance(abar_t, bool) or not isinstance(abar_t, (int, float, Tensor)):
        raise TypeError(f"abar_t must be a number or a tensor, got {type(abar_t).__name__}")
    a = torch.as_tensor(abar_t, device=like.device)
    if not a.is_floating_point():
        a = a.to(like.dtype)
    if a.dim() > 1 or (a.dim() == 1 and a.shape[0] != like.shape[0]):
        raise ValueError(f"abar_t must be a number or have shape (B,) = ({like.shape[0]},), got {tuple(a.shape)}")
    if not ((a > 0) & (a <= 1)).all():
        raise ValueError("abar_t must be in (0, 1]")
    return a.reshape(-1, *([1] * (like.dim() - 1))) if a.dim() == 1 else a


# ----------------------------------------------------------------------------- the token sequence

def _pad(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros(x.shape[0], _CHANNELS - x.shape[1], *x.shape[2:])], 1) if x.shape[1] < _CHANNELS else x


def segment_tokens(x_bg: Tensor, x_fg: Tensor, composite: Tensor, mask: Tensor, patch: int) -> Tensor:
    """The in-context sequence ``[background | foreground | composite | mask]``: ``(B, 4N, 4·p²)``.

    Each input (``x_bg: (B, 3, H, W)``, ``x_fg: (B, 4, H, W)``, ``composite: (B, 3, H, W)``,
    ``mask: (B, 1, H, W)``, all in the model's value range) is zero-padded to 4 channels and cut
    into ``N = (H/p)·(W/p)`` patches in row-major order; the four token blocks are concatenated
    in the order of :data:`SEGMENTS`.
    """
    for x, name, c in ((x_bg, "x_bg", 3), (x_fg, "x_fg", 4), (composite, "composite", 3), (mask, "mask", 1)):
        _image(x, name, c)
    _same_size({"x_bg": x_bg, "x_fg": x_fg, "composite": composite, "mask": mask})
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch must be a positive int, got {patch!r}")
    h, w = x_bg.shape[-2:]
    if h % patch or w % patch:
        raise ValueError(f"patch={patch} must divide the image size {h}×{w}")
    return torch.cat([patchify(_pad(x), patch) for x in (x_bg, x_fg, composite, mask)], 1)


def segment_types(tokens_per_segment: int, device: torch.device | str | None = None) -> Tensor:
    """The segment-type id of every token of :func:`segment_tokens`: ``(4N,)`` long, ``i`` for segment ``i``."""
    if isinstance(tokens_per_segment, bool) or not isinstance(tokens_per_segment, int) or tokens_per_segment < 1:
        raise ValueError(f"tokens_per_segment must be a positive int, got {tokens_per_segment!r}")
    return torch.arange(len(SEGMENTS), device=device).repeat_interleave(tokens_per_segment)


@dataclass
class LDConfig:
    """Sizes of a :class:`LayerDecompDiT`."""

    image_size: int = 32
    patch: int = 4
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    residual: bool = True
    prediction: str = "x0"

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; expected one of {PREDICTIONS}")

    def to_dict(self) -> dict:
        return asdict(self)


def references(image: Tensor, mask: Tensor, residual: bool) -> tuple[Tensor, Tensor]:
    """What each layer is diffused relative to: ``(ref_bg (B, 3, H, W), ref_fg (B, 4, H, W))``.

    ``residual`` *(ours)*: the image itself for the background and the object cut out by the mask
    (:func:`known_foreground`) for the foreground, so the diffused quantities are what the image
    does not already say; otherwise mid-grey 0.5 everywhere, the usual ``2x − 1`` of pixel diffusion.
    """
    if residual:
        return image, known_foreground(image, mask)
    half = image.new_full((), 0.5)
    return half.expand_as(image), half.expand(image.shape[0], 4, *image.shape[-2:])


def to_model_space(layer: Tensor, ref: Tensor) -> Tensor:
    """A layer in [0, 1] → the diffused variable ``x₀ = 2 (layer − ref)``."""
    return 2 * (layer - ref)


def from_model_space(x0: Tensor, ref: Tensor) -> Tensor:
    """The inverse of :func:`to_model_space`: ``layer = ref + x₀ / 2`` (not clipped)."""
    return ref + x0 / 2


class LayerDecompDiT(nn.Module):
    """A TinyDiT over the four-segment sequence, with a learned type embedding per segment.

    Each segment's patches are embedded by the TinyDiT's shared patch embedding plus a
    segment-specific linear map (``segment_embed``, zero at the start: the paper embeds each
    input type separately), and a learned type vector per segment (``type_embed``) is added;
    both enter through ``TinyDiT.forward_tokens(..., embed_add=...)``.

    ``forward(x_bg, x_fg, t, composite, mask) → (out_bg (B, 3, H, W), out_fg (B, 4, H, W))``, the
    network's raw outputs: the clean layers in model space (``config.prediction="x0"``), the
    velocity (``"v"``) or the noise (``"eps"``); :meth:`predict` turns any of them into x̂₀ and ε̂.
    ``x_bg, x_fg`` are the noisy layers in model space (:func:`to_model_space`, relative to
    :func:`references` of ``config.residual``); ``composite (B, 3, H, W)`` and ``mask (B, 1, H, W)``
    are the clean conditions in [0, 1] (mapped to [-1, 1] here).
    Tokens of all four segments at the same pixel share one 2-axis rotary position; the type
    embedding tells the segments apart. The predictions at the condition tokens are discarded.
    """

    def __init__(self, config: LDConfig | None = None, **overrides):
        super().__init__()
        cfg = config or LDConfig(**overrides)
        self.config = cfg
        self.dit = TinyDiT(DiTConfig(in_channels=_CHANNELS, out_channels=_CHANNELS, image_size=cfg.image_size,
                                     patch=cfg.patch, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                                     mlp_ratio=cfg.mlp_ratio, pos_axes=2))
        self.type_embed = nn.Embedding(len(SEGMENTS), cfg.dim)          # N(0, 1), on a par with the patches
        # each segment's own patch embedding, on top of the shared one (zero at the start)
        self.segment_embed = nn.Parameter(torch.zeros(len(SEGMENTS), _CHANNELS * cfg.patch ** 2, cfg.dim))

    @property
    def tokens_per_segment(self) -> int:
        return (self.config.image_size // self.config.patch) ** 2

    def forward(self, x_bg: Tensor, x_fg: Tensor, t: Tensor, composite: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        p, s = self.config.patch, self.config.image_size
        if x_bg.dim() != 4 or tuple(x_bg.shape[-2:]) != (s, s):
            raise ValueError(f"x_bg must be (B, 3, {s}, {s}) for this model, got {tuple(x_bg.shape)}")
        tokens = segment_tokens(x_bg, x_fg, composite * 2 - 1, mask * 2 - 1, p)
        n = self.tokens_per_segment
        pos = grid_position_ids(s // p, s // p, device=tokens.device).repeat(len(SEGMENTS), 1)
        b = tokens.shape[0]
        per_type = torch.einsum("bsnc,scd->bsnd", tokens.view(b, len(SEGMENTS), n, -1), self.segment_embed)
        extra = per_type.reshape(b, len(SEGMENTS) * n, -1) + self.type_embed(segment_types(n, device=tokens.device))
        out = self.dit.forward_tokens(tokens, t, pos_ids=pos, embed_add=extra)
        out_bg = unpatchify(out[:, :n], p, _CHANNELS, s, s)[:, :3]
        out_fg = unpatchify(out[:, n:2 * n], p, _CHANNELS, s, s)
        return out_bg, out_fg

    def predict(self, x_bg: Tensor, x_fg: Tensor, t: Tensor, composite: Tensor, mask: Tensor,
                alphas_cumprod: Tensor) -> dict[str, Tensor]:
        """The network's outputs and what they imply, ``{"out": …, "x0": …, "eps": …}``, each a
        tuple ``(background (B, 3, H, W), foreground (B, 4, H, W))`` in model space, from
        ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`` with ``ᾱ_t = alphas_cumprod[t]``."""
        outs = self(x_bg, x_fg, t, composite, mask)
        a = alphas_cumprod.to(x_bg.device, x_bg.dtype)[t.to(x_bg.device).long()].view(-1, 1, 1, 1)
        x0s, epss = [], []
        for x, o in zip((x_bg, x_fg), outs):
            if self.config.prediction == "x0":
                x0, eps = o, (x - a.sqrt() * o) / (1 - a).sqrt()
            elif self.config.prediction == "v":
                x0, eps = a.sqrt() * x - (1 - a).sqrt() * o, (1 - a).sqrt() * x + a.sqrt() * o
            else:
                x0, eps = x0_from_eps(x, o, a.flatten()), o
            x0s.append(x0)
            epss.append(eps)
        return {"out": outs, "x0": tuple(x0s), "eps": tuple(epss)}


# ----------------------------------------------------------------------------- the losses (exercise)

def x0_from_eps(x_t: Tensor, eps: Tensor, abar_t: Tensor | float) -> Tensor:
    """The clean estimate a noise prediction implies (paper Eq. 2): ``x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t``.

    x_t, eps: ``(B, ...)`` of the same shape; abar_t: a number or ``(B,)`` (one ᾱ per item),
    each in (0, 1]. Returns ``(B, ...)``.
    """
    for x, name in ((x_t, "x_t"), (eps, "eps")):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (B, ...), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x_t.shape != eps.shape or x_t.dim() == 0:
        raise ValueError(f"x_t {tuple(x_t.shape)} and eps {tuple(eps.shape)} must have the same shape (B, ...)")
    a = _abar(abar_t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def recomposite(bg: Tensor, fg_rgba: Tensor) -> Tensor:
    """Alpha-blend a straight-alpha foreground over a background: ``α·F + (1 − α)·B`` (paper's ``A(·,·)``).

    bg: ``(B, 3, H, W)``; fg_rgba: ``(B, 4, H, W)``. The alpha is clipped to [0, 1] (a coverage);
    the colours are not (predicted layers may stray a little outside [0, 1], and clipping them
    would stop their gradient). Returns ``(B, 3, H, W)``.
    """
    _image(bg, "bg", 3)
    _image(fg_rgba, "fg_rgba", 4)
    _same_size({"bg": bg, "fg_rgba": fg_rgba})
    a = fg_rgba[:, 3:4].clamp(0.0, 1.0)
    return a * fg_rgba[:, :3] + (1 - a) * bg


def consistency_loss(bg_hat: Tensor, fg_hat: Tensor, image: Tensor, reduction: str = "mean") -> Tensor:
    """The consistency loss (paper Eq. 3): L1 between the input image and the recomposite of the
    predicted layers, ``|I − A(B̂, F̂)|``.

    bg_hat: ``(B, 3, H, W)``, fg_hat: ``(B, 4, H, W)`` (straight alpha), image: ``(B, 3, H, W)``,
    all in [0, 1]. reduction: ``"mean"`` (over every element), ``"sum"`` (the paper's Σ over
    pixels, and channels), or ``"none"`` (per item: the mean over its elements, ``(B,)``).
    """
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")
    _image(image, "image", 3)
    comp = recomposite(bg_hat, fg_hat)
    _same_size({"bg_hat": bg_hat, "image": image})
    diff = (image - comp).abs()
    if reduction == "mean":
        return diff.mean()
    if reduction == "sum":
        return diff.sum()
    return diff.flatten(1).mean(1)


def masked_diffusion_loss(eps_hat_bg: Tensor, eps_bg: Tensor, eps_hat_fg: Tensor, eps_fg: Tensor,
                          has_fg: Tensor) -> Tensor:
    """The diffusion loss at the noisy positions (paper Eq. 1), with the foreground masked out of
    it for items without a known foreground.

    The paper (and the argument names) predict the noise ε; the same loss applies unchanged to
    any prediction and its target (our models pass predicted and true x₀, ``LDConfig.prediction``).

    The mean squared error over every *supervised* element: all background elements
    ``(B, 3, H, W)``, and the foreground elements ``(B, 4, H, W)`` of the items where ``has_fg``
    ``(B,)`` (bool) is True. Items with ``has_fg`` False (camera pairs) add nothing from their
    foreground, whatever it holds, not even a NaN. Returns a 0-d tensor.
    """
    _image(eps_hat_bg, "eps_hat_bg", 3)
    _image(eps_bg, "eps_bg", 3)
    _image(eps_hat_fg, "eps_hat_fg", 4)
    _image(eps_fg, "eps_fg", 4)
    if eps_hat_bg.shape != eps_bg.shape or eps_hat_fg.shape != eps_fg.shape:
        raise ValueError("each prediction must have its target's shape: eps_hat_bg "
                         f"{tuple(eps_hat_bg.shape)} vs eps_bg {tuple(eps_bg.shape)}, eps_hat_fg "
                         f"{tuple(eps_hat_fg.shape)} vs eps_fg {tuple(eps_fg.shape)}")
    _same_size({"eps_bg": eps_bg, "eps_fg": eps_fg})
    if not isinstance(has_fg, Tensor) or has_fg.dtype != torch.bool:
        raise TypeError(f"has_fg must be a bool tensor (B,), got {getattr(has_fg, 'dtype', type(has_fg).__name__)}")
    if has_fg.shape != (eps_bg.shape[0],):
        raise ValueError(f"has_fg must have shape (B,) = ({eps_bg.shape[0]},), got {tuple(has_fg.shape)}")
    sq_bg = (eps_hat_bg - eps_bg).pow(2).sum()
    keep = has_fg.view(-1, 1, 1, 1)
    sq_fg = torch.where(keep, (eps_hat_fg - eps_fg).pow(2), torch.zeros((), dtype=eps_fg.dtype, device=eps_fg.device)).sum()
    count = eps_bg.numel() + int(has_fg.sum()) * eps_fg[0].numel()
    return (sq_bg + sq_fg) / count


def known_foreground(image: Tensor, mask: Tensor) -> Tensor:
    """The part of the foreground a camera pair does know: the object cut out of ``image`` by
    ``mask`` (colour = image, alpha = mask), ``(B, 4, H, W)`` *(ours: what a camera pair's noisy
    foreground input is made from)*."""
    _image(image, "image", 3)
    _mask(mask)
    _same_size({"image": image, "mask": mask})
    return torch.cat([image * mask, mask.to(image.dtype)], 1)


# ----------------------------------------------------------------------------- training

def _check_batch(batch: Any) -> dict[str, Tensor]:
    need = {"image", "background", "foreground", "mask", "has_fg"}
    if not isinstance(batch, dict) or not need <= set(batch):
        raise ValueError(f"batch must be a dict with keys {sorted(need)} (from data.decomposition_set)")
    _image(batch["image"], "batch['image']", 3)
    _image(batch["background"], "batch['background']", 3)
    _image(batch["foreground"], "batch['foreground']", 4)
    _mask(batch["mask"], "batch['mask']")
    return batch


def training_loss(model: LayerDecompDiT, batch: dict[str, Tensor], alphas_cumprod: Tensor, *,
                  generator: torch.Generator, consistency_weight: float = 0.0,
                  weighting: str = "abar") -> tuple[Tensor, dict[str, Tensor]]:
    """One batch of LayerDecomp's objective: ``L_dm + λ · L_consist``.

    ``batch`` holds ``image, background, foreground, mask, has_fg`` (as from
    :func:`layerwise.data.decomposition.decomposition_set`). The foreground of items with
    ``has_fg`` False is never read: it is replaced by :func:`known_foreground` before anything
    else, and masked out of the diffusion loss. Both layers are diffused in model space relative
    to :func:`references` (``model.config.residual``). One timestep per item, ``t ~ U{0, …, T−1}``, for
    both noisy segments. The diffusion loss (:func:`masked_diffusion_loss`) is on what the model
    predicts (``model.config.prediction``): x₀, the velocity ``v = √ᾱ ε − √(1−ᾱ) x₀``, or ε. The
    consistency term goes through x̂₀ of both branches (the output itself with x0-prediction,
    converted otherwise, :meth:`LayerDecompDiT.predict`); it (only computed when ``consistency_weight`` λ > 0)
    is applied to every item; ``weighting="abar"`` multiplies each item's L1 by its ``ᾱ_t``
    *(ours: the paper takes any t and gives no weight; x̂₀ at large t is mostly noise)*,
    ``"uniform"`` does not. Returns ``(loss, {"dm": …, "consist": …})``.
    """
    _check_batch(batch)
    if isinstance(consistency_weight, bool) or not isinstance(consistency_weight, (int, float)) \
            or not consistency_weight >= 0 or not math.isfinite(consistency_weight):
        raise ValueError(f"consistency_weight must be a finite number >= 0, got {consistency_weight!r}")
    if weighting not in ("abar", "uniform"):
        raise ValueError(f"unknown weighting {weighting!r}; expected 'abar' or 'uniform'")
    device = next(model.parameters()).device
    image, mask = batch["image"].to(device), batch["mask"].to(device)
    has_fg = batch["has_fg"].to(device)
    fg = torch.where(has_fg.view(-1, 1, 1, 1), batch["foreground"].to(device), known_foreground(image, mask))
    ref_bg, ref_fg = references(image, mask, model.config.residual)
    bg0, fg0 = to_model_space(batch["background"].to(device), ref_bg), to_model_space(fg, ref_fg)
    b = image.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator).to(device)
    eps_bg = torch.randn(bg0.shape, generator=generator).to(device)
    eps_fg = torch.randn(fg0.shape, generator=generator).to(device)
    acp = alphas_cumprod.to(device)
    x_bg, x_fg = q_sample(bg0, t, eps_bg, acp), q_sample(fg0, t, eps_fg, acp)
    pred = model.predict(x_bg, x_fg, t, image, mask, acp)
    kind = model.config.prediction
    if kind == "x0":
        target_bg, target_fg = bg0, fg0
    elif kind == "v":
        a = acp[t].to(image.dtype).view(-1, 1, 1, 1)
        target_bg, target_fg = a.sqrt() * eps_bg - (1 - a).sqrt() * bg0, a.sqrt() * eps_fg - (1 - a).sqrt() * fg0
    else:
        target_bg, target_fg = eps_bg, eps_fg
    dm = masked_diffusion_loss(pred["out"][0], target_bg, pred["out"][1], target_fg, has_fg)
    logs = {"dm": dm.detach()}
    loss = dm
    if consistency_weight > 0:
        abar = acp[t].to(image.dtype)
        bg_hat = from_model_space(pred["x0"][0], ref_bg)
        fg_hat = from_model_space(pred["x0"][1], ref_fg)
        per = consistency_loss(bg_hat, fg_hat, image, reduction="none")
        consist = (per * abar).mean() if weighting == "abar" else per.mean()
        loss = loss + consistency_weight * consist
        logs["consist"] = consist.detach()
    return loss, logs


def train_layer_decomp(data: dict[str, Tensor], *, steps: int, consistency_weight: float,
                       generator: torch.Generator, model: LayerDecompDiT | None = None,
                       config: LDConfig | None = None, batch_size: int = 32, lr: float = 1e-3,
                       warmup: int = 100, ema: float | None = 0.999, weighting: str = "abar",
                       device: torch.device | str = "cpu", progress: bool | None = None):
    """Train a :class:`LayerDecompDiT` on ``data`` (a dict from ``decomposition_set``, both
    splits mixed) with :func:`training_loss` for ``steps`` steps of :func:`layerwise.core.train.fit_steps`
    (AdamW, warm-up then cosine decay, clipping at 1, EMA weights). Batches are drawn with
    ``generator``; two runs that differ only in ``consistency_weight`` see the same batches,
    timesteps and noise. Returns ``(model, history)``.
    """
    from layerwise.core.train import fit_steps

    _check_batch(data)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = torch.device(device)
    model = (model or LayerDecompDiT(config)).to(device)
    acp = make_scheduler("ddpm").alphas_cumprod.to(device)
    n = data["image"].shape[0]
    keys = ("image", "background", "foreground", "mask", "has_fg")

    def loss_fn(step: int):
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        return training_loss(model, {k: data[k][idx] for k in keys}, acp, generator=generator,
                             consistency_weight=consistency_weight, weighting=weighting)

    hist = fit_steps(model, loss_fn, steps, lr=lr, warmup=warmup, cosine=True, clip=1.0, ema=ema,
                     progress=progress, desc="LayerDecomp training")
    return model, hist


@torch.no_grad()
def heldout_loss(model: LayerDecompDiT, data: dict[str, Tensor], *, generator: torch.Generator,
                 batch_size: int = 128) -> float:
    """The masked diffusion loss (no consistency term; on the model's own prediction target,
    ``config.prediction``) of ``model`` on ``data``, timesteps and noise drawn with ``generator``:
    the zoo's check that a model still does its job."""
    _check_batch(data)
    model.eval()
    acp = make_scheduler("ddpm").alphas_cumprod
    total, count = 0.0, 0
    for i in range(0, data["image"].shape[0], batch_size):
        part = {k: data[k][i:i + batch_size] for k in ("image", "background", "foreground", "mask", "has_fg")}
        loss, _ = training_loss(model, part, acp, generator=generator)
        total += float(loss) * part["image"].shape[0]
        count += part["image"].shape[0]
    return total / count


# ----------------------------------------------------------------------------- decomposition (sampling)

@torch.no_grad()
def decompose(model: LayerDecompDiT, image: Tensor, mask: Tensor, *, steps: int = 25,
              generator: torch.Generator | None = None, clip: bool = True, batch_size: int = 128) -> dict[str, Tensor]:
    """Decompose ``image (B, 3, H, W)`` with the object ``mask (B, 1, H, W)`` into a background and
    an RGBA foreground: DDIM (η = 0, ``steps`` steps, diffusers' timesteps) over both noisy
    segments at once, from noise drawn with ``generator``, the composite and mask fixed.

    With ``clip`` each step's x̂₀ is clipped so that the layers it stands for stay in [0, 1] (as
    diffusers' ``clip_sample`` does for plain pixels; the update then uses the clipped x̂₀ and
    the predicted noise): a small model's x̂₀ at large t is far off, and unclipped it can carry
    the chain away. With x0- or v-prediction the update's noise is the one the (clipped) x̂₀
    implies; with ε-prediction it is the predicted noise. Returns ``{"background": (B, 3, H, W), "foreground": (B, 4, H, W)}`` in
    [0, 1] (clipped). Every mask must mark at least one pixel.
    """
    _image(image, "image", 3)
    _mask(mask)
    _same_size({"image": image, "mask": mask})
    if not bool((mask.flatten(1) > 0.5).any(1).all()):
        empty = (~(mask.flatten(1) > 0.5).any(1)).nonzero().flatten().tolist()
        raise ValueError(f"mask must mark the object in every image; empty for items {empty[:10]}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    model.eval()
    device = next(model.parameters()).device
    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    acp = scheduler.alphas_cumprod.to(device)
    step = scheduler.config.num_train_timesteps // steps
    b, _, h, w = image.shape
    noise = torch.randn(b, 7, h, w, generator=generator)
    out_bg, out_fg = [], []
    for i in range(0, b, batch_size):
        img, m = image[i:i + batch_size].to(device), mask[i:i + batch_size].to(device)
        ref = torch.cat(references(img, m, model.config.residual), 1)            # (b, 7, H, W)
        lo, hi = to_model_space(torch.zeros_like(ref), ref), to_model_space(torch.ones_like(ref), ref)
        x = noise[i:i + batch_size].to(device)
        for t in scheduler.timesteps.tolist():
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            pred = model.predict(x[:, :3], x[:, 3:], tt, img, m, acp)
            eps, x0 = torch.cat(pred["eps"], 1), torch.cat(pred["x0"], 1)
            a_t = acp[t]
            a_prev = acp[t - step] if t - step >= 0 else acp.new_ones(())
            if clip:
                x0 = torch.maximum(torch.minimum(x0, hi), lo)
            if model.config.prediction != "eps":
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        layers = from_model_space(x, ref).clamp(0, 1).cpu()
        out_bg.append(layers[:, :3])
        out_fg.append(layers[:, 3:])
    return {"background": torch.cat(out_bg), "foreground": torch.cat(out_fg)}


# ----------------------------------------------------------------------------- metrics

def _region(region: Any, like: Tensor) -> Tensor | None:
    if region is None:
        return None
    if not isinstance(region, Tensor) or region.dtype != torch.bool:
        raise TypeError(f"region must be None or a bool tensor (B, 1, H, W), got {getattr(region, 'dtype', type(region).__name__)}")
    if region.dim() != 4 or region.shape[1] != 1 or region.shape[0] != like.shape[0] or region.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"region must have shape ({like.shape[0]}, 1, {like.shape[-2]}, {like.shape[-1]}), got {tuple(region.shape)}")
    return region


def psnr(pred: Tensor, target: Tensor, region: Tensor | None = None) -> Tensor:
    """Per-item PSNR in dB, ``10 log10(1 / MSE)`` for values in [0, 1]: ``(B,)`` float64.

    pred, target: ``(B, C, H, W)`` of the same shape. With ``region (B, 1, H, W)`` bool the MSE is
    taken over the region's pixels only (all channels); an item with an empty region gives NaN
    (average with ``nanmean``). MSE is floored at 1e-10 (a perfect match reads 100 dB).
    """
    float_tensor(pred, "pred", 4, "(B, C, H, W)")
    float_tensor(target, "target", 4, "(B, C, H, W)")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    region = _region(region, pred)
    sq = (pred.double() - target.double()).pow(2)
    if region is None:
        mse = sq.flatten(1).mean(1)
    else:
        r = region.double()
        n = r.flatten(1).sum(1) * pred.shape[1]
        mse = torch.where(n > 0, (sq * r).flatten(1).sum(1) / n.clamp_min(1), torch.full_like(n, float("nan")))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def alpha_error(pred_alpha: Tensor, true_alpha: Tensor, region: Tensor | None = None) -> Tensor:
    """Per-item mean absolute alpha error ``(B,)`` float64, over the whole image or inside
    ``region (B, 1, H, W)`` bool (NaN where it is empty). Alphas: ``(B, 1, H, W)``."""
    _image(pred_alpha, "pred_alpha", 1)
    _image(true_alpha, "true_alpha", 1)
    if pred_alpha.shape != true_alpha.shape:
        raise ValueError(f"pred_alpha {tuple(pred_alpha.shape)} and true_alpha {tuple(true_alpha.shape)} must match")
    region = _region(region, pred_alpha)
    err = (pred_alpha.double() - true_alpha.double()).abs()
    if region is None:
        return err.flatten(1).mean(1)
    r = region.double().flatten(1)
    n = r.sum(1)
    return torch.where(n > 0, (err.flatten(1) * r).sum(1) / n.clamp_min(1), torch.full_like(n, float("nan")))


def effect_captured(pred_alpha: Tensor, true_alpha: Tensor, region: Tensor) -> Tensor:
    """How much of a true effect the predicted foreground alpha holds, per item ``(B,)`` float64:
    ``Σ_region min(α̂, α) / Σ_region α`` *(ours)*. 1 when the predicted alpha covers the effect
    everywhere in ``region``, 0 when it ignores it; over-opaque alpha does not raise it above 1
    (:func:`alpha_error` measures that). NaN where the effect has no alpha in the region."""
    _image(pred_alpha, "pred_alpha", 1)
    _image(true_alpha, "true_alpha", 1)
    if pred_alpha.shape != true_alpha.shape:
        raise ValueError(f"pred_alpha {tuple(pred_alpha.shape)} and true_alpha {tuple(true_alpha.shape)} must match")
    if region is None:
        raise ValueError("region must be a bool tensor (B, 1, H, W): where the effect lies")
    region = _region(region, pred_alpha).double()
    p, a = pred_alpha.double() * region, true_alpha.double() * region
    total = a.flatten(1).sum(1)
    got = torch.minimum(p, a).flatten(1).sum(1)
    return torch.where(total > 0, got / total.clamp_min(1e-12), torch.full_like(total, float("nan")))


def evaluate_decomposition(pred: dict[str, Tensor], data: dict[str, Tensor],
                           regions: dict[str, Tensor]) -> dict[str, Tensor]:
    """The chapter's per-item metrics of a decomposition ``pred`` (from :func:`decompose`) against
    the truth ``data`` (from ``decomposition_set``), each ``(B,)`` float64:

    - ``bg_psnr``, ``comp_psnr``: the paper's two PSNRs: the predicted background against the true
      one, and the recomposite of the predicted layers against the input image;
    - ``bg_psnr_effect``: background PSNR inside ``regions["any"]`` (where the effects lie);
    - ``reflection_captured``: :func:`effect_captured` of the true reflection alpha inside
      ``regions["reflection"]``;
    - ``alpha_mae``, ``alpha_mae_effect``: the foreground alpha's mean absolute error, everywhere
      and inside ``regions["any"]``.
    """
    for k in ("background", "foreground"):
        if not isinstance(pred, dict) or k not in pred:
            raise ValueError(f"pred must be a dict with 'background' and 'foreground' (from decompose), missing {k!r}")
    if not isinstance(regions, dict) or not {"any", "reflection"} <= set(regions):
        raise ValueError("regions must be a dict with 'any' and 'reflection' bool masks (from data.decomposition.effect_region)")
    bg, fg = pred["background"], pred["foreground"]
    true_fg = data["foreground"]
    return {
        "bg_psnr": psnr(bg, data["background"]),
        "comp_psnr": psnr(recomposite(bg, fg), data["image"]),
        "bg_psnr_effect": psnr(bg, data["background"], regions["any"]),
        "reflection_captured": effect_captured(fg[:, 3:4], data["reflection_alpha"], regions["reflection"]),
        "alpha_mae": alpha_error(fg[:, 3:4], true_fg[:, 3:4]),
        "alpha_mae_effect": alpha_error(fg[:, 3:4], true_fg[:, 3:4], regions["any"]),
    }
