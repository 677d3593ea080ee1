"""DifFace: Blind Face Restoration with Diffused Error Contraction (Yue & Loy, TPAMI 2024,
arXiv:2212.06512).

A blind restoration method that needs no training of its own beyond two off-the-shelf parts: a
diffusion model of clean images (the *prior*) and any cheap restoration network ``f`` trained
with a plain L1 loss (the *diffused estimator*). It does not start the reverse diffusion from
pure noise, nor from the degraded image ``y₀``, but from the estimator's output diffused to an
intermediate step ``N``:

1. **Start** (:func:`difface_start`, paper eq. for x_N; official ``sampler.py:211-220``):
   ``x_N = √ᾱ_N · f(y₀) + √(1 − ᾱ_N) · ζ``, ζ ~ N(0, I), with ``f(y₀)`` clipped to the image
   range first, as the official sampler does.
2. **Reverse** (:func:`reverse_diffusion`): the pretrained model's DDIM sampler from ``N`` down to
   0, with the official settings: η = 0.5 for restoration, x̂₀ clipped to [−1, 1] at every step
   while ε̂ stays the raw prediction (:func:`ddim_step_clipped`), on a step grid that contains
   ``N`` (:func:`truncated_timesteps`). The official code respaces T = 1000 to 250 steps
   ("ddim250") and starts at index 100 (t = 400); its loop then starts one index lower than the
   one it diffused to, which we do not copy.
3. **Why it works: error contraction.** Write the estimator's error ``e = x₀ − f(y₀)``. The
   start ``x_N`` is distributed as ``N(√ᾱ_N x₀ − √ᾱ_N e, (1 − ᾱ_N) I)`` instead of the true
   ``q(x_N | x₀) = N(√ᾱ_N x₀, (1 − ᾱ_N) I)``: the error is scaled by √ᾱ_N < 1 and drowned in noise
   of variance 1 − ᾱ_N. The mismatch between the two, the KL divergence
   ``ᾱ_N ‖e‖² / (2 (1 − ᾱ_N))`` (our derivation, exact for these equal isotropic Gaussians;
   :func:`transition_mismatch`), shrinks as N grows, while the sample keeps less of ``f(y₀)``: the
   fidelity–realism trade-off the chapter sweeps.

Baselines of the chapter: the estimator alone (N = 0) and SDEdit (Meng et al. 2022), the same
loop started from the diffused degraded image ``y₀`` itself (:func:`restore` with ``estimate=y₀``).

Also here: the small restorer of the miniature (:class:`Restorer`, a residual CNN), its L1 loss
(:func:`restoration_l1`), and the measurements: PSNR (:func:`psnr`), the judge's verdicts and
features (:func:`judge`) and the Fréchet distance between feature sets (:func:`frechet_distance`).

Conventions: images ``(B, C, H, W)`` with values in [−1, 1] (the diffusion model's range); a
*denoiser* is ``model(x_t, t, cond) → ε̂``; timesteps are diffusers' (0 … T−1, ᾱ_t =
``alphas_cumprod[t]``), and the step after the last grid timestep goes to ᾱ = 1 (the clean image).
Choices that are ours and not the paper's are marked *(ours)*.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerwise.core.checks import float_tensor
from layerwise.core.env import progress_bar

__all__ = ["OFFICIAL", "RestorerConfig", "Restorer", "restoration_l1", "difface_start", "truncated_timesteps",
           "transition_mismatch", "estimator_error_sq", "ddim_step_clipped", "reverse_diffusion", "restore",
           "psnr", "judge", "frechet_distance", "nearest_feature_distance", "Trial", "run_trial", "sweep", "tabulate"]

#: The official sampler's settings for blind restoration (zsyOAOA/DifFace @ 5c9ab80,
#: ``inference_difface.py`` and ``configs/sample/iddpm_ffhq512_swinir.yaml``).
OFFICIAL = dict(num_train_timesteps=1000, respaced_steps=250, start_index=100, start_t=400, eta=0.5,
                clip_x0=True)


# ----------------------------------------------------------------------------- argument checks

def _int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an int in [{low}, {high if high is not None else '∞'}], got {value}")
    return value


def _images(x: Any, name: str) -> Tensor:
    float_tensor(x, name, 4, "(B, C, H, W)")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image, got shape {tuple(x.shape)}")
    return x


def _acp(alphas_cumprod: Any) -> Tensor:
    float_tensor(alphas_cumprod, "alphas_cumprod", 1, "(T,) of ᾱ_t")
    if alphas_cumprod.numel() < 2:
        raise ValueError(f"alphas_cumprod must hold at least 2 timesteps, got {alphas_cumprod.numel()}")
    if not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all():
        raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
    return alphas_cumprod


def _eta(eta: Any) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    return float(eta)


# ----------------------------------------------------------------------------- the estimator f

@dataclass
class RestorerConfig:
    """Sizes of the :class:`Restorer` *(ours: a small stand-in for DifFace's SwinIR)*."""

    channels: int = 3
    width: int = 32
    blocks: int = 3

    def __post_init__(self) -> None:
        for name in ("channels", "width", "blocks"):
            _int(getattr(self, name), name, 1)

    def to_dict(self) -> dict:
        return asdict(self)


class _ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate")
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, padding_mode="replicate")

    def forward(self, h: Tensor) -> Tensor:
        return h + self.conv2(F.silu(self.conv1(F.silu(h))))


