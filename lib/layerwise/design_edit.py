"""DesignEdit: Multi-Layered Latent Decomposition and Fusion for Unified & Accurate Image Editing
(Jia et al., AAAI 2025, arXiv:2403.14487).

DesignEdit edits an image with a pretrained diffusion model and no training. It treats the image as
layers: each object is a layer of its own, and the background under it is an *incomplete* layer with
a hole. Everything follows from two operations on the DDIM trajectory of the image:

1. **Key-masked self-attention** (paper §3.2; official ``register_attention_control``). To fill the
   hole, the background is denoised from the image's DDIM inversion while, in every self-attention
   layer, the *keys* of the tokens inside the hole are suppressed, so the queries of the hole read
   only the surroundings (:func:`key_masked_attention`, :class:`KeyMask` and its processors for our
   :class:`~layerwise.diffusion.dit.TinyDiT` and for diffusers' ``Attention``). Outside the hole the
   background's latent is replaced after every step by the source's own reconstruction
   (:func:`latent_blend`), so only the hole changes. :func:`remove_object` is the whole removal.
2. **Layer fusion** (paper §3.3; official ``LayerFusion``). Once, late in sampling, an object layer
   (the image's latent, possibly of the image transformed at pixel level: resized or mirrored) is
   shifted and pasted into the inpainted background (:func:`paste_layer`), and the last steps denoise
   the fused canvas so that the seams heal (:func:`edit_layer`).

What the official code does that the paper's text leaves out, and we follow *(read in
design-edit/DesignEdit @ 4592a4b)*: the keys are masked by multiplying the features that enter the
key projection by ``1 − m`` (a **soft** mask: a hidden key gets logit 0, not −∞); masking runs in
sampling steps 1 … K−1 with K = 40 of 50 (step 0 is skipped); the mask is dilated at pixel level and
resized **bilinearly** to each attention layer's grid; masking happens only in the conditional half of
classifier-free guidance whose positive and negative prompts are *the same* embedding, so guidance
7.5 extrapolates the masked prediction away from the unmasked one, ``ε = ε_u + 7.5 (ε_m − ε_u)``
(:func:`masking_guidance`); blending runs after steps 0 … 40 and fusion once after step 41 of 50;
proximal guidance pulls the latents outside the hole towards the inversion in the last steps.

Conventions: images ``(B, 3, H, W)`` in [0, 1]; masks ``(B, 1, H, W)`` (or ``(B, H, W)``), 1 on the
object; a *denoiser* is ``model(x_t, t, cond) → ε̂``. With ``ae=None`` the model works on pixels in
[-1, 1] (the course's scene prior ``scene_dit32``); with an autoencoder ``ae`` (``encode`` from
[0, 1], ``decode`` to [0, 1]) it works on latents, as SDXL does. Choices that are ours are marked
*(ours)*. Our TinyDiT's key projection has a bias, so "zero the features before ``to_k``" would not
zero the keys: we scale the keys themselves after the projection (and the rotary embedding, which
commutes with scaling), which is what the official code amounts to on SDXL's bias-free ``to_k``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerwise.core.env import progress_bar
from layerwise.data.shapes import shift as shift_image
from layerwise.diffusion.schedule import ddim_inversion_step, ddim_step, make_scheduler

__all__ = ["MODES", "SDXL_SCHEDULE", "key_masked_attention", "latent_blend", "dilate_mask", "paste_layer",
           "masking_guidance", "token_keep", "KeyMask", "DiTKeyMaskProcessor", "DiffusersKeyMaskProcessor",
           "install_key_masking", "hole_attention", "ConditionedUNet", "LatentVAE", "sdxl_parts", "DDIMPlan", "ddim_plan",
           "Inversion", "invert_source", "Removal", "remove_object", "transform_layer", "Edit", "edit_layer",
           "paste_baseline", "harmonic_fill", "region_psnr", "residue", "removal_scores", "default_steps"]

#: How :func:`key_masked_attention` hides tokens: "keys" (soft, the official code), "hard" (−∞ logits),
#: "queries" and "values" (the paper's ablation).
MODES = ("keys", "hard", "queries", "values")

#: The official code's DDIM schedule for SDXL (``src/demo/model.py``); pass as ``schedule=`` for SDXL.
SDXL_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False)


# ----------------------------------------------------------------------------- argument checks

def _tensor(x: Any, name: str, ndim: int | tuple[int, ...], what: str, *, floating: bool = True) -> Tensor:
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {what}, got {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{name} must have shape {what}, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def _int(x: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {x}")
    return x


def _number(x: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    if not (low <= float(x) <= high) or math.isnan(float(x)):
        raise ValueError(f"{name} must be in [{low}, {high}], got {x}")
    return float(x)


def _mode(mode: Any) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _mask4(mask: Any, name: str, like: Tensor | None = None) -> Tensor:
    """``mask`` (B, 1, H, W) or (B, H, W), bool or float in [0, 1], as float (B, 1, H, W)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, 1, H, W), got {type(mask).__name__}")
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.numel() == 0:
        raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        mask = mask.float()
    elif not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point tensor, got dtype {mask.dtype}")
    if like is not None:
        if mask.shape[-2:] != like.shape[-2:]:
            raise ValueError(f"{name} must cover the image's {tuple(like.shape[-2:])} pixels, got {tuple(mask.shape[-2:])}")
        if mask.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"{name} must have 1 or {like.shape[0]} rows (one per image), got {mask.shape[0]}")
        mask = mask.to(like.dtype)
    if bool(((mask < 0) | (mask > 1)).any()):
        raise ValueError(f"{name} must hold values in [0, 1]")
    return mask


def _images(image: Any, name: str = "image") -> Tensor:
    image = _tensor(image, name, 4, "(B, 3, H, W) in [0, 1]")
    if image.shape[1] != 3:
        raise ValueError(f"{name} must be an RGB batch (B, 3, H, W), got shape {tuple(image.shape)}")
    return image


# ----------------------------------------------------------------------------- the operations (exercises)

