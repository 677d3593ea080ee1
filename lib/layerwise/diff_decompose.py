"""DiffDecompose: Layer-Wise Decomposition of Alpha-Composited Images via Diffusion Transformers
(Wang et al. 2025, arXiv:2505.21541).

Given one composite image ``z`` in which a semi-transparent layer was blended onto a background
(by alpha-over, screen, additive or multiplicative blending; no mask is given), recover both
layers: the RGBA foreground ``x`` and the background ``y``. The paper's code is not released;
the method details below come from the abstract and, for the rest, from secondary sources (two
auto-generated paper notes that agree), and are marked so.

- **In-Context Decomposition** (paper §3, details *secondary*): one diffusion transformer sees a
  single token sequence ``[z (clean) | x_t (noisy) | y_t (noisy)]`` plus the condition (the
  paper: a text prompt and the blend type; ours: the subtask label) and predicts the noise of
  the two noisy segments jointly (:class:`InContextDecomposer`, :func:`decomposition_loss`,
  :func:`decompose`).
- **Layer Position Encoding Cloning** (LPEC, *secondary*): the background and the composite get
  the *same* position codes, the foreground a different set, so that the background token at a
  pixel and the composite token at the same pixel are aligned exactly
  (:func:`in_context_positions` with ``scheme="cloned"``). Our alternatives, position ids only:
  ``"distinct"`` (one layer index per segment: what we take as "w/o LPEC"; the paper does not
  say which alternative it ablated) and ``"shared"`` (all three segments on one position grid).

Ours, not the paper's: pixel space (32×32, premultiplied RGBA foreground, opaque RGBA
background and composite, all in [-1, 1]) instead of FLUX latents of an RGBA VAE ("AlphaVAE");
the subtask as a class label instead of a T5 prompt; a small TinyDiT instead of FLUX + LoRA.
The data is AlphaBlend-mini (:mod:`layerwise.data.alphablend`). Scores: per-image RMSE on the
0-255 scale (:func:`per_image_rmse`, :func:`per_task_rmse`), as the paper reports RMSE.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from layerwise.core.train import fit_steps
from layerwise.data.alphablend import SUBTASKS, AlphaBlendSet
from layerwise.data.rgba import BLEND_MODES, blend as blend_one_mode, premultiplied_rgb, unpremultiply
from layerwise.diffusion.dit import DiTConfig, TinyDiT, patchify, unpatchify
from layerwise.diffusion.schedule import make_scheduler, q_sample, sample

__all__ = ["SCHEMES", "SEGMENTS", "LAYER_INDEX", "PREDICTIONS", "blend", "in_context_positions", "per_image_rmse", "per_task_rmse",
           "layer_state", "split_state", "DecomposerConfig", "InContextDecomposer", "decomposition_loss",
           "train_decomposer", "decompose", "evaluate_decomposition", "zoo_name"]

#: The position schemes: which layer index each segment's ids carry.
SCHEMES: tuple[str, ...] = ("distinct", "cloned", "shared")
#: The segments of the in-context sequence, in order.
SEGMENTS: tuple[str, ...] = ("composite", "foreground", "background")
#: What the network outputs: the clean layers ("x0", the default and the zoo's), the velocity
#: ``v = √ᾱ ε − √(1−ᾱ) x₀`` ("v", Salimans & Ho's parametrisation, a cousin of FLUX's flow velocity)
#: or the noise ("eps", the DDPM objective).
PREDICTIONS: tuple[str, ...] = ("v", "x0", "eps")
#: The layer index (first position axis) of (composite, foreground, background) under each scheme.
LAYER_INDEX: dict[str, tuple[int, int, int]] = {"distinct": (0, 1, 2), "cloned": (0, 1, 0), "shared": (0, 0, 0)}


def zoo_name(scheme: str) -> str:
    """The zoo model trained with position ``scheme``: ``diffdecompose_distinct`` etc."""
    _check_scheme(scheme)
    return f"diffdecompose_{scheme}"


# ----------------------------------------------------------------------------- argument checks

def _check_scheme(scheme: str) -> str:
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    return scheme


def _check_image(x: Tensor, name: str, channels: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got an empty batch")
    return x


def _check_task(task: Tensor, batch: int, name: str = "task", num_tasks: int | None = None) -> Tensor:
    if not isinstance(task, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of ints, got {type(task).__name__}")
    if task.is_floating_point() or task.is_complex() or task.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer subtask ids, got dtype {task.dtype}")
    if task.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), one id per image, got {tuple(task.shape)}")
    if batch and int(task.min()) < 0:
        raise ValueError(f"{name} must hold ids >= 0, got {int(task.min())}")
    if num_tasks is not None and batch and int(task.max()) >= num_tasks:
        raise ValueError(f"{name} must hold ids < num_tasks = {num_tasks}, got {int(task.max())}")
    return task


def _positive_int(value, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


# ----------------------------------------------------------------------------- blending and positions

def blend(fg_rgba: Tensor, bg: Tensor, mode: str | Sequence[str]) -> Tensor:
    """Composite ``fg_rgba: (B, 4, H, W)`` (straight alpha) onto ``bg: (B, 3, H, W)``: ``(B, 3, H, W)``.

    ``out = (1 - a) bg + a B(c, bg)`` with the separable blend ``B`` of each mode: ``c`` (over),
    ``1 - (1 - c)(1 - bg)`` (screen), ``min(c + bg, 1)`` (add), ``c bg`` (multiply); the result
    clipped to [0, 1]. ``mode`` is one name of :data:`~layerwise.data.rgba.BLEND_MODES` for the
    whole batch, or a sequence of B names, one per image (an AlphaBlend-mini batch mixes the
    subtasks' operators: ``data.modes``). The paper's subtasks each come with such an operator.
    """
    _check_image(fg_rgba, "fg_rgba", 4)
    _check_image(bg, "bg", 3)
    if fg_rgba.shape[0] != bg.shape[0] or fg_rgba.shape[-2:] != bg.shape[-2:]:
        raise ValueError(f"fg_rgba {tuple(fg_rgba.shape)} and bg {tuple(bg.shape)} must have the same batch and (H, W)")
    b = bg.shape[0]
    if isinstance(mode, str):
        modes = [mode] * b
    elif isinstance(mode, Sequence):
        modes = list(mode)
        if len(modes) != b:
            raise ValueError(f"mode must be one name or {b} names (one per image), got {len(modes)}")
    else:
        raise TypeError(f"mode must be a blend-mode name or a sequence of names, got {type(mode).__name__}")
    for m in modes:
        if not isinstance(m, str) or m not in BLEND_MODES:
            raise ValueError(f"unknown mode {m!r}; expected one of {BLEND_MODES}")
    out = torch.empty_like(bg)
    for m in dict.fromkeys(modes):
        idx = torch.tensor([i for i, mi in enumerate(modes) if mi == m], device=bg.device)
        out[idx] = blend_one_mode(fg_rgba[idx], bg[idx], m)
    return out


def in_context_positions(scheme: str, height: int, width: int) -> Tensor:
    """Position ids ``(3 · height · width, 3)`` (long) of the sequence [composite | foreground | background].

    Each segment is a ``height × width`` token grid in row-major order; a token's id is
    ``(layer, row, column)`` with the segment's layer index from :data:`LAYER_INDEX`:
    ``"distinct"`` (0, 1, 2), ``"cloned"`` (0, 1, 0: background and composite share every id,
    the paper's LPEC), ``"shared"`` (0, 0, 0). With rotary positions, tokens with equal ids get
    equal position codes.
    """
    _check_scheme(scheme)
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    grid = torch.stack([ys.flatten(), xs.flatten()], dim=1)
    parts = [torch.cat([torch.full((height * width, 1), k, dtype=torch.long), grid], dim=1)
             for k in LAYER_INDEX[scheme]]
    return torch.cat(parts, dim=0)


# ----------------------------------------------------------------------------- scores

def per_image_rmse(pred: Tensor, target: Tensor) -> Tensor:
    """Root-mean-square error of each image on the 0-255 scale: ``(B,)``, pred's dtype.

    pred, target: ``(B, ...)`` in [0, 1] (everything after the batch axis is one image).
    """
    for x, name in ((pred, "pred"), (target, "target")):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    return (255.0 * (pred - target.to(pred.dtype))).pow(2).flatten(1).mean(1).sqrt()


def per_task_rmse(pred: Tensor, target: Tensor, task_ids: Tensor, num_tasks: int | None = None) -> Tensor:
    """The mean per-image RMSE (0-255 scale, :func:`per_image_rmse`) of each subtask: ``(num_tasks,)``.

    task_ids: ``(B,)`` integer ids in ``[0, num_tasks)``; ``num_tasks`` defaults to
    ``max(task_ids) + 1``. A subtask without images gets NaN. Same dtype as ``pred``.
    """
    rmse = per_image_rmse(pred, target)
    if num_tasks is not None:
        num_tasks = _positive_int(num_tasks, "num_tasks")
    _check_task(task_ids, pred.shape[0], "task_ids", num_tasks)
    k = int(task_ids.max()) + 1 if num_tasks is None else num_tasks
    ids = task_ids.to(rmse.device).long()
    total = torch.zeros(k, dtype=rmse.dtype, device=rmse.device).index_add_(0, ids, rmse)
    count = torch.zeros(k, dtype=rmse.dtype, device=rmse.device).index_add_(0, ids, torch.ones_like(rmse))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


# ----------------------------------------------------------------------------- the diffused state

def layer_state(foreground: Tensor, background: Tensor) -> Tensor:
    """The two layers as the diffusion model's clean state ``(B, 8, H, W)`` in [-1, 1] *(ours)*:
    channels 0-3 the premultiplied foreground (colour times alpha, alpha), 4-7 the background as
    an opaque RGBA layer (alpha 1). Premultiplied colour is defined everywhere (0 where the
    layer is clear), unlike straight colour."""
    _check_image(foreground, "foreground", 4)
    _check_image(background, "background", 3)
    a = foreground[:, 3:4]
    fg = torch.cat([foreground[:, :3] * a, a], dim=1)
    bg = torch.cat([background, torch.ones_like(background[:, :1])], dim=1)
    return torch.cat([fg, bg], dim=1) * 2 - 1


def split_state(state: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`layer_state`: ``(foreground (B, 4, H, W) straight alpha, background (B, 3, H, W))``,
    clipped to [0, 1]."""
    _check_image(state, "state", 8)
    v = ((state + 1) / 2).clamp(0.0, 1.0)
    return unpremultiply(v[:, :4], eps=1e-3), v[:, 4:7]


# ----------------------------------------------------------------------------- the model

@dataclass
class DecomposerConfig:
    """Sizes of an :class:`InContextDecomposer`; ``scheme`` picks its position ids."""

    scheme: str = "cloned"
    image_size: int = 32
    patch: int = 4
    dim: int = 48
    depth: int = 4
    heads: int = 2
    mlp_ratio: float = 4.0
    num_tasks: int = len(SUBTASKS)
    prediction: str = "x0"

    def __post_init__(self) -> None:
        _check_scheme(self.scheme)
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; expected one of {PREDICTIONS}")

    def to_dict(self) -> dict:
        return asdict(self)


class InContextDecomposer(nn.Module):
    """In-context decomposition with a :class:`~layerwise.diffusion.dit.TinyDiT` (3-axis RoPE).

    ``model(state_t, t, composite, task) → (B, 8, H, W)``: the sequence is the patch tokens of
    [composite as opaque RGBA (clean) | foreground of ``state_t`` (noisy) | background of
    ``state_t`` (noisy)], 3 · (H/p) · (W/p) tokens with the ids of :func:`in_context_positions`;
    the subtask id is the DiT's class label (None: the null label). The outputs of the two noisy
    segments are the network's prediction of the clean state (``prediction="x0"``), the velocity
    (``"v"``) or the noise (``"eps"``); :meth:`predict` turns any of them into ``(x̂₀, ε̂)``.
    """

    def __init__(self, config: DecomposerConfig | None = None, **overrides):
        super().__init__()
        cfg = config or DecomposerConfig(**overrides)
        self.config = cfg
        self.dit = TinyDiT(DiTConfig(in_channels=4, image_size=cfg.image_size, patch=cfg.patch, dim=cfg.dim,
                                     depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, pos_axes=3,
                                     num_classes=cfg.num_tasks))
        g = cfg.image_size // cfg.patch
        self.register_buffer("pos_ids", in_context_positions(cfg.scheme, g, g), persistent=False)

    def tokens(self, state_t: Tensor, composite: Tensor) -> Tensor:
        """The in-context sequence ``(B, 3N, 4·p·p)``: [composite | foreground | background] patches."""
        p = self.config.patch
        z = torch.cat([composite * 2 - 1, torch.ones_like(composite[:, :1])], dim=1)
        return torch.cat([patchify(z, p), patchify(state_t[:, :4], p), patchify(state_t[:, 4:], p)], dim=1)

    def forward(self, state_t: Tensor, t: Tensor, composite: Tensor, task: Tensor | None = None) -> Tensor:
        _check_image(state_t, "state_t", 8)
        _check_image(composite, "composite", 3)
        b, _, h, w = state_t.shape
        s, p = self.config.image_size, self.config.patch
        if (h, w) != (s, s) or composite.shape != (b, 3, h, w):
            raise ValueError(f"state_t must be (B, 8, {s}, {s}) and composite (B, 3, {s}, {s}) with the same B, "
                             f"got {tuple(state_t.shape)} and {tuple(composite.shape)}")
        if task is not None:
            _check_task(task, b, "task", self.config.num_tasks)
        tokens = self.tokens(state_t, composite)
        n = tokens.shape[1] // 3
        out = self.dit.forward_tokens(tokens, t, task, pos_ids=self.pos_ids)
        fg = unpatchify(out[:, n:2 * n], p, 4, h, w)
        bg = unpatchify(out[:, 2 * n:], p, 4, h, w)
        return torch.cat([fg, bg], dim=1)

    def predict(self, state_t: Tensor, t: Tensor, composite: Tensor, task: Tensor | None,
                alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
        """``(x̂₀, ε̂)``, each ``(B, 8, H, W)``, from the network's output and
        ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε``."""
        out = self(state_t, t, composite, task)
        a = alphas_cumprod.to(state_t.device, state_t.dtype)[t.to(state_t.device).long()].view(-1, 1, 1, 1)
        if self.config.prediction == "v":
            return a.sqrt() * state_t - (1 - a).sqrt() * out, (1 - a).sqrt() * state_t + a.sqrt() * out
        if self.config.prediction == "x0":
            return out, (state_t - a.sqrt() * out) / (1 - a).sqrt()
        return (state_t - (1 - a).sqrt() * out) / a.sqrt(), out


def decomposition_loss(model: InContextDecomposer, batch: AlphaBlendSet, alphas_cumprod: Tensor, *,
                       generator: torch.Generator, cond_drop: float = 0.0, t: Tensor | None = None) -> Tensor:
    """The denoising loss of in-context decomposition. One timestep per sample for both noisy
    segments, ``s_t = √ᾱ_t s₀ + √(1−ᾱ_t) ε`` with the clean state ``s₀ = layer_state(x, y)``;
    the loss is the mean squared error of the network's prediction over the 8 channels: of ``s₀``
    (``prediction="x0"``, the default), of the velocity ``v = √ᾱ_t ε − √(1−ᾱ_t) s₀`` (``"v"``) or
    of ``ε`` (``"eps"``, the DDPM objective). The clean composite segment has no loss. With
    ``cond_drop`` a batch is given the null label (0 by default). ``t`` ``(B,)`` fixes the
    timesteps (default: uniform on {0, …, T−1})."""
    if not isinstance(batch, AlphaBlendSet):
        raise TypeError(f"batch must be an AlphaBlendSet, got {type(batch).__name__}")
    device = next(model.parameters()).device
    x0 = layer_state(batch.foreground, batch.background).to(device)
    b = x0.shape[0]
    if t is None:
        t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator)
    elif not isinstance(t, Tensor) or t.shape != (b,) or t.is_floating_point():
        raise ValueError(f"t must be an integer tensor of shape ({b},), got {getattr(t, 'shape', t)}")
    t = t.to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    task = batch.task.to(device)
    if cond_drop > 0 and float(torch.rand((), generator=generator)) < cond_drop:
        task = None
    acp = alphas_cumprod.to(device)
    out = model(q_sample(x0, t, noise, acp), t, batch.composite.to(device), task)
    if model.config.prediction == "v":
        a = acp[t].view(-1, 1, 1, 1)
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
    else:
        target = x0 if model.config.prediction == "x0" else noise
    return (out - target).pow(2).mean()


def train_decomposer(model: InContextDecomposer, data: AlphaBlendSet, *, steps: int, generator: torch.Generator,
                     batch_size: int = 32, lr: float = 1e-3, warmup: int = 50, ema: float | None = 0.995,
                     cond_drop: float = 0.0, progress: bool | None = None):
    """Train ``model`` on ``data`` with :func:`decomposition_loss` (AdamW, warm-up, cosine decay,
    clipping at 1, EMA) through :func:`~layerwise.core.train.fit_steps`. Returns its History."""
    if not isinstance(model, InContextDecomposer):
        raise TypeError(f"model must be an InContextDecomposer, got {type(model).__name__}")
    if not isinstance(data, AlphaBlendSet):
        raise TypeError(f"data must be an AlphaBlendSet, got {type(data).__name__}")
    acp = make_scheduler("ddpm").alphas_cumprod

    def loss_fn(step: int) -> Tensor:
        idx = torch.randint(0, len(data), (batch_size,), generator=generator)
        return decomposition_loss(model, data[idx], acp, generator=generator, cond_drop=cond_drop)

    return fit_steps(model, loss_fn, steps, lr=lr, warmup=warmup, cosine=True, clip=1.0, ema=ema,
                     progress=progress, desc=f"decomposer ({model.config.scheme})")


@torch.no_grad()
def decompose(model: InContextDecomposer, composite: Tensor, task: Tensor | None, *, steps: int = 25,
              generator: torch.Generator | None = None, batch_size: int = 256,
              progress: bool | None = False) -> tuple[Tensor, Tensor]:
    """Sample a decomposition of each composite with DDIM (η = 0, ``steps`` steps):
    ``(foreground (B, 4, H, W) straight alpha, background (B, 3, H, W))`` in [0, 1].

    Both layers start from Gaussian noise drawn with ``generator`` (the same generator state
    gives the same start, so two models can be compared on the same noise) and are denoised
    jointly, the composite held fixed in its segment.
    """
    if not isinstance(model, InContextDecomposer):
        raise TypeError(f"model must be an InContextDecomposer, got {type(model).__name__}")
    _check_image(composite, "composite", 3)
    if task is not None:
        _check_task(task, composite.shape[0], "task", model.config.num_tasks)
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    b, _, h, w = composite.shape
    acp = make_scheduler("ddim").alphas_cumprod
    x_T = torch.randn((b, 8, h, w), generator=generator)
    fgs, bgs = [], []
    for i in range(0, b, batch_size):
        z = composite[i:i + batch_size].to(device)
        k = None if task is None else task[i:i + batch_size].to(device)

        def denoiser(x, t, cond, z=z, k=k):
            return model.predict(x, t, z, k, acp)[1]

        out = sample(denoiser, tuple(x_T[i:i + batch_size].shape), steps=steps, x_T=x_T[i:i + batch_size],
                     device=device, progress=progress)
        fg, bg = split_state(out.cpu())
        fgs.append(fg)
        bgs.append(bg)
    return torch.cat(fgs), torch.cat(bgs)


def evaluate_decomposition(model: InContextDecomposer, data: AlphaBlendSet, *, steps: int = 25, seed: int = 0,
                           use_task: bool = True, progress: bool | None = False) -> dict[str, Tensor]:
    """Decompose every composite of ``data`` (noise seeded by ``seed``) and score it.

    Returns per-image ``(N,)`` tensors, RMSE on the 0-255 scale: ``bg`` (background), ``fg``
    (premultiplied foreground, i.e. the layer over black), ``recomposite`` (the predicted layers
    blended again with each subtask's mode, against the composite), and the trivial baselines
    ``bg_trivial`` (background = composite) and ``fg_trivial`` (an empty foreground, all 0); plus
    the predictions ``pred_fg`` and ``pred_bg``.
    """
    if not isinstance(data, AlphaBlendSet):
        raise TypeError(f"data must be an AlphaBlendSet, got {type(data).__name__}")
    gen = torch.Generator().manual_seed(int(seed))
    fg, bg = decompose(model, data.composite, data.task if use_task else None, steps=steps, generator=gen,
                       progress=progress)
    true_fg = premultiplied_rgb(data.foreground)
    return {
        "bg": per_image_rmse(bg, data.background),
        "fg": per_image_rmse(premultiplied_rgb(fg), true_fg),
        "recomposite": per_image_rmse(blend(fg, bg, data.modes), data.composite),
        "bg_trivial": per_image_rmse(data.composite, data.background),
        "fg_trivial": per_image_rmse(torch.zeros_like(true_fg), true_fg),
        "pred_fg": fg, "pred_bg": bg,
    }