class Restorer(nn.Module):
    """The diffused estimator ``f``: a residual CNN ``y₀ ↦ y₀ + g(y₀)``, images in [−1, 1]
    ``(B, C, H, W) → (B, C, H, W)``. Its last layer starts at zero, so an untrained restorer is
    the identity (it returns ``y₀``: SDEdit). *(ours; the paper uses SwinIR.)*"""

    def __init__(self, config: RestorerConfig | None = None, **overrides):
        super().__init__()
        cfg = config or RestorerConfig(**overrides)
        self.config = cfg
        self.inp = nn.Conv2d(cfg.channels, cfg.width, 3, padding=1, padding_mode="replicate")
        self.body = nn.Sequential(*[_ResBlock(cfg.width) for _ in range(cfg.blocks)])
        self.out = nn.Conv2d(cfg.width, cfg.channels, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: Tensor) -> Tensor:
        _images(y, "y")
        if y.shape[1] != self.config.channels:
            raise ValueError(f"y must have {self.config.channels} channels, got shape {tuple(y.shape)}")
        return y + self.out(F.silu(self.body(self.inp(y))))


def restoration_l1(restored: Tensor, clean: Tensor) -> Tensor:
    """The estimator's training loss, mean |f(y₀) − x₀| (the official ``loss_type: L1``)."""
    _images(restored, "restored")
    _images(clean, "clean")
    if restored.shape != clean.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and clean {tuple(clean.shape)} must have the same shape")
    return (restored - clean).abs().mean()


# ----------------------------------------------------------------------------- the start, the grid, the mismatch

def difface_start(y_restored: Tensor, t_n: int, alphas_cumprod: Tensor, noise: Tensor) -> Tensor:
    """The DifFace start: the estimate diffused to step ``t_n``,
    ``x_N = √ᾱ_N · clip(f(y₀), −1, 1) + √(1 − ᾱ_N) · noise`` with ``ᾱ_N = alphas_cumprod[t_n]``.

    y_restored: (B, C, H, W) floating, the estimator's output in [−1, 1] (clipped here, as the
    official sampler clamps ``im_hq`` before diffusing it); t_n: int in [0, T−1];
    alphas_cumprod: (T,); noise: ζ of y_restored's shape. Returns (B, C, H, W) with y_restored's dtype.
    """
    _images(y_restored, "y_restored")
    acp = _acp(alphas_cumprod)
    _int(t_n, "t_n", 0, acp.numel() - 1)
    float_tensor(noise, "noise", y_restored.dim(), "of y_restored's shape")
    if noise.shape != y_restored.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have y_restored's shape {tuple(y_restored.shape)}")
    abar = acp[t_n].to(y_restored.device, y_restored.dtype)
    return abar.sqrt() * y_restored.clamp(-1, 1) + (1 - abar).sqrt() * noise.to(y_restored.dtype)