def key_masked_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, mode: str = "keys") -> Tensor:
    """Self-attention in which the tokens with ``keep`` < 1 are (partly) hidden (paper §3.2).

    q, k, v: ``(B, heads, N, D)``; keep: ``(B, N)`` in [0, 1], 1 = an ordinary token, 0 = a token of
    the hole. ``mode``:

    - ``"keys"`` (the official code, a soft mask): ``k ← keep · k``, so a hidden key's logit is 0 and
      it keeps the weight ``e⁰`` (its value still flows in, a little);
    - ``"hard"``: the logits of the keys with ``keep == 0`` become −∞ (they get no weight at all; the
      others are untouched). Every row must keep at least one key;
    - ``"queries"``: ``q ← keep · q`` (the hidden tokens attend uniformly: the paper's "blur");
    - ``"values"``: ``v ← keep · v`` (the hidden tokens pass zero values: the paper's "distortion").

    Returns ``softmax(q kᵀ / √D) v``: ``(B, heads, N, D)``, q's dtype.
    """
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        _tensor(x, name, 4, "(B, heads, N, D)")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must agree in (B, heads, N): got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    keep = _tensor(keep, "keep", 2, "(B, N)")
    if keep.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"keep must have shape (B, N) = {(q.shape[0], q.shape[2])}, got {tuple(keep.shape)}")
    mode = _mode(mode)
    w = keep.to(q.dtype)[:, None, :, None]                    # (B, 1, N, 1)
    if mode == "keys":
        return F.scaled_dot_product_attention(q, k * w, v)
    if mode == "queries":
        return F.scaled_dot_product_attention(q * w, k, v)
    if mode == "values":
        return F.scaled_dot_product_attention(q, k, v * w)
    hidden = keep == 0
    if bool(hidden.all(dim=1).any()):
        raise ValueError("keep hides every key of some row; hard masking needs at least one kept key per row")
    bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(hidden, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :])


def latent_blend(x_edit: Tensor, x_src: Tensor, mask: Tensor) -> Tensor:
    """Keep the edit inside the mask and the source outside: ``x_edit · m + x_src · (1 − m)``.

    x_edit, x_src: ``(B, C, H, W)``; mask: ``(B, 1, H, W)`` (or ``(1, 1, H, W)``, shared) in [0, 1],
    1 = the edited region. The official code does this to the background after every step of the
    first 41 of 50 (``LayerFusion.__call__``).
    """
    _tensor(x_edit, "x_edit", 4, "(B, C, H, W)")
    _tensor(x_src, "x_src", 4, "(B, C, H, W)")
    if x_edit.shape != x_src.shape:
        raise ValueError(f"x_edit {tuple(x_edit.shape)} and x_src {tuple(x_src.shape)} must have the same shape")
    mask = _tensor(mask, "mask", 4, "(B, 1, H, W)")
    if mask.shape[1] != 1 or mask.shape[-2:] != x_edit.shape[-2:] or mask.shape[0] not in (1, x_edit.shape[0]):
        raise ValueError(f"mask must have shape ({x_edit.shape[0]} or 1, 1, {x_edit.shape[2]}, {x_edit.shape[3]}), "
                         f"got {tuple(mask.shape)}")
    m = mask.to(x_edit.dtype)
    return x_edit * m + x_src * (1 - m)


