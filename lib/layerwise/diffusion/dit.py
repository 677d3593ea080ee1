"""A tiny Diffusion Transformer (DiT, Peebles & Xie 2023) for 16×16 / 32×32 inputs.

What the later chapters need from it, and nothing else:

- **adaLN-Zero blocks** (DiT §3.2): every block is modulated by the timestep (+ condition)
  embedding through shift / scale / gate vectors whose projection starts at zero, so each
  block starts as the identity and the network as a whole starts by predicting zero.
- **Explicit position ids** with any number of axes (2: ``(y, x)``; 3: ``(layer, y, x)``),
  encoded by axial rotary embeddings (RoPE, Su et al. 2021) on queries and keys. Tokens that
  share an id share a position code exactly — DiffDecompose's position cloning relies on it.
- **An attention mask** (boolean "may attend" or additive float), passed straight to
  :func:`torch.nn.functional.scaled_dot_product_attention`, and a swappable attention
  ``processor`` for chapters that change attention itself (DesignEdit's key masking).
- **A token interface**, :meth:`TinyDiT.forward_tokens`, so a chapter can build its own
  sequence (crops of several layers for ART, an in-context sequence for DiffDecompose).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiTConfig", "TinyDiT", "Attention", "grid_position_ids", "rope_angles", "apply_rope",
           "timestep_embedding", "patchify", "unpatchify"]


@dataclass
class DiTConfig:
    """Sizes of a :class:`TinyDiT`. ``cond_dim`` > 0 adds a vector condition (B, cond_dim);
    ``num_classes`` > 0 adds a label condition with one extra "null" label (index
    ``num_classes``) for classifier-free guidance."""

    in_channels: int = 3
    image_size: int = 16
    patch: int = 2
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    pos_axes: int = 2
    rope_base: float = 100.0
    cond_dim: int = 0
    num_classes: int = 0
    out_channels: int | None = None

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch={self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not a multiple of heads={self.heads}")
        head_dim = self.dim // self.heads
        if self.pos_axes < 1 or head_dim % (2 * self.pos_axes):
            raise ValueError(f"head dim {head_dim} must split into pos_axes={self.pos_axes} even parts")

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps. t: (B,) → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) → (B, H/p · W/p, C·p·p), tokens in row-major order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: Tensor, patch: int, channels: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, C·p·p) → (B, C, H, W)."""
    b = tokens.shape[0]
    gh, gw = height // patch, width // patch
    x = tokens.reshape(b, gh, gw, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)


def grid_position_ids(height: int, width: int, *, axes: int = 2, layer: int = 0,
                      device: torch.device | str | None = None) -> Tensor:
    """Row-major position ids of an ``height × width`` token grid: (N, axes).

    ``axes=2`` gives ``(y, x)``; ``axes=3`` gives ``(layer, y, x)`` with the given layer index.
    """
    if axes not in (2, 3):
        raise ValueError(f"axes must be 2 or 3, got {axes}")
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    ids = torch.stack([ys.flatten(), xs.flatten()], dim=-1)
    if axes == 3:
        ids = torch.cat([torch.full_like(ids[:, :1], layer), ids], dim=-1)
    return ids


def rope_angles(pos_ids: Tensor, head_dim: int, base: float = 100.0) -> Tensor:
    """Axial rotary angles. pos_ids: (..., N, A) → (..., N, head_dim/2).

    The head dimension is split into A equal parts, one per axis; part a rotates by
    ``pos[a] · base^(-2i/d_a)``. Equal ids give equal angles, whatever the token order.
    """
    axes = pos_ids.shape[-1]
    part = head_dim // axes
    freqs = base ** (-torch.arange(0, part, 2, device=pos_ids.device, dtype=torch.float32) / part)
    angles = [pos_ids[..., a, None].float() * freqs for a in range(axes)]
    return torch.cat(angles, dim=-1)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate pairs of channels of x: (B, H, N, D) by angles: (B or 1, N, D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = torch.cos(angles)[:, None], torch.sin(angles)[:, None]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


Processor = Callable[["Attention", Tensor, Tensor, "Tensor | None"], Tensor]


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions and an optional mask.

    ``mask``: boolean (True = may attend) or additive float, broadcastable to
    (B, heads, N, N). Set ``processor`` to a callable ``(module, x, angles, mask) → out`` to
    change how attention is computed (it may use ``module.qkv``, ``module.proj`` and
    :meth:`attend`).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.processor: Processor | None = None

    def split(self, x: Tensor, angles: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """x: (B, N, dim) → q, k, v: (B, heads, N, head_dim), rotary applied to q and k."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        return q, k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Scaled dot-product attention, heads merged and projected: → (B, N, dim)."""
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).flatten(2))

    def forward(self, x: Tensor, angles: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if self.processor is not None:
            return self.processor(self, x, angles, mask)
        return self.attend(*self.split(x, angles), mask)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Attention + MLP, each pre-normed and modulated by adaLN-Zero (shift, scale, gate)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, angles: Tensor | None, mask: Tensor | None) -> Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(_modulate(self.norm1(x), s1, sc1), angles, mask)
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, sc2))