def truncated_timesteps(n_steps: int, t_n: int, num_train_timesteps: int = 1000) -> Tensor:
    """The timesteps a DDIM sampler visits when it starts at ``t_n``, on the spacing of an
    ``n_steps``-step grid over T = ``num_train_timesteps``: ``t_n`` itself first, then evenly
    down to 0.

    With stride s = T / n_steps, the walk takes k = ⌈t_n / s⌉ = ⌈t_n · n_steps / T⌉ strides; the
    timesteps are ``⌊t_n · (k − i) / k⌋`` for i = 0 … k (k + 1 values, descending, distinct, ending
    at 0; ``t_n = 0`` gives ``[0]``), all in integer arithmetic. Each is one network call; the step
    after the last (t = 0) goes to the clean image. Unlike the official loop (which diffuses to
    respaced index N but denoises from index N − 1), the first call is at the very step the sample
    was diffused to. Returns a 1-D int64 tensor.
    """
    T = _int(num_train_timesteps, "num_train_timesteps", 1)
    n = _int(n_steps, "n_steps", 1, T)
    t = _int(t_n, "t_n", 0, T - 1)
    k = -(-t * n // T)                                   # ⌈t·n / T⌉
    if k == 0:
        return torch.zeros(1, dtype=torch.long)
    i = torch.arange(k + 1, dtype=torch.long)
    return torch.div(t * (k - i), k, rounding_mode="floor")


def transition_mismatch(err_sq: Tensor, abar_n: float | Tensor) -> Tensor:
    """KL[ N(√ᾱ_N f(y₀), (1−ᾱ_N) I) ‖ N(√ᾱ_N x₀, (1−ᾱ_N) I) ] = ᾱ_N · ‖e‖² / (2 (1 − ᾱ_N)), in nats.

    The mismatch between where DifFace starts and where the true forward process would be, for an
    estimator error e = x₀ − f(y₀) with ``err_sq = ‖e‖²`` (summed over the image's pixels).
    err_sq: floating tensor of any shape, e.g. (B,), entries ≥ 0; abar_n: a number or a tensor
    broadcastable to err_sq, in (0, 1). Returns a tensor of the broadcast shape and err_sq's dtype.
    *(our derivation, exact for equal isotropic covariances)*
    """
    if not isinstance(err_sq, Tensor):
        raise TypeError(f"err_sq must be a torch.Tensor of squared error norms, got {type(err_sq).__name__}")
    if not err_sq.is_floating_point():
        raise TypeError(f"err_sq must be a floating-point tensor, got dtype {err_sq.dtype}")
    if (err_sq < 0).any():
        raise ValueError("err_sq holds negative values: it must be squared norms ‖e‖² ≥ 0")
    if isinstance(abar_n, bool) or not isinstance(abar_n, (int, float, Tensor)):
        raise TypeError(f"abar_n must be a number or a tensor, got {type(abar_n).__name__}")
    a = torch.as_tensor(abar_n, dtype=err_sq.dtype, device=err_sq.device)
    if not ((a > 0) & (a < 1)).all():
        raise ValueError(f"abar_n must lie strictly between 0 and 1, got {abar_n}")
    return a * err_sq / (2 * (1 - a))


def estimator_error_sq(clean: Tensor, estimate: Tensor) -> Tensor:
    """‖e‖² = ‖x₀ − clip(estimate, −1, 1)‖² per image: (B, C, H, W) twice → (B,)."""
    _images(clean, "clean")
    _images(estimate, "estimate")
    if clean.shape != estimate.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and estimate {tuple(estimate.shape)} must have the same shape")
    return (clean - estimate.clamp(-1, 1)).pow(2).flatten(1).sum(1)


# ----------------------------------------------------------------------------- the reverse diffusion

def ddim_step_clipped(x_t: Tensor, eps: Tensor, abar_t: float | Tensor, abar_prev: float | Tensor, *,
                      eta: float = 0.5, noise: Tensor | None = None, clip_x0: bool = True) -> Tensor:
    """One DDIM update as the official sampler does it (``gaussian_diffusion.py:788-844``):
    x̂₀ = clip((x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, −1, 1), ε̂ the *raw* prediction,
    σ = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev),
    x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε̂ + σ z.   (Song et al. 2021, eq. 12.)

    ``noise`` (z) is needed when σ > 0. With ``clip_x0=False`` this is
    :func:`layerwise.diffusion.ddim_step`."""
    _images(x_t, "x_t")
    if not isinstance(eps, Tensor) or eps.shape != x_t.shape:
        raise ValueError(f"eps must be a tensor of x_t's shape {tuple(x_t.shape)}")
    eta = _eta(eta)
    a_t = torch.as_tensor(abar_t, dtype=x_t.dtype, device=x_t.device)
    a_p = torch.as_tensor(abar_prev, dtype=x_t.dtype, device=x_t.device)
    if not (0 < float(a_t) < 1) or not (0 < float(a_p) <= 1) or float(a_p) < float(a_t):
        raise ValueError(f"need 0 < abar_t < 1 and abar_t <= abar_prev <= 1, got {float(a_t)}, {float(a_p)}")
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    sigma = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    out = a_p.sqrt() * x0 + (1 - a_p - sigma ** 2).clamp_min(0).sqrt() * eps
    if float(sigma) > 0:
        if noise is None or noise.shape != x_t.shape:
            raise ValueError("eta > 0 needs noise (the z of the stochastic update) of x_t's shape")
        out = out + sigma * noise
    return out


@torch.no_grad()
def reverse_diffusion(model: Callable[..., Tensor], x_n: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, *,
                      eta: float = 0.5, generator: torch.Generator | None = None, cond: Tensor | None = None,
                      clip_x0: bool = True) -> Tensor:
    """Run the DDIM sampler from ``x_n`` (a sample at ``timesteps[0]``) through ``timesteps``
    (descending, ending at 0) to the clean image: one :func:`ddim_step_clipped` per timestep, the
    last one to ᾱ = 1. ``cond=None`` uses the model's null label (blind restoration). The fresh
    noise z of each step is drawn from ``generator`` on the CPU (same seed, same samples)."""
    _images(x_n, "x_n")
    acp = _acp(alphas_cumprod)
    if not isinstance(timesteps, Tensor) or timesteps.dim() != 1 or timesteps.numel() == 0:
        raise ValueError("timesteps must be a non-empty 1-D tensor (e.g. truncated_timesteps(...))")
    ts = [int(t) for t in timesteps]
    if ts[-1] != 0 or any(a <= b for a, b in zip(ts, ts[1:])) or ts[0] >= acp.numel():
        raise ValueError(f"timesteps must descend strictly to 0 within [0, {acp.numel() - 1}], got {ts}")
    eta = _eta(eta)
    x = x_n
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = model(x, tt, cond)
        a_prev = acp[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        z = torch.randn(x.shape, generator=generator).to(x.device, x.dtype) if eta > 0 and i + 1 < len(ts) else None
        x = ddim_step_clipped(x, eps, acp[t], a_prev, eta=eta, noise=z, clip_x0=clip_x0)
    return x


@torch.no_grad()
def restore(model: Callable[..., Tensor], estimate: Tensor, t_n: int, alphas_cumprod: Tensor, *, n_steps: int = 25,
            eta: float = 0.5, generator: torch.Generator | None = None, cond: Tensor | None = None,
            start_noise: Tensor | None = None, clip_x0: bool = True) -> Tensor:
    """Diffuse ``estimate`` to ``t_n`` (:func:`difface_start`) and run the prior's DDIM sampler back
    to 0 on the ``n_steps`` grid (:func:`truncated_timesteps`, :func:`reverse_diffusion`).

    ``estimate = f(y₀)`` is DifFace; ``estimate = y₀`` is SDEdit; ``t_n = 0`` returns the clipped
    estimate itself (no diffusion: the estimator alone). ``start_noise`` (ζ), if given, is used for
    the start instead of a draw from ``generator`` (common random numbers across methods).
    Returns (B, C, H, W) in [−1, 1].
    """
    _images(estimate, "estimate")
    acp = _acp(alphas_cumprod)
    _int(t_n, "t_n", 0, acp.numel() - 1)
    if t_n == 0:
        return estimate.clamp(-1, 1)
    if start_noise is None:
        start_noise = torch.randn(estimate.shape, generator=generator).to(estimate.device, estimate.dtype)
    x_n = difface_start(estimate, t_n, acp, start_noise)
    ts = truncated_timesteps(n_steps, t_n, acp.numel())
    return reverse_diffusion(model, x_n, ts, acp, eta=eta, generator=generator, cond=cond, clip_x0=clip_x0).clamp(-1, 1)


# ----------------------------------------------------------------------------- measurements

def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [−1, 1] (peak-to-peak 2, i.e. the PSNR of the same
    images in [0, 1]): ``10 log10(4 / MSE)``, MSE floored at 1e-10. (B, …) twice → (B,) float64."""
    _images(pred, "pred")
    _images(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def judge(classifier: nn.Sequential, x: Tensor, labels: Tensor | None = None, *, batch_size: int = 512
          ) -> dict[str, Tensor]:
    """What the judge (a ``Sequential(trunk, head)`` classifier, e.g. the zoo's
    ``sprite_classifier16``) says about images in [−1, 1]: ``pred`` (B,), ``confidence``
    (max-softmax, B), ``features`` (the trunk's output, the penultimate layer, (B, F)) and, if
    ``labels`` are given, ``correct`` (B,) floats 0/1."""
    if not isinstance(classifier, nn.Sequential) or len(classifier) < 2:
        raise TypeError("classifier must be an nn.Sequential (trunk, head), like the zoo's sprite_classifier16")
    _images(x, "x")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (x.shape[0],)):
        raise ValueError(f"labels must be a tensor of shape ({x.shape[0]},), got {getattr(labels, 'shape', labels)}")
    classifier.eval()
    trunk, head = classifier[:-1], classifier[-1]
    feats = torch.cat([trunk(x[i:i + batch_size].clamp(-1, 1)) for i in range(0, x.shape[0], batch_size)])
    prob = head(feats).softmax(1)
    out = {"pred": prob.argmax(1).cpu(), "confidence": prob.max(1).values.cpu(), "features": feats.cpu()}
    if labels is not None:
        out["correct"] = (out["pred"] == labels.cpu()).float()
    return out


def frechet_distance(feats: Tensor, reference: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (the "FID" formula on our
    judge's penultimate features): ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½).

    feats: (N₁, F), reference: (N₂, F), each with at least 2 rows. Computed in float64 with
    symmetric eigendecompositions (no complex square roots). Biased upwards for small N, so compare
    distances only between sets of equal size."""
    for v, name in ((feats, "feats"), (reference, "reference")):
        float_tensor(v, name, 2, "(N, F)")
        if v.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 rows, got {v.shape[0]}")
    if feats.shape[1] != reference.shape[1]:
        raise ValueError(f"feats has {feats.shape[1]} features but reference has {reference.shape[1]}")
    a, b = feats.double(), reference.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)

    def sqrt_psd(m: Tensor) -> Tensor:
        w, v = torch.linalg.eigh((m + m.T) / 2)
        return (v * w.clamp_min(0).sqrt()) @ v.T

    ra = sqrt_psd(cov_a)
    middle = torch.linalg.eigvalsh((ra @ cov_b @ ra + (ra @ cov_b @ ra).T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


# ----------------------------------------------------------------------------- the chapter's experiment

def nearest_feature_distance(feats: Tensor, reference: Tensor) -> Tensor:
    """Per-image realism *(ours)*: the Euclidean distance from each image's judge features to the
    nearest clean reference image's, (N, F) and (M, F) → (N,) float64. Lower is more realistic;
    unlike the Fréchet distance it is defined per image, so methods can be compared image by image."""
    for v, name in ((feats, "feats"), (reference, "reference")):
        float_tensor(v, name, 2, "(N, F)")
        if v.shape[0] < 1:
            raise ValueError(f"{name} needs at least 1 row")
    if feats.shape[1] != reference.shape[1]:
        raise ValueError(f"feats has {feats.shape[1]} features but reference has {reference.shape[1]}")
    return torch.cdist(feats.double(), reference.double()).min(1).values


@dataclass
class Trial:
    """One restoration run: per-image measurements of ``method`` started at ``t_n``.

    (B,) tensors: ``psnr`` (dB, to the clean image), ``correct`` (the judge names the true shape),
    ``confidence`` (max-softmax), ``realism`` (:func:`nearest_feature_distance`, lower is better),
    ``err_sq`` (‖e‖² of the estimate) and ``mismatch`` (the start's transition mismatch, nats; NaN
    for ``t_n = 0``, where nothing is diffused); ``features`` (B, F) of the judge; ``images`` the
    outputs. Index it with a slice or index tensor to keep a subset of images."""

    method: str
    t_n: int
    psnr: Tensor
    correct: Tensor
    confidence: Tensor
    realism: Tensor
    err_sq: Tensor
    mismatch: Tensor
    features: Tensor
    images: Tensor

    def __getitem__(self, index) -> "Trial":
        fields = ("psnr", "correct", "confidence", "realism", "err_sq", "mismatch", "features", "images")
        return Trial(self.method, self.t_n, **{k: getattr(self, k)[index] for k in fields})

    def __len__(self) -> int:
        return self.psnr.shape[0]

    def frechet(self, reference_features: Tensor) -> float:
        """The Fréchet distance of these outputs' features to ``reference_features`` (our "FID")."""
        return frechet_distance(self.features, reference_features)

    def summary(self, reference_features: Tensor | None = None) -> dict[str, Any]:
        """Means over the images (and the Fréchet distance, given the reference features)."""
        out = {"method": self.method, "t_n": self.t_n, "psnr": float(self.psnr.mean()),
               "accuracy": float(self.correct.mean()), "confidence": float(self.confidence.mean()),
               "realism": float(self.realism.mean()), "mismatch": float(self.mismatch.mean())}
        if reference_features is not None:
            out["frechet"] = self.frechet(reference_features)
        return out


def run_trial(model: Callable[..., Tensor], classifier: nn.Sequential, clean: Tensor, labels: Tensor,
              estimate: Tensor, t_n: int, alphas_cumprod: Tensor, reference_features: Tensor, *,
              method: str = "difface", n_steps: int = 25, eta: float = 0.5, seed: int = 0,
              batch_size: int = 256) -> Trial:
    """Restore every image of a test set from ``estimate`` (f(y₀) for DifFace, y₀ for SDEdit)
    started at ``t_n`` (:func:`restore`) and measure it against ``clean`` and ``labels`` with the
    judge ``classifier``; ``reference_features`` are the judge's features of other clean images.

    The start noise and the sampler's noise come from ``seed`` alone, so two methods run with the
    same seed (and the same images) share their random numbers image by image: paired comparisons."""
    _images(clean, "clean")
    if not isinstance(estimate, Tensor) or estimate.shape != clean.shape:
        raise ValueError(f"estimate must be a tensor of clean's shape {tuple(clean.shape)}, "
                         f"got {tuple(getattr(estimate, 'shape', ()))}")
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty name, got {method!r}")
    acp = _acp(alphas_cumprod)
    g = torch.Generator().manual_seed(_int(seed, "seed", 0))
    _int(batch_size, "batch_size", 1)
    noise = torch.randn(clean.shape, generator=g)
    out = []
    for i in range(0, clean.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        out.append(restore(model, estimate[sl], t_n, acp, n_steps=n_steps, eta=eta, generator=g,
                           start_noise=noise[sl].to(estimate.device, estimate.dtype)).cpu())
    images = torch.cat(out)
    verdict = judge(classifier, images.to(clean.device), labels)
    err_sq = estimator_error_sq(clean.cpu(), estimate.cpu())
    mismatch = (transition_mismatch(err_sq, float(acp[t_n])) if t_n > 0
                else torch.full_like(err_sq, float("nan")))      # no diffusion: no start to mismatch
    return Trial(method=method, t_n=t_n, psnr=psnr(images, clean.cpu()), correct=verdict["correct"],
                 confidence=verdict["confidence"], realism=nearest_feature_distance(verdict["features"], reference_features.cpu()),
                 err_sq=err_sq, mismatch=mismatch, features=verdict["features"], images=images)


def sweep(model: Callable[..., Tensor], classifier: nn.Sequential, clean: Tensor, labels: Tensor,
          estimates: dict[str, Tensor], starts: Sequence[int], alphas_cumprod: Tensor, reference_features: Tensor, *,
          n_steps: int = 25, eta: float = 0.5, seed: int = 0, progress: bool | None = None
          ) -> dict[tuple[str, int], Trial]:
    """:func:`run_trial` for every method (``estimates``: name → estimate, e.g. ``{"difface": f(y₀),
    "sdedit": y₀}``) and every start step in ``starts``: ``{(method, t_n): Trial}``. Start step
    ``t`` uses the seed ``seed + t`` for every method (common random numbers)."""
    if not isinstance(estimates, dict) or not estimates:
        raise ValueError("estimates must be a non-empty dict {method name: estimate (B, C, H, W)}")
    if isinstance(starts, (int, Tensor)) or not len(starts):
        raise ValueError(f"starts must be a non-empty sequence of start steps, got {starts!r}")
    jobs = [(name, int(t)) for name in estimates for t in starts]
    out = {}
    for name, t in progress_bar(jobs, desc="DifFace sweep", enabled=progress):
        out[(name, t)] = run_trial(model, classifier, clean, labels, estimates[name], t, alphas_cumprod,
                                   reference_features, method=name, n_steps=n_steps, eta=eta, seed=seed + t)
    return out


def tabulate(runs: dict[tuple[str, int], Trial], groups: dict[str, Any], reference_features: Tensor
             ) -> list[dict[str, Any]]:
    """One row per (group, method, start step) of a :func:`sweep`: ``groups`` maps a test-set name
    to the indices (a slice or index tensor) of its images in the sweep's batch. Each row holds
    the means of :meth:`Trial.summary`, the Fréchet distance of the group's outputs to
    ``reference_features`` and the median and quartiles of the per-image transition mismatch."""
    if not isinstance(groups, dict) or not groups:
        raise ValueError("groups must be a non-empty dict {test-set name: indices of its images}")
    rows = []
    for name, index in groups.items():
        for (method, t), trial in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            part = trial[index]
            row = {"set": name, **part.summary(reference_features)}
            q = torch.nanquantile(part.mismatch, torch.tensor([0.25, 0.5, 0.75], dtype=part.mismatch.dtype)) \
                if t > 0 else torch.full((3,), float("nan"))
            row.update(mismatch_q25=float(q[0]), mismatch_median=float(q[1]), mismatch_q75=float(q[2]))
            rows.append(row)
    return rows