def dilate_mask(mask: Tensor, px: int) -> Tensor:
    """Grow a mask by ``px`` pixels in every direction (a square structuring element).

    mask: ``(..., H, W)``, bool or floating. ``out[y, x]`` is the largest value of ``mask`` in the
    ``(2 px + 1)²`` window centred on ``(y, x)`` (pixels outside the image count as 0); ``px = 0``
    returns the mask unchanged. Same shape and dtype as ``mask``. (The official code dilates its
    1024² masks by a 20-pixel square, ``utils.attend_mask``.)
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor (..., H, W), got {type(mask).__name__}")
    if mask.dim() < 2 or mask.numel() == 0:
        raise ValueError(f"mask must have shape (..., H, W), got {tuple(mask.shape)}")
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        raise TypeError(f"mask must be a bool or floating-point tensor, got dtype {mask.dtype}")
    px = _int(px, "px", 0)
    if px == 0:
        return mask.clone()
    h, w = mask.shape[-2:]
    x = mask.reshape(-1, 1, h, w)
    x = x.float() if mask.dtype == torch.bool else x
    out = F.max_pool2d(F.pad(x, (px, px, px, px)), 2 * px + 1, stride=1)
    out = out.reshape(mask.shape)
    return out > 0.5 if mask.dtype == torch.bool else out.to(mask.dtype)


def _mirror_index(mask: Tensor) -> Tensor:
    """Per image, the column each column takes after mirroring about the centre of the mask's
    columns: ``(B, W)`` long; the identity for an empty mask."""
    b, _, _, w = mask.shape
    cols = (mask > 0).flatten(1, 2).any(1)                       # (B, W)
    x = torch.arange(w, device=mask.device).expand(b, w)
    x0 = torch.where(cols, x, torch.full_like(x, w)).min(1).values
    x1 = torch.where(cols, x, torch.full_like(x, -1)).max(1).values
    inside = (x >= x0[:, None]) & (x <= x1[:, None])
    return torch.where(inside, x0[:, None] + x1[:, None] - x, x)


def paste_layer(canvas: Tensor, fg: Tensor, mask: Tensor, dx: int, dy: int, flip: bool = False) -> tuple[Tensor, Tensor]:
    """Fuse a layer into a canvas at a new place: the official ``LayerFusion.mv_layer``.

    canvas, fg: ``(B, C, H, W)``; mask: ``(B, 1, H, W)`` in [0, 1], the layer's footprint in ``fg``.

    1. With ``flip``, mirror ``fg`` and ``mask`` left–right in place: per image, column ``x`` takes
       column ``x0 + x1 − x``, where ``x0``, ``x1`` are the first and last columns in which the mask is
       > 0 (columns outside ``[x0, x1]``, and images with an empty mask, stay as they are).
    2. Shift both ``dx`` pixels right and ``dy`` pixels down (negative: left / up), filling with 0.
    3. ``fused = canvas · (1 − m′) + fg′ · m′``.

    Returns ``(fused, m′)``: ``(B, C, H, W)`` and ``(B, 1, H, W)``.
    """
    _tensor(canvas, "canvas", 4, "(B, C, H, W)")
    _tensor(fg, "fg", 4, "(B, C, H, W)")
    if fg.shape != canvas.shape:
        raise ValueError(f"fg {tuple(fg.shape)} and canvas {tuple(canvas.shape)} must have the same shape")
    mask = _tensor(mask, "mask", 4, "(B, 1, H, W)")
    if mask.shape != (canvas.shape[0], 1, *canvas.shape[-2:]):
        raise ValueError(f"mask must have shape {(canvas.shape[0], 1, *canvas.shape[-2:])}, got {tuple(mask.shape)}")
    dx, dy = _int(dx, "dx"), _int(dy, "dy")
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be a bool, got {type(flip).__name__}")
    mask = mask.to(canvas.dtype)
    fg = fg.to(canvas.dtype)
    if flip:
        idx = _mirror_index(mask)
        fg = fg.gather(3, idx[:, None, None, :].expand_as(fg))
        mask = mask.gather(3, idx[:, None, None, :].expand_as(mask))
    fg, mask = shift_image(fg, dy, dx), shift_image(mask, dy, dx)
    return canvas * (1 - mask) + fg * mask, mask


def masking_guidance(eps_plain: Tensor, eps_masked: Tensor, weight: float) -> Tensor:
    """``ε_plain + weight · (ε_masked − ε_plain)``: what the official negative-prompt inversion with
    identical prompts and CFG ``weight`` (7.5) does to the background slot. ``weight = 1`` is the
    masked prediction itself; ``weight > 1`` pushes further away from the unmasked one."""
    _tensor(eps_plain, "eps_plain", (2, 3, 4, 5), "(B, ...)")
    _tensor(eps_masked, "eps_masked", (2, 3, 4, 5), "(B, ...)")
    if eps_plain.shape != eps_masked.shape:
        raise ValueError(f"eps_plain {tuple(eps_plain.shape)} and eps_masked {tuple(eps_masked.shape)} must match")
    weight = _number(weight, "weight", 0.0, 100.0)
    return eps_plain + weight * (eps_masked - eps_plain)


# ----------------------------------------------------------------------------- attention processors

def token_keep(hide: Tensor, n_tokens: int, mode: str = "keys") -> Tensor:
    """From a hole at some resolution to one keep value per token of an attention layer: ``(B, N)``.

    hide: ``(B, 1, H, W)`` in [0, 1] (1 = the hole). The layer has ``n_tokens`` tokens in a row-major
    grid of ``H / f × W / f``; the hole is resized to that grid **bilinearly** (the official code,
    after binarising its mask), and ``keep = 1 − hole``. In ``"hard"`` mode a token the hole touches
    at all is hidden (keep 0), every other token kept (keep 1) *(ours: what "hard" means for a soft
    boundary)*.
    """
    hide = _mask4(hide, "hide")
    n_tokens = _int(n_tokens, "n_tokens", 1)
    mode = _mode(mode)
    h, w = hide.shape[-2:]
    gh = max(1, round(math.sqrt(n_tokens * h / w)))
    gw = n_tokens // gh
    if gh * gw != n_tokens:
        raise ValueError(f"cannot lay {n_tokens} tokens out as a grid of the mask's aspect {h}×{w}")
    m = (hide > 0).to(hide.dtype)
    if (gh, gw) != (h, w):
        m = F.interpolate(m, size=(gh, gw), mode="bilinear", align_corners=False)
    keep = (1 - m).flatten(1)
    if mode == "hard":
        keep = (keep >= 1 - 1e-6).to(keep.dtype)
    return keep


@dataclass
class KeyMask:
    """What the key-masking processors hide, and when: shared by every processor of a model.

    ``hide``: ``(B, 1, H, W)`` in [0, 1] at the model's input resolution, one row per row of the
    batch the model is called with (rows of zeros are left alone), or None (plain attention).
    ``mode``: one of :data:`MODES`. ``enabled``: switch the masking on and off between steps.
    ``calls`` counts the masked self-attention calls (a check that the processors run).
    """

    hide: Tensor | None = None
    mode: str = "keys"
    enabled: bool = True
    calls: int = field(default=0, repr=False)

    def keep(self, n_tokens: int, batch: int, dtype: torch.dtype, device) -> Tensor | None:
        """``(B, N)`` keep values for a self-attention layer of ``n_tokens`` tokens, or None (do nothing)."""
        if not self.enabled or self.hide is None:
            return None
        _mode(self.mode)
        if self.hide.shape[0] != batch:
            raise ValueError(f"KeyMask.hide has {self.hide.shape[0]} rows but the attention layer got a batch of {batch}")
        self.calls += 1
        return token_keep(self.hide.to(device=device, dtype=torch.float32), n_tokens, self.mode).to(dtype)


class DiTKeyMaskProcessor:
    """Key masking for a :class:`~layerwise.diffusion.dit.TinyDiT` block: set as ``block.attn.processor``.

    Our attention projects q, k, v with one biased linear layer and rotates q, k (RoPE); the mask is
    applied to the rotated keys (queries, values), which equals masking before a bias-free key
    projection, as in SDXL.
    """

    def __init__(self, state: KeyMask):
        if not isinstance(state, KeyMask):
            raise TypeError(f"state must be a KeyMask, got {type(state).__name__}")
        self.state = state

    def __call__(self, attn, x: Tensor, angles: Tensor | None, mask: Tensor | None) -> Tensor:
        q, k, v = attn.split(x, angles)
        keep = self.state.keep(x.shape[1], x.shape[0], q.dtype, x.device)
        if keep is None:
            return attn.attend(q, k, v, mask)
        if mask is not None:
            raise ValueError("key masking does not combine with an attention mask; call the model without mask=")
        out = key_masked_attention(q, k, v, keep, self.state.mode)
        return attn.proj(out.transpose(1, 2).flatten(2))


class DiffusersKeyMaskProcessor:
    """Key masking for diffusers' ``Attention`` modules (UNet2DConditionModel, SDXL): an attention
    processor with diffusers' interface ``__call__(attn, hidden_states, encoder_hidden_states=None,
    attention_mask=None, temb=None, ...)``.

    Self-attention calls (no ``encoder_hidden_states``) are masked while ``state`` says so; every other
    call is handed to ``base`` (the processor that was installed before, by default diffusers'
    ``AttnProcessor2_0``). The computation follows ``AttnProcessor2_0`` step by step, with
    :func:`key_masked_attention` in place of its scaled dot-product attention.
    """

    def __init__(self, state: KeyMask, base=None):
        if not isinstance(state, KeyMask):
            raise TypeError(f"state must be a KeyMask, got {type(state).__name__}")
        if base is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            base = AttnProcessor2_0()
        if not callable(base):
            raise TypeError(f"base must be an attention processor (callable), got {type(base).__name__}")
        self.state, self.base = state, base

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or not self.state.enabled \
                or self.state.hide is None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        ndim = hidden_states.ndim
        if ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        b, n, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (t.view(b, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        keep = self.state.keep(n, b, q.dtype, q.device)
        out = key_masked_attention(q, k, v, keep, self.state.mode)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _unet_of(model):
    """The diffusers UNet inside ``model`` (itself, or a :class:`ConditionedUNet`'s), or None."""
    unet = getattr(model, "unet", model)
    return unet if hasattr(unet, "attn_processors") and hasattr(unet, "set_attn_processor") else None


@contextlib.contextmanager
def install_key_masking(model, state: KeyMask) -> Iterator[KeyMask]:
    """Put the key-masking processors into every self-attention of ``model`` for the ``with`` block,
    then restore the processors it had.

    model: a :class:`~layerwise.diffusion.dit.TinyDiT`, a diffusers ``UNet2DConditionModel`` (every
    ``Attention`` module gets a :class:`DiffusersKeyMaskProcessor`; cross-attention passes through),
    a :class:`ConditionedUNet`, or a diffusers pipeline with a ``.unet`` (e.g. SDXL's).
    """
    if not isinstance(state, KeyMask):
        raise TypeError(f"state must be a KeyMask, got {type(state).__name__}")
    blocks = getattr(model, "blocks", None)
    if blocks is not None and all(hasattr(b, "attn") and hasattr(b.attn, "processor") for b in blocks):
        old = [b.attn.processor for b in blocks]
        try:
            for b in blocks:
                b.attn.processor = DiTKeyMaskProcessor(state)
            yield state
        finally:
            for b, p in zip(blocks, old):
                b.attn.processor = p
        return
    unet = _unet_of(model)
    if unet is None:
        raise TypeError(f"model must be a TinyDiT, a diffusers UNet2DConditionModel, a ConditionedUNet or a pipeline "
                        f"with a .unet; got {type(model).__name__}")
    old = dict(unet.attn_processors)
    try:
        unet.set_attn_processor({name: DiffusersKeyMaskProcessor(state, base=p) for name, p in old.items()})
        yield state
    finally:
        unet.set_attn_processor(old)


class _Recorder(DiTKeyMaskProcessor):
    """A :class:`DiTKeyMaskProcessor` that also records how much attention the hole's queries pay to
    the hole's keys (see :func:`hole_attention`)."""

    def __init__(self, state: KeyMask, hole: Tensor, shares: list):
        super().__init__(state)
        self.hole, self.shares = hole, shares

    def __call__(self, attn, x: Tensor, angles: Tensor | None, mask: Tensor | None) -> Tensor:
        q, k, v = attn.split(x, angles)
        inside = token_keep(self.hole, x.shape[1], "hard") == 0                  # (B, N): tokens the hole touches
        keep = self.state.keep(x.shape[1], x.shape[0], q.dtype, x.device)
        qq, kk, bias = q, k, 0.0
        if keep is not None:
            w = keep[:, None, :, None]
            mode = self.state.mode
            kk = k * w if mode == "keys" else k
            qq = q * w if mode == "queries" else q
            if mode == "hard":
                bias = torch.zeros_like(keep).masked_fill(keep == 0, float("-inf"))[:, None, None, :]
        weights = ((qq @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias).softmax(-1)   # (B, heads, N, N)
        on_hole = (weights * inside[:, None, None, :]).sum(-1).mean(1)                     # (B, N)
        share = (on_hole * inside).sum(1) / inside.sum(1).clamp_min(1)
        self.shares.append(share)
        out = attn.attend(q, k, v, mask) if keep is None else key_masked_attention(q, k, v, keep, self.state.mode)
        return out if keep is None else attn.proj(out.transpose(1, 2).flatten(2))


@torch.no_grad()
def hole_attention(model, x: Tensor, t: int, hole: Tensor, mode: str | None = None) -> Tensor:
    """How much of their attention the hole's tokens pay to the hole itself, in each block of a TinyDiT.

    x: ``(B, C, H, W)`` the model's input at timestep ``t``; hole: ``(B, 1, H, W)``. The hole's tokens
    are those it touches; for each block, the attention weight that their queries put on those keys,
    summed over the keys and averaged over heads, queries and images. ``mode=None`` is the plain model;
    a mode of :data:`MODES` masks the hole as :func:`remove_object` does. Returns ``(depth,)``.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"model must be a TinyDiT, got {type(model).__name__}")
    x = _tensor(x, "x", 4, "(B, C, H, W)")
    hole = _mask4(hole, "hole", like=x)
    state = KeyMask(hide=None if mode is None else hole, mode="keys" if mode is None else _mode(mode))
    shares: list[Tensor] = []
    old = [b.attn.processor for b in blocks]
    try:
        for b in blocks:
            b.attn.processor = _Recorder(state, hole, shares)
        _eps(model, x, t)
    finally:
        for b, p in zip(blocks, old):
            b.attn.processor = p
    return torch.stack(shares).mean(1)


class ConditionedUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` behind the course's denoiser interface ``model(x, t) → ε̂``,
    with its text conditioning fixed (one prompt for every image of the batch).

    ``encoder_hidden_states``: ``(1, L, D)``; ``added_cond_kwargs``: SDXL's ``{"text_embeds": (1, P),
    "time_ids": (1, 6)}`` or None. Inputs are cast to the UNet's dtype and ε̂ back to the input's.
    """

    def __init__(self, unet: nn.Module, encoder_hidden_states: Tensor, added_cond_kwargs: dict | None = None):
        super().__init__()
        if _unet_of(unet) is not unet:
            raise TypeError(f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        _tensor(encoder_hidden_states, "encoder_hidden_states", 3, "(1, L, D)")
        if encoder_hidden_states.shape[0] != 1:
            raise ValueError(f"encoder_hidden_states must hold one prompt (1, L, D), got {tuple(encoder_hidden_states.shape)}")
        if added_cond_kwargs is not None and not isinstance(added_cond_kwargs, dict):
            raise TypeError(f"added_cond_kwargs must be a dict or None, got {type(added_cond_kwargs).__name__}")
        self.unet = unet
        self.encoder_hidden_states = encoder_hidden_states
        self.added_cond_kwargs = added_cond_kwargs

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        dtype = next(self.unet.parameters()).dtype
        ehs = self.encoder_hidden_states.to(x.device, dtype).expand(b, -1, -1)
        added = None
        if self.added_cond_kwargs is not None:
            added = {k: v.to(x.device, dtype).expand(b, *v.shape[1:]) for k, v in self.added_cond_kwargs.items()}
        out = self.unet(x.to(dtype), t.to(x.device), encoder_hidden_states=ehs, added_cond_kwargs=added).sample
        return out.to(x.dtype)


class LatentVAE(nn.Module):
    """A diffusers ``AutoencoderKL`` as the course's autoencoder: ``encode`` images in [0, 1] to
    scaled latents (the posterior's mean × ``scaling_factor``), ``decode`` back to [0, 1]. Runs the VAE
    in float32 (SDXL's VAE overflows in float16)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        if not (hasattr(vae, "encode") and hasattr(vae, "decode") and hasattr(vae, "config")):
            raise TypeError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        self.vae = vae.to(torch.float32)
        self.factor = float(vae.config.scaling_factor)

    def encode(self, x: Tensor) -> Tensor:
        return self.vae.encode(x.float() * 2 - 1).latent_dist.mean * self.factor

    def decode(self, z: Tensor) -> Tensor:
        return (self.vae.decode(z.float() / self.factor).sample + 1) / 2


def sdxl_parts(pipe, prompt: str = "", *, size: tuple[int, int] | None = None) -> tuple[ConditionedUNet, LatentVAE]:
    """The denoiser and autoencoder of a diffusers SDXL pipeline, ready for :func:`remove_object` /
    :func:`edit_layer` (with ``schedule=SDXL_SCHEDULE``): the UNet conditioned on ``prompt`` (the
    official code uses the empty prompt) with SDXL's size conditioning for ``size`` (default: the
    UNet's sample size × the VAE factor), and the VAE in float32."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    for part in ("unet", "vae", "encode_prompt"):
        if not hasattr(pipe, part):
            raise TypeError(f"pipe must be a diffusers StableDiffusionXLPipeline (it has no .{part})")
    device = next(pipe.unet.parameters()).device
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    if size is None:
        side = int(pipe.unet.config.sample_size) * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        size = (side, side)
    h, w = (_int(s, "size", 1) for s in size)
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=embeds.dtype, device=device)
    return ConditionedUNet(pipe.unet, embeds, {"text_embeds": pooled, "time_ids": time_ids}), LatentVAE(pipe.vae)


# ----------------------------------------------------------------------------- DDIM: inversion and sampling

@dataclass(frozen=True)
class DDIMPlan:
    """The N sampling steps: step ``i`` goes from timestep ``timesteps[i]`` (noise level ``abar[i]``) to
    level ``abar_prev[i]`` (the next timestep's, or the final level after the last step)."""

    timesteps: tuple[int, ...]
    abar: Tensor
    abar_prev: Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


def ddim_plan(steps: int, schedule: dict | None = None) -> DDIMPlan:
    """DDIM with ``steps`` steps on the course's schedule (``schedule=None``, :data:`~layerwise.diffusion.SCHEDULE`)
    or another one given as diffusers ``DDIMScheduler`` arguments (e.g. :data:`SDXL_SCHEDULE`)."""
    steps = _int(steps, "steps", 1, 1000)
    if schedule is not None and not isinstance(schedule, dict):
        raise TypeError(f"schedule must be a dict of DDIMScheduler arguments or None, got {type(schedule).__name__}")
    sch = make_scheduler("ddim", **(schedule or {}))
    sch.set_timesteps(steps)
    ts = [int(t) for t in sch.timesteps]
    acp = sch.alphas_cumprod.float()
    abar = torch.stack([acp[t] for t in ts])
    final = torch.as_tensor(sch.final_alpha_cumprod, dtype=torch.float32)
    abar_prev = torch.cat([abar[1:], final.reshape(1)])
    return DDIMPlan(tuple(ts), abar, abar_prev)


def _eps(model, x: Tensor, t: int) -> Tensor:
    return model(x, torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long), None)


@dataclass
class Inversion:
    """A source's DDIM inversion and reconstruction in the model's space.

    ``inverted[i]``: the inverted latent at the level where sampling step ``i`` starts (``inverted[0]``
    is x_T, ``inverted[N]`` the source itself); ``source[i]``: the source slot after sampling step ``i``
    (DDIM from x_T with proximal guidance, the official batch slot 0), so ``source[N − 1]`` is its
    reconstruction; ``plain_reconstruction``: DDIM from x_T without any pull.
    """

    plan: DDIMPlan
    inverted: list[Tensor]
    source: list[Tensor]
    plain_reconstruction: Tensor

    @property
    def reconstruction(self) -> Tensor:
        return self.source[-1]

    def take(self, index: Sequence[int] | slice) -> "Inversion":
        """The inversion of some images of the batch (an index list or a slice)."""
        idx = _index(index, self.inverted[0].shape[0])
        return Inversion(self.plan, [x[idx] for x in self.inverted], [x[idx] for x in self.source],
                         self.plain_reconstruction[idx])


def _index(index, n: int):
    if isinstance(index, slice):
        return index
    try:
        idx = [int(i) for i in index]
    except TypeError:
        raise TypeError(f"index must be a slice or a sequence of ints, got {type(index).__name__}") from None
    if not idx or any(not -n <= i < n for i in idx):
        raise ValueError(f"index must hold ints in [0, {n}), got {idx}")
    return torch.tensor(idx)


def _to_space(image: Tensor, ae) -> Tensor:
    return image * 2 - 1 if ae is None else ae.encode(image)


def _from_space(x: Tensor, ae) -> Tensor:
    return ((x + 1) / 2 if ae is None else ae.decode(x)).clamp(0, 1)


def _space_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A pixel mask at the model's resolution (nearest, as the official 1024² → 128² resize), binary."""
    m = (mask > 0.5).to(mask.dtype)
    if m.shape[-2:] != size:
        m = F.interpolate(m, size=size, mode="nearest")
    return m


@torch.no_grad()
def invert_source(model, image: Tensor, *, ae=None, steps: int = 50, schedule: dict | None = None,
                  proximal: float = 0.1, progress: bool | None = None) -> Inversion:
    """DDIM-invert ``image`` (B, 3, H, W) in [0, 1] with ``steps`` steps, then denoise it back.

    Inversion follows the official ``next_step``: from level ``abar_prev[i]`` to ``abar[i]`` with ε̂
    evaluated at timestep ``timesteps[i]``, for i = N − 1 … 0. The *source slot* is then denoised from
    x_T with plain DDIM (η = 0) and, as in the official code, proximal guidance: after each step with
    t < 400 it is pulled by ``proximal`` towards the inversion at the same level (Han et al. 2024; the
    official 0.1; 0 switches it off). ``plain_reconstruction`` is the same walk without the pull: the
    model's own round trip, the ceiling of anything the model has to regenerate.
    """
    image = _images(image)
    plan = ddim_plan(steps, schedule)
    proximal = _number(proximal, "proximal", 0.0, 1.0)
    x = _to_space(image, ae)
    inverted = [x]
    for i in progress_bar(list(reversed(range(len(plan)))), desc="DDIM inversion", enabled=progress):
        x = ddim_inversion_step(x, _eps(model, x, plan.timesteps[i]), plan.abar_prev[i], plan.abar[i])
        inverted.append(x)
    inverted = inverted[::-1]
    b = x.shape[0]
    x = torch.cat([inverted[0], inverted[0]]) if proximal > 0 else inverted[0]
    source = []
    for i in progress_bar(range(len(plan)), desc="DDIM reconstruction", enabled=progress):
        x = ddim_step(x, _eps(model, x, plan.timesteps[i]), plan.abar[i], plan.abar_prev[i])
        if proximal > 0 and plan.timesteps[i] < 400:
            x = torch.cat([x[:b], x[b:] - proximal * (x[b:] - inverted[i + 1])])
        source.append(x[b:] if proximal > 0 else x)
    return Inversion(plan, inverted, source, x[:b])


def default_steps(steps: int, fraction: float) -> int:
    """``round(fraction · steps)``: the official step counts (40 and 41 of 50) scaled to ``steps``."""
    return int(round(_number(fraction, "fraction", 0.0, 1.0) * _int(steps, "steps", 1)))


@dataclass
class Removal:
    """The result of :func:`remove_object`: ``image`` (B, 3, H, W) in [0, 1], the background slot's
    latent after every step (``latents[i]``), the hole in the model's space and the inversion used."""

    image: Tensor
    latents: list[Tensor]
    hole: Tensor
    inversion: Inversion
    settings: dict

    def take(self, index: Sequence[int] | slice) -> "Removal":
        """The removal of some images of the batch (an index list or a slice)."""
        idx = _index(index, self.image.shape[0])
        return Removal(self.image[idx], [x[idx] for x in self.latents], self.hole[idx], self.inversion.take(idx),
                       dict(self.settings))


def _check_inversion(inversion, steps: int, x_shape) -> None:
    if not isinstance(inversion, Inversion):
        raise TypeError(f"inversion must be an Inversion (from invert_source), got {type(inversion).__name__}")
    if len(inversion.plan) != steps:
        raise ValueError(f"inversion has {len(inversion.plan)} steps but steps={steps}")
    if tuple(inversion.inverted[-1].shape) != tuple(x_shape):
        raise ValueError(f"inversion is of a batch of shape {tuple(inversion.inverted[-1].shape)}, "
                         f"but the image maps to {tuple(x_shape)}")


@torch.no_grad()
def remove_object(model, image: Tensor, mask: Tensor, *, ae=None, steps: int = 50, mask_until: int | None = None,
                  blend_until: int | None = None, mode: str = "keys", guidance: float = 7.5, dilate: int = 1,
                  proximal: float = 0.1, schedule: dict | None = None, inversion: Inversion | None = None,
                  return_details: bool = False, progress: bool | None = None):
    """Remove the object under ``mask`` from ``image`` with DesignEdit's key-masked inpainting.

    model: a denoiser ``model(x_t, t, cond) → ε̂`` (the course's ``zoo.load("scene_dit32")`` on pixels
    with ``ae=None``; or a latent model such as :func:`sdxl_parts`' UNet with its ``ae``).
    image: ``(B, 3, H, W)`` in [0, 1]; mask: ``(B, 1, H, W)`` or ``(B, H, W)``, 1 on the object.

    1. ``hole`` = the mask dilated by ``dilate`` image pixels, brought to the model's resolution;
    2. DDIM-invert the image and denoise a *source* copy back (:func:`invert_source`, or reuse
       ``inversion``);
    3. denoise a background copy from x_T. In steps ``1 ≤ i < mask_until`` (default 80 % of the
       steps: the official 40 of 50, step 0 skipped) every self-attention hides the hole's tokens
       (``mode``, :func:`key_masked_attention`) and the prediction is ``ε_u + guidance (ε_m − ε_u)``
       (:func:`masking_guidance`; the official 7.5). After each step ``i < blend_until`` (default 82 %:
       41 of 50) the latent outside the hole is replaced by the source's reconstruction
       (:func:`latent_blend`); in later steps with t < 400 it is pulled by ``proximal`` towards the
       inversion outside the hole (the official proximal guidance, 0.1; 0 switches it off; the
       source copy gets the same pull everywhere).

    Returns the background (B, 3, H, W) in [0, 1], or a :class:`Removal` with ``return_details``.
    """
    image = _images(image)
    mask = _mask4(mask, "mask", like=image)
    if mask.shape[0] == 1 and image.shape[0] > 1:
        mask = mask.expand(image.shape[0], -1, -1, -1)
    if not bool((mask > 0.5).flatten(1).any(1).all()):
        raise ValueError("mask is empty for some image: there is nothing to remove")
    steps = _int(steps, "steps", 1, 1000)
    mask_until = default_steps(steps, 0.8) if mask_until is None else _int(mask_until, "mask_until", 0, steps)
    blend_until = default_steps(steps, 0.82) if blend_until is None else _int(blend_until, "blend_until", 0, steps)
    mode = _mode(mode)
    guidance = _number(guidance, "guidance", 0.0, 100.0)
    dilate = _int(dilate, "dilate", 0)
    proximal = _number(proximal, "proximal", 0.0, 1.0)
    if inversion is None:
        inversion = invert_source(model, image, ae=ae, steps=steps, schedule=schedule, proximal=proximal,
                                  progress=progress)
    else:
        with torch.no_grad():
            shape = _to_space(image[:1], ae).shape
        _check_inversion(inversion, steps, (image.shape[0], *shape[1:]))
    plan = inversion.plan
    x = inversion.inverted[0].clone()
    hole = _space_mask(dilate_mask(mask, dilate), tuple(x.shape[-2:])).to(x.dtype)
    b = x.shape[0]
    state = KeyMask(mode=mode)
    latents = []
    with install_key_masking(model, state):
        for i in progress_bar(range(steps), desc="DesignEdit removal", enabled=progress):
            t = plan.timesteps[i]
            if 1 <= i < mask_until:
                if guidance == 1.0:
                    state.hide, state.enabled = hole, True
                    eps = _eps(model, x, t)
                else:
                    state.hide, state.enabled = torch.cat([torch.zeros_like(hole), hole]), True
                    eps_plain, eps_masked = _eps(model, torch.cat([x, x]), t).chunk(2)
                    eps = masking_guidance(eps_plain, eps_masked, guidance)
            else:
                state.enabled = False
                eps = _eps(model, x, t)
            x = ddim_step(x, eps, plan.abar[i], plan.abar_prev[i])
            if i < blend_until:
                x = latent_blend(x, inversion.source[i], hole)
            elif proximal > 0 and t < 400:
                x = x - proximal * (x - inversion.inverted[i + 1]) * (1 - hole)
            latents.append(x)
    out = _from_space(x, ae)
    if not return_details:
        return out
    settings = dict(steps=steps, mask_until=mask_until, blend_until=blend_until, mode=mode, guidance=guidance,
                    dilate=dilate, proximal=proximal)
    return Removal(image=out, latents=latents, hole=hole, inversion=inversion, settings=settings)


# ----------------------------------------------------------------------------- layer editing

def _centroid(mask: Tensor) -> Tensor:
    """(B, 2) centroid (cy, cx) in pixel coordinates of a (B, 1, H, W) mask (centre for an empty one)."""
    b, _, h, w = mask.shape
    ys = torch.arange(h, dtype=mask.dtype, device=mask.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=mask.dtype, device=mask.device).view(1, 1, w) + 0.5
    m = mask[:, 0]
    total = m.sum((1, 2))
    cy = torch.where(total > 0, (m * ys).sum((1, 2)) / total.clamp_min(1e-12), torch.full_like(total, h / 2))
    cx = torch.where(total > 0, (m * xs).sum((1, 2)) / total.clamp_min(1e-12), torch.full_like(total, w / 2))
    return torch.stack([cy, cx], 1)


def transform_layer(image: Tensor, mask: Tensor, *, scale: float = 1.0, flip: bool = False) -> tuple[Tensor, Tensor]:
    """An object resized and/or mirrored at image level, about its mask's centroid (the official
    ``resize_image_with_mask`` and ``flip_image_with_mask``, done before the layer is inverted).

    image: ``(B, 3, H, W)``; mask: ``(B, 1, H, W)``. The whole image is scaled by ``scale`` about the
    centroid (bilinear) and, with ``flip``, mirrored left–right about it; where the transformed image
    does not reach, the original stays. Returns the transformed ``(image, mask)``, the mask
    binarised at 0.5.
    """
    image = _images(image)
    mask = _mask4(mask, "mask", like=image)
    scale = _number(scale, "scale", 1e-3, 1e3)
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be a bool, got {type(flip).__name__}")
    if scale == 1.0 and not flip:
        return image.clone(), (mask > 0.5).to(image.dtype)
    b, _, h, w = image.shape
    c = _centroid(mask)
    ys = torch.arange(h, dtype=image.dtype, device=image.device).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=image.dtype, device=image.device).view(1, 1, w) + 0.5
    sy = c[:, 0, None, None] + (ys - c[:, 0, None, None]) / scale              # where each output pixel reads from
    dxs = (xs - c[:, 1, None, None]) / scale
    sx = c[:, 1, None, None] + (-dxs if flip else dxs)
    sy, sx = sy.expand(b, h, w), sx.expand(b, h, w)
    grid = torch.stack([sx / w * 2 - 1, sy / h * 2 - 1], -1)
    inside = ((sx > 0) & (sx < w) & (sy > 0) & (sy < h))[:, None].to(image.dtype)
    img = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return img * inside + image * (1 - inside), ((m * inside) > 0.5).to(image.dtype)