class TinyDiT(nn.Module):
    """ε-prediction transformer over patches: ``model(x, t, cond) → ε̂`` with x: (B, C, H, W).

    Use :meth:`forward_tokens` to run it on a sequence you built yourself.
    """

    def __init__(self, config: DiTConfig | None = None, **overrides):
        super().__init__()
        cfg = config or DiTConfig(**overrides)
        self.config = cfg
        p, c = cfg.patch, cfg.in_channels
        self.out_channels = cfg.out_channels or c
        self.embed = nn.Linear(c * p * p, cfg.dim)
        self.t_mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.cond_proj = nn.Linear(cfg.cond_dim, cfg.dim) if cfg.cond_dim else None
        self.label_embed = nn.Embedding(cfg.num_classes + 1, cfg.dim) if cfg.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))
        self.out = nn.Linear(cfg.dim, self.out_channels * p * p)
        for layer in (self.ada_out[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def head_dim(self) -> int:
        return self.config.dim // self.config.heads

    def conditioning(self, t: Tensor, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Timestep (+ condition) embedding c: (B, dim) that drives every adaLN."""
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        c = self.t_mlp(timestep_embedding(t, self.config.dim))
        if cond is not None:
            if self.label_embed is not None:
                c = c + self.label_embed(cond.long())
            elif self.cond_proj is not None:
                c = c + self.cond_proj(cond.float())
            else:
                raise ValueError("cond was given but the model has neither cond_dim nor num_classes")
        elif self.label_embed is not None:
            c = c + self.label_embed.weight[-1]
        return c

    def forward_tokens(self, tokens: Tensor, t: Tensor, cond: Tensor | None = None, *,
                       pos_ids: Tensor, mask: Tensor | None = None, return_hidden: bool = False,
                       embed_add: Tensor | None = None):
        """tokens: (B, N, C·p·p) patches; pos_ids: (N, A) or (B, N, A) → ε̂ tokens (B, N, C_out·p·p).

        ``embed_add`` (N, dim) or (B, N, dim), if given, is added to the embedded tokens before the
        first block: a learned per-token embedding of the caller's (a layer or segment-type
        embedding, as ART's layer embedding or LayerDecomp's type embedding). With
        ``return_hidden=True`` also returns the list of each block's output (B, N, dim).
        """
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be (B, N, C*p*p), got shape {tuple(tokens.shape)}")
        if pos_ids.shape[-1] != self.config.pos_axes or pos_ids.shape[-2] != tokens.shape[1]:
            raise ValueError(f"pos_ids must be (N={tokens.shape[1]}, {self.config.pos_axes}) or batched, "
                             f"got {tuple(pos_ids.shape)}")
        if embed_add is not None and (embed_add.dim() not in (2, 3) or embed_add.shape[-2:] != (tokens.shape[1], self.config.dim)):
            raise ValueError(f"embed_add must be (N={tokens.shape[1]}, dim={self.config.dim}) or batched, "
                             f"got {tuple(embed_add.shape)}")
        b = tokens.shape[0]
        c = self.conditioning(t, cond, b, tokens.device)
        angles = rope_angles(pos_ids.to(tokens.device), self.head_dim, self.config.rope_base)
        if angles.dim() == 2:
            angles = angles[None]
        x = self.embed(tokens)
        if embed_add is not None:
            x = x + embed_add.to(x.dtype)
        hidden = []
        for block in self.blocks:
            x = block(x, c, angles, mask)
            hidden.append(x)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        out = self.out(_modulate(self.norm_out(x), shift, scale))
        return (out, hidden) if return_hidden else out

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, *,
                mask: Tensor | None = None, pos_ids: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), t: (B,) or scalar → ε̂: (B, C_out, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x must be (B, {self.config.in_channels}, H, W), got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        p = self.config.patch
        if h % p or w % p:
            raise ValueError(f"x's height and width must be multiples of patch={p}, got {h}×{w}")
        if pos_ids is None:
            pos_ids = grid_position_ids(h // p, w // p, axes=self.config.pos_axes, device=x.device)
        out = self.forward_tokens(patchify(x, p), t, cond, pos_ids=pos_ids, mask=mask)
        return unpatchify(out, p, self.out_channels, h, w)