@dataclass
class Edit:
    """The result of :func:`edit_layer`: the edited ``image`` (B, 3, H, W) in [0, 1], the removal it
    started from, the layer's footprint in the result (``placed``, at image resolution) and the
    transformed layer image it pasted (``layer``)."""

    image: Tensor
    removal: Removal
    placed: Tensor
    layer: Tensor
    settings: dict


@torch.no_grad()
def edit_layer(model, image: Tensor, mask: Tensor, *, shift=(0, 0), scale: float = 1.0,
               flip: bool = False, ae=None, steps: int = 50, fuse_at: int | None = None,
               removal: Removal | None = None, schedule: dict | None = None, progress: bool | None = None,
               **removal_kwargs) -> Edit:
    """Move, resize or mirror the object under ``mask``: DesignEdit's layer decomposition and fusion.

    1. The background layer: :func:`remove_object` (or reuse ``removal``; keyword arguments go to it).
    2. The object layer: the image transformed at image level (:func:`transform_layer`: ``scale`` and
       ``flip`` about the object's centroid), DDIM-inverted and reconstructed on its own (a pure move
       reuses the source's inversion: the layer is the source image itself).
    3. After step ``fuse_at`` (default 82 % of the steps: the official step 41 of 50) the object
       layer's latent and its mask are shifted by ``shift = (dy, dx)`` image pixels (one pair, or one
       per image; brought to the model's grid) and pasted into the background's latent
       (:func:`paste_layer`); the remaining steps denoise the fused canvas without masking
       (harmonisation).
    """
    image = _images(image)
    mask = _mask4(mask, "mask", like=image)
    shifts = _shifts(shift, image.shape[0])
    steps = _int(steps, "steps", 1, 1000)
    if removal is None:
        removal = remove_object(model, image, mask, ae=ae, steps=steps, schedule=schedule, return_details=True,
                                progress=progress, **removal_kwargs)
    elif not isinstance(removal, Removal):
        raise TypeError(f"removal must be a Removal (remove_object(..., return_details=True)), got {type(removal).__name__}")
    elif removal_kwargs:
        raise ValueError(f"removal was given, so these removal settings would be ignored: {sorted(removal_kwargs)}")
    if len(removal.latents) != steps:
        raise ValueError(f"removal has {len(removal.latents)} steps but steps={steps}")
    fuse_at = min(default_steps(steps, 0.82), steps - 1) if fuse_at is None else _int(fuse_at, "fuse_at", 0, steps - 1)
    layer_image, layer_mask = transform_layer(image, mask, scale=scale, flip=flip)
    if scale == 1.0 and not flip:
        layer = removal.inversion
    else:
        layer = invert_source(model, layer_image, ae=ae, steps=steps, schedule=schedule,
                              proximal=removal.settings["proximal"], progress=progress)
    plan = layer.plan
    space = tuple(removal.latents[0].shape[-2:])
    f_y, f_x = image.shape[-2] / space[0], image.shape[-1] / space[1]
    lm = _space_mask(layer_mask, space).to(removal.latents[0].dtype)
    x, _ = _paste_each(removal.latents[fuse_at], layer.source[fuse_at], lm,
                       [(round(dy / f_y), round(dx / f_x)) for dy, dx in shifts])
    for i in range(fuse_at + 1, steps):
        x = ddim_step(x, _eps(model, x, plan.timesteps[i]), plan.abar[i], plan.abar_prev[i])
    placed = torch.cat([shift_image(layer_mask[i:i + 1], dy, dx) for i, (dy, dx) in enumerate(shifts)])
    return Edit(image=_from_space(x, ae), removal=removal, placed=placed, layer=layer_image,
                settings=dict(shift=shifts, scale=scale, flip=flip, fuse_at=fuse_at, steps=steps))


def _shifts(shift, b: int) -> list[tuple[int, int]]:
    """``shift``: one ``(dy, dx)`` for the batch or one pair per image → B pairs of ints."""
    def pair(p):
        try:
            dy, dx = p
        except (TypeError, ValueError):
            raise TypeError(f"shift must be a pair of ints (dy, dx) or one pair per image, got {shift!r}") from None
        return _int(dy, "shift"), _int(dx, "shift")

    if isinstance(shift, Tensor):
        shift = shift.tolist()
    if isinstance(shift, (str, bytes)) or not hasattr(shift, "__len__"):
        raise TypeError(f"shift must be a pair of ints (dy, dx) or one pair per image, got {shift!r}")
    shift = list(shift)
    if len(shift) == 2 and not isinstance(shift[0], (list, tuple)):
        return [pair(shift)] * b
    if len(shift) != b:
        raise ValueError(f"shift must be one (dy, dx) or {b} of them (one per image), got {len(shift)}")
    return [pair(p) for p in shift]


def _paste_each(canvas: Tensor, fg: Tensor, mask: Tensor, shifts: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """:func:`paste_layer` with one shift per image."""
    if len(set(shifts)) == 1:
        dy, dx = shifts[0]
        return paste_layer(canvas, fg, mask, dx, dy)
    parts = [paste_layer(canvas[i:i + 1], fg[i:i + 1], mask[i:i + 1], dx, dy) for i, (dy, dx) in enumerate(shifts)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def paste_baseline(background: Tensor, image: Tensor, mask: Tensor, *, shift=(0, 0), scale: float = 1.0,
                   flip: bool = False) -> Tensor:
    """Cut and paste in pixels, no diffusion: the transformed object (:func:`transform_layer`) shifted and
    pasted onto ``background`` (B, 3, H, W) in [0, 1]: a removal result, or the source itself.
    ``shift``: one ``(dy, dx)`` or one per image."""
    image = _images(image)
    background = _images(background, "background")
    if background.shape != image.shape:
        raise ValueError(f"background {tuple(background.shape)} and image {tuple(image.shape)} must have the same shape")
    layer_image, layer_mask = transform_layer(image, mask, scale=scale, flip=flip)
    return _paste_each(background, layer_image, layer_mask, _shifts(shift, image.shape[0]))[0]


def harmonic_fill(image: Tensor, hole: Tensor, iterations: int = 300) -> Tensor:
    """A classical, training-free inpainting baseline *(ours)*: fill the hole with the harmonic function
    that matches the image on the hole's border (each hole pixel becomes the mean of its four
    neighbours; ``iterations`` Jacobi sweeps from the mean colour around the hole). For smooth
    backgrounds this is the "predict from context" answer a diffusion model has to beat.

    image: ``(B, 3, H, W)`` in [0, 1]; hole: ``(B, 1, H, W)`` (> 0.5 = fill). Returns the filled image.
    """
    image = _images(image)
    hole = (_mask4(hole, "hole", like=image) > 0.5).to(image.dtype)
    iterations = _int(iterations, "iterations", 0)
    ring = dilate_mask(hole, 1) - hole
    fill = (image * ring).sum((2, 3), keepdim=True) / ring.sum((2, 3), keepdim=True).clamp_min(1)
    x = image * (1 - hole) + fill * hole
    for _ in range(iterations):
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        mean = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4
        x = image * (1 - hole) + mean * hole
    return x


# ----------------------------------------------------------------------------- metrics

def region_psnr(pred: Tensor, target: Tensor, region: Tensor | None = None) -> Tensor:
    """Per-image PSNR (dB; images in [0, 1]) over ``region`` ``(B, 1, H, W)`` (weights in [0, 1];
    None = everywhere): ``10 log10(1 / MSE)``, the MSE floored at 1e-6, so an exact match reads 60 dB
    (about what 8-bit rounding allows) rather than an arbitrary huge number that dominates averages.
    Returns ``(B,)``."""
    pred, target = _images(pred, "pred"), _images(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    w = torch.ones_like(pred[:, :1]) if region is None else _mask4(region, "region", like=pred).expand_as(pred[:, :1])
    if not bool((w.flatten(1).sum(1) > 0).all()):
        raise ValueError("region is empty for some image")
    err = ((pred.double() - target.double()).pow(2) * w.double()).sum((1, 2, 3)) / (3 * w.double().sum((1, 2, 3)))
    return (10 * torch.log10(1 / err.clamp_min(1e-6))).float()


def residue(result: Tensor, source: Tensor, background: Tensor, region: Tensor) -> Tensor:
    """How much of what was removed is still there, per image: ``Σ_region |result − background| /
    Σ_region |source − background|`` (0: the true background; 1: as much difference as the object
    itself made). ``region``: ``(B, 1, H, W)``, e.g. the object's mask or its shadow. Returns ``(B,)``."""
    result, source, background = _images(result, "result"), _images(source, "source"), _images(background, "background")
    if not result.shape == source.shape == background.shape:
        raise ValueError("result, source and background must have the same shape")
    w = _mask4(region, "region", like=result)
    made = ((source - background).abs() * w).sum((1, 2, 3))
    if not bool((made > 0).all()):
        raise ValueError("the source does not differ from the background inside region for some image")
    return ((result - background).abs() * w).sum((1, 2, 3)) / made


def removal_scores(result: Tensor, source: Tensor, background: Tensor, hole: Tensor, obj: Tensor) -> dict[str, Tensor]:
    """The chapter's three numbers for a removal, per image ``(B,)``: ``hole_psnr`` (inside the hole,
    against the true background), ``outside_psnr`` (outside the hole, against the source: what the edit
    should not touch) and ``residue`` (:func:`residue` over the object's mask ``obj``)."""
    hole = _mask4(hole, "hole", like=_images(result, "result"))
    return {"hole_psnr": region_psnr(result, background, hole), "outside_psnr": region_psnr(result, source, 1 - hole),
            "residue": residue(result, source, background, obj)}
