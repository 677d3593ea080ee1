"""Transparent Image Layer Diffusion using Latent Transparency (Zhang & Agrawala 2024,
arXiv:2402.17113, "LayerDiffuse").

A pretrained latent diffusion model only knows RGB latents ``x = E*(I)`` of its frozen VAE
(``E*``, ``D*``). LayerDiffuse teaches it transparency without moving its latent space much:

1. **Latent transparency** (paper §3.1). An encoder ``E`` reads the transparent image (its
   alpha and its colour, padded into the transparent area, :func:`pad_rgb`) and outputs a
   *latent offset* ``x_ε``; the **adjusted latent** is ``x_a = E*(I) + x_ε``
   (:func:`adjusted_latent`), where ``I`` is the premultiplied RGB image (our reading). The last layer of
   ``E`` starts at zero (:class:`OffsetEncoder`), so training starts from ``x_a = x``.
2. **Transparent decoder** ``D(D*(x_a), x_a) → (colour, α)`` (:class:`TransparentDecoder`):
   it sees what the frozen decoder makes of the adjusted latent plus the latent itself,
   injected through a zero-initialised 1×1 convolution at the latent's resolution.
3. **Losses**: reconstruction of colour and alpha (:func:`reconstruction_loss`) and
   "harmlessness", the frozen decoder's output on the adjusted latent must still look like
   the original image (:func:`harmlessness_loss`; the paper's identity loss). Their weighted
   sum trains ``E`` and ``D`` (:func:`train_latent_transparency`). The paper also adds a small
   PatchGAN term, left out here.
4. The pretrained latent model is then fine-tuned on adjusted latents; its samples decode
   to RGBA through ``D`` (:func:`decode_rgba`).

Conventions: RGBA tensors are ``(B, 4, H, W)`` with **straight** alpha, values in [0, 1];
latents are the frozen autoencoder's ``(B, 4, H/4, W/4)``. Choices that are ours and not
the paper's are marked *(ours)* in the docstrings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerwise.data.rgba import premultiplied_rgb
from layerwise.diffusion.autoencoder import ResBlock   # the autoencoder's residual block (GroupNorm, SiLU, conv) ×2

__all__ = ["pad_rgb", "encoder_input", "OffsetEncoder", "TransparentDecoder", "LTConfig", "LatentTransparency",
           "premultiplied_rgb", "adjusted_latent", "HARMLESSNESS_SWEEP", "lt_zoo_name", "decode_rgba", "harmlessness_loss", "reconstruction_loss",
           "psnr", "alpha_psnr", "alpha_iou", "identity_psnr", "core_opacity", "train_latent_transparency",
           "evaluate_latent_transparency", "PAD_ITERATIONS"]

#: How many colour-bleeding steps :func:`encoder_input` runs: the colour spreads 8 pixels beyond the layer,
#: farther than the offset encoder looks from any visible pixel that matters.
PAD_ITERATIONS = 8


# ----------------------------------------------------------------------------- argument checks

def _check_rgba(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 4:
        raise ValueError(f"{name} must be an RGBA batch (B, 4, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    for x, name in ((a, name_a), (b, name_b)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")


# ----------------------------------------------------------------------------- colour padding

def pad_rgb(rgba: Tensor, iterations: int) -> Tensor:
    """Colour bleeding: fill the colour of transparent pixels from their visible neighbours.

    The offset encoder reads straight colour, which is meaningless where alpha is 0 (PNG files
    store anything there). The paper feeds it "padded" RGB instead; its code fills the
    transparent area from a pyramid of alpha-weighted averages. Ours is a simpler, local
    version *(ours)*:

    - a pixel is *known* when its alpha is > 0; known pixels keep their colour exactly;
    - each of ``iterations`` steps gives every still-unknown pixel that has at least one known
      pixel among its 3×3 neighbours the mean colour of those known neighbours (neighbours
      outside the image do not count), and marks it known;
    - pixels that no step reaches (too far, or an image without any visible pixel) are 0.

    rgba: ``(B, 4, H, W)`` floating, straight alpha; iterations: int ≥ 0.
    Returns the padded colour ``(B, 3, H, W)`` with rgba's dtype. Deterministic.
    """
    _check_rgba(rgba, "rgba")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    known = (rgba[:, 3:4] > 0).to(rgba.dtype)                       # (B, 1, H, W), 1 = colour defined
    colour = torch.where(known > 0, rgba[:, :3], torch.zeros_like(rgba[:, :3]))   # whatever was stored there
    box = torch.ones(4, 1, 3, 3, dtype=rgba.dtype, device=rgba.device)
    for _ in range(iterations):
        # 3×3 sums of the known colours and of the known flags, zero outside the image
        sums = F.conv2d(torch.cat([colour, known], dim=1), box, padding=1, groups=4)
        total, count = sums[:, :3], sums[:, 3:]
        grow = (known == 0) & (count > 0)
        colour = torch.where(grow, total / count.clamp_min(1), colour)
        known = torch.where(grow, torch.ones_like(known), known)
    return colour


def encoder_input(rgba: Tensor, iterations: int = PAD_ITERATIONS) -> Tensor:
    """What the offset encoder reads: ``cat(alpha, padded colour)``: ``(B, 4, H, W)`` (the
    official code's channel order: alpha first)."""
    return torch.cat([rgba[:, 3:4], pad_rgb(rgba, iterations)], dim=1)


#: The chapter's sweep of the harmlessness weight: the zoo trains one latent-transparency pair per
#: weight, named by :func:`lt_zoo_name`.
HARMLESSNESS_SWEEP = (0.0, 0.1, 1.0)


def lt_zoo_name(weight: float) -> str:
    """The zoo name of the pair trained with harmlessness ``weight``: ``latent_transparency_h0``,
    ``_h0.1``, ``_h1`` for 0, 0.1, 1."""
    return f"latent_transparency_h{weight:g}"


# ----------------------------------------------------------------------------- the two networks

def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class OffsetEncoder(nn.Module):
    """The latent transparency encoder ``E``: ``(B, 4, H, W)`` = cat(alpha, padded colour) →
    offset ``(B, latent_channels, H/4, W/4)``.

    A small stack of 3×3 convolutions with two stride-2 steps (the official encoder has three,
    for SD's 8× VAE). Its last layer is zero-initialised, so an untrained encoder outputs
    exactly 0 and training starts from the unchanged latent.
    """

    def __init__(self, width: int = 16, latent_channels: int = 4):
        super().__init__()
        w = width
        self.blocks = nn.Sequential(
            nn.Conv2d(4, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.SiLU(),
            _zero(nn.Conv2d(4 * w, latent_channels, 3, padding=1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 4:
            raise ValueError(f"x must be cat(alpha, padded rgb): (B, 4, H, W), got shape {tuple(x.shape)}")
        return self.blocks(x)


class TransparentDecoder(nn.Module):
    """The transparent decoder ``D(D*(x_a), x_a) → RGBA``.

    A small U-Net over the frozen decoder's RGB output ``(B, 3, H, W)``; the adjusted latent
    ``(B, latent_channels, H/4, W/4)`` enters at the bottleneck (the latent's resolution)
    through a zero-initialised 1×1 convolution, as in the official ``UNet1024``. Returns
    ``(B, 4, H, W)`` in [0, 1] (a sigmoid): straight colour and alpha (the official decoder
    orders them alpha first; we keep the course's RGBA order).
    """

    def __init__(self, width: int = 16, latent_channels: int = 4):
        super().__init__()
        w = width                                                   # channels: w at H, 2w at H/2, 4w at H/4
        self.inp = nn.Conv2d(3, w, 3, padding=1)
        self.down1 = nn.Sequential(nn.SiLU(), nn.Conv2d(w, 2 * w, 3, padding=1, stride=2))
        self.down2 = nn.Sequential(nn.SiLU(), nn.Conv2d(2 * w, 4 * w, 3, padding=1, stride=2))
        self.latent_in = _zero(nn.Conv2d(latent_channels, 4 * w, 1))
        self.mid = nn.Sequential(ResBlock(4 * w), ResBlock(4 * w))
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(4 * w, 2 * w, 3, padding=1))
        self.fuse1 = nn.Sequential(nn.SiLU(), nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.SiLU())
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * w, w, 3, padding=1))
        self.fuse2 = nn.Sequential(nn.SiLU(), nn.Conv2d(2 * w, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1))
        self.out = nn.Sequential(nn.SiLU(), nn.Conv2d(w, 4, 3, padding=1))

    def forward(self, rgb: Tensor, latent: Tensor) -> Tensor:
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"rgb must be (B, 3, H, W), got shape {tuple(rgb.shape)}")
        if latent.dim() != 4 or latent.shape[0] != rgb.shape[0] or latent.shape[-2:] != (rgb.shape[-2] // 4,
                                                                                          rgb.shape[-1] // 4):
            raise ValueError(f"latent must be (B, C, H/4, W/4) for rgb {tuple(rgb.shape)}, got {tuple(latent.shape)}")
        s0 = self.inp(rgb * 2 - 1)                                  # (B, w, H, W)
        s1 = self.down1(s0)                                         # (B, 2w, H/2, W/2)
        x = self.down2(s1) + self.latent_in(latent)                 # (B, 4w, H/4, W/4): the latent joins here
        x = self.mid(x)
        x = self.fuse1(torch.cat([self.up1(x), s1], dim=1))
        x = self.fuse2(torch.cat([self.up2(x), s0], dim=1))
        return torch.sigmoid(self.out(x))


@dataclass
class LTConfig:
    """Sizes of a :class:`LatentTransparency` pair and the weight it was trained with."""

    width: int = 16
    latent_channels: int = 4
    harmlessness_weight: float = 1.0
    pad_iterations: int = PAD_ITERATIONS

    def to_dict(self) -> dict:
        return asdict(self)


class LatentTransparency(nn.Module):
    """The offset encoder and the transparent decoder, trained together (one zoo model).

    The frozen autoencoder is not part of it: pass it to :meth:`encode` and :meth:`decode`.
    """

    def __init__(self, config: LTConfig | None = None, **overrides):
        super().__init__()
        self.config = config or LTConfig(**overrides)
        self.encoder = OffsetEncoder(self.config.width, self.config.latent_channels)
        self.decoder = TransparentDecoder(self.config.width, self.config.latent_channels)

    def offset(self, rgba: Tensor) -> Tensor:
        """The latent offset ``x_ε = E(alpha, padded colour)``: ``(B, 4, H/4, W/4)``."""
        return self.encoder(encoder_input(_check_rgba(rgba, "rgba"), self.config.pad_iterations))

    def encode(self, ae: nn.Module, rgba: Tensor) -> Tensor:
        """The adjusted latent ``E*(I) + x_ε`` (:func:`adjusted_latent`)."""
        return adjusted_latent(ae, rgba, self.offset)

    def decode(self, ae: nn.Module, latent: Tensor) -> Tensor:
        """RGBA ``(B, 4, H, W)`` from an (adjusted) latent (:func:`decode_rgba`)."""
        return decode_rgba(ae, latent, self.decoder)


def adjusted_latent(ae: nn.Module, rgba: Tensor, encoder, *, parts: bool = False):
    """``x_a = E*(I) + x_ε``: the frozen encoder's latent of the premultiplied image ``I``
    plus the offset ``encoder(rgba)`` (paper §3.1).

    ae: the frozen autoencoder (``encode``: RGB in [0, 1] → latent); rgba: ``(B, 4, H, W)``;
    encoder: a callable ``rgba → offset`` (e.g. :meth:`LatentTransparency.offset`).
    Returns ``x_a``, or with ``parts=True`` the triple ``(x_a, E*(I), x_ε)``.
    The paper encodes the premultiplied image (the layer over black) *(our reading; the
    official img2img code flattens the layer over grey first)*.
    """
    _check_rgba(rgba, "rgba")
    base = ae.encode(premultiplied_rgb(rgba))
    offset = encoder(rgba)
    if offset.shape != base.shape:
        raise ValueError(f"encoder must return an offset shaped like the latent {tuple(base.shape)}, "
                         f"got {tuple(offset.shape)}")
    latent = base + offset
    return (latent, base, offset) if parts else latent


def decode_rgba(ae: nn.Module, latent: Tensor, decoder: nn.Module) -> Tensor:
    """``D(D*(x_a), x_a)``: the transparent decoder reads the frozen decoder's RGB and the latent."""
    return decoder(ae.decode(latent), latent)


# ----------------------------------------------------------------------------- the losses

def harmlessness_loss(decoded_adjusted: Tensor, reference: Tensor) -> Tensor:
    """The paper's identity ("harmlessness") loss: mean squared difference between what the
    frozen decoder makes of the adjusted latent, ``D*(x_a)``, and ``reference``, the
    premultiplied image ``I`` the latent stands for. Zero when the offset changes nothing
    visible; it keeps the adjusted latents decodable as ordinary RGB images, i.e. close to
    the distribution the pretrained model knows.

    decoded_adjusted, reference: ``(B, ...)`` of the same shape. Returns a 0-d tensor.
    """
    _check_pair(decoded_adjusted, reference, "decoded_adjusted", "reference")
    return (decoded_adjusted - reference).pow(2).mean()


def reconstruction_loss(pred_rgba: Tensor, target_rgba: Tensor) -> Tensor:
    """Reconstruction of alpha and colour: ``mean((α̂ − α)²) + Σ α (ĉ − c)² / (3 Σ α)``.

    The alpha term is the mean over every pixel of the batch. The colour term weights each
    pixel's squared colour error (summed over the 3 channels) by the *target* alpha and
    divides by 3 × the target's total alpha over the batch, so it is the mean colour error
    where the layer is visible; straight colour is undefined where α = 0 and does not count
    there *(ours: the paper writes an L2 loss on colour and alpha)*. When the target has no
    visible pixel at all, the colour term is 0.

    pred_rgba, target_rgba: ``(B, 4, H, W)``. Returns a 0-d tensor.
    """
    _check_rgba(pred_rgba, "pred_rgba")
    _check_rgba(target_rgba, "target_rgba")
    if pred_rgba.shape != target_rgba.shape:
        raise ValueError(f"pred_rgba {tuple(pred_rgba.shape)} and target_rgba {tuple(target_rgba.shape)} "
                         "must have the same shape")
    a = target_rgba[:, 3:4]
    alpha_term = (pred_rgba[:, 3:4] - a).pow(2).mean()
    colour_err = (a * (pred_rgba[:, :3] - target_rgba[:, :3]).pow(2)).sum()
    colour_term = colour_err / (3 * a.sum()).clamp_min(1e-8)
    return alpha_term + colour_term


# ----------------------------------------------------------------------------- metrics

def psnr(pred: Tensor, target: Tensor, *, max_value: float = 1.0) -> float:
    """Mean over the batch of each item's PSNR in dB, ``10 log10(max² / MSE)``; an item's MSE
    is floored at 1e-10 (so a perfect match reads 100 dB for max_value 1)."""
    _check_pair(pred, target, "pred", "target")
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(max_value**2 / mse)).mean())


def alpha_psnr(pred_alpha: Tensor, target_alpha: Tensor) -> float:
    """PSNR (dB) of predicted alpha mattes ``(B, ...)`` against the true ones (mean over items)."""
    return psnr(pred_alpha.clamp(0, 1), target_alpha)


def identity_psnr(decoded_adjusted: Tensor, reference: Tensor) -> float:
    """PSNR (dB) of the frozen decoder's output on adjusted latents (clipped to [0, 1]) against
    the reference image: high means the offset is "harmless"."""
    return psnr(decoded_adjusted.clamp(0, 1), reference)


def alpha_iou(pred_alpha: Tensor, target_alpha: Tensor, threshold: float = 0.5) -> float:
    """Mean over the batch of the IoU of the masks ``alpha > threshold`` (strictly greater).

    pred_alpha, target_alpha: ``(B, ...)``, e.g. ``(B, H, W)``; each item's IoU is
    |pred ∩ target| / |pred ∪ target| over all its pixels, and 1 when both masks are empty.
    Returns a Python float.
    """
    _check_pair(pred_alpha, target_alpha, "pred_alpha", "target_alpha")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    p = (pred_alpha > threshold).flatten(1)
    t = (target_alpha > threshold).flatten(1)
    inter = (p & t).sum(1).double()
    union = (p | t).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return float(iou.mean())


def core_opacity(rgba: Tensor, *, quantile: float = 0.9, visible: float = 0.05) -> Tensor:
    """How opaque each layer is at its most solid: the ``quantile`` of its alpha over its
    visible pixels (alpha > ``visible``), ``(B,)``; 0 for a layer with no visible pixel
    *(ours)*. An opaque sprite reads about 1 whatever its soft edges; a glass or faded one reads
    its body's opacity. A high quantile rather than the mean, so blurry edges do not count."""
    _check_rgba(rgba, "rgba")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    a = rgba[:, 3].flatten(1)
    out = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    for i, row in enumerate(a):
        seen = row[row > visible]
        if seen.numel():
            out[i] = torch.quantile(seen.float(), quantile).to(a.dtype)
    return out


# ----------------------------------------------------------------------------- training

def _batch_losses(model: LatentTransparency, ae: nn.Module, rgba: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(reconstruction, harmlessness, offset mean square) of one batch."""
    latent, _, offset = adjusted_latent(ae, rgba, model.offset, parts=True)   # x_a = E*(I) + x_ε
    decoded = ae.decode(latent)                                     # D*(x_a)
    pred = model.decoder(decoded, latent)                           # D(D*(x_a), x_a)
    return reconstruction_loss(pred, rgba), harmlessness_loss(decoded, premultiplied_rgb(rgba)), offset.pow(2).mean()


def train_latent_transparency(ae: nn.Module, data: Tensor, *, harmlessness_weight: float, steps: int,
                              generator: torch.Generator, device: torch.device | str = "cpu",
                              model: LatentTransparency | None = None, batch_size: int = 32, lr: float = 2e-3,
                              width: int = 16, progress: bool | None = None):
    """Train the offset encoder and the transparent decoder with
    ``reconstruction_loss + harmlessness_weight · harmlessness_loss`` (paper §3.1; the paper's
    PatchGAN term is left out), the autoencoder ``ae`` frozen.

    data: ``(N, 4, H, W)`` RGBA training layers; batches are drawn with ``generator``.
    Returns ``(model, history)`` with per-step lists ``loss``, ``reconstruction``,
    ``harmlessness`` and ``offset_ms`` (mean square of the offset). AdamW with 50 warm-up steps and a
    cosine decay (:func:`layerwise.core.train.fit_steps`).
    """
    from layerwise.core.train import fit_steps

    _check_rgba(data, "data")
    if isinstance(harmlessness_weight, bool) or not isinstance(harmlessness_weight, (int, float)) \
            or not harmlessness_weight >= 0 or not math.isfinite(harmlessness_weight):
        raise ValueError(f"harmlessness_weight must be a finite number >= 0, got {harmlessness_weight!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    device = torch.device(device)
    ae = ae.to(device).eval().requires_grad_(False)
    if model is None:
        model = LatentTransparency(LTConfig(width=width, harmlessness_weight=float(harmlessness_weight)))
    model = model.to(device)

    def loss_fn(step: int):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
        recon, harm, offset_ms = _batch_losses(model, ae, data[idx].to(device))
        return recon + harmlessness_weight * harm, {"reconstruction": recon, "harmlessness": harm,
                                                    "offset_ms": offset_ms}

    hist = fit_steps(model, loss_fn, steps, lr=lr, warmup=50, cosine=True, clip=1.0, progress=progress,
                     desc=f"latent transparency (h={harmlessness_weight:g})", log_every=25)
    history = {"loss": hist.loss, **{k: hist.logs.get(k, []) for k in ("reconstruction", "harmlessness", "offset_ms")}}
    return model, history


@torch.no_grad()
def evaluate_latent_transparency(ae: nn.Module, model: LatentTransparency, rgba: Tensor, *,
                                 base_model: nn.Module | None = None, labels: Tensor | None = None,
                                 generator: torch.Generator | None = None, batch_size: int = 256,
                                 device: torch.device | str = "cpu") -> dict[str, float]:
    """The chapter's numbers for one trained pair on held-out layers ``rgba: (N, 4, H, W)``:

    - ``alpha_psnr``, ``alpha_iou``: the transparent decoder's alpha against the truth
      (IoU of the masks α > 0.5), and ``footprint_iou`` (masks α > 0.1: where the layer is);
    - ``alpha_psnr_offset_removed``: the same decoder given ``E*(I)`` without the offset (an
      ablation at test time: how much of the alpha rides in the offset);
    - ``rgb_psnr``: its premultiplied colour (the layer over black) against the truth;
    - ``identity_psnr``: ``D*(x_a)`` against the premultiplied image (harmlessness);
    - ``identity_psnr_no_offset``: the same for ``D*(E*(I))``, the autoencoder's own floor;
    - ``offset_rms`` / ``latent_rms``: the size of the offset next to the size of the latent;
    - ``base_eps_loss`` and ``base_eps_loss_no_offset`` (with ``base_model``): the pretrained
      latent model's held-out ε-loss on adjusted latents and on the plain latents, i.e. how
      far the offset moved the latents away from what that model knows.
    """
    device = torch.device(device)
    ae, model = ae.to(device).eval(), model.to(device).eval()
    preds, ablated, decoded, plain_dec, offsets, latents, bases = [], [], [], [], [], [], []
    for i in range(0, rgba.shape[0], batch_size):
        x = rgba[i:i + batch_size].to(device)
        lat, base, _ = adjusted_latent(ae, x, model.offset, parts=True)
        dec, plain = ae.decode(lat), ae.decode(base)
        preds.append(model.decoder(dec, lat).cpu())
        ablated.append(model.decoder(plain, base).cpu())
        decoded.append(dec.cpu())
        plain_dec.append(plain.cpu())
        offsets.append((lat - base).cpu())
        latents.append(lat.cpu())
        bases.append(base.cpu())
    pred, dec, plain, abl = torch.cat(preds), torch.cat(decoded), torch.cat(plain_dec), torch.cat(ablated)
    off, lat, base = torch.cat(offsets), torch.cat(latents), torch.cat(bases)
    rgba = rgba.cpu()
    ref = premultiplied_rgb(rgba)
    out = {
        "alpha_psnr": alpha_psnr(pred[:, 3], rgba[:, 3]),
        "alpha_iou": alpha_iou(pred[:, 3], rgba[:, 3]),
        "footprint_iou": alpha_iou(pred[:, 3], rgba[:, 3], threshold=0.1),
        "alpha_psnr_offset_removed": alpha_psnr(abl[:, 3], rgba[:, 3]),
        "rgb_psnr": psnr(premultiplied_rgb(pred), ref),
        "identity_psnr": identity_psnr(dec, ref),
        "identity_psnr_no_offset": identity_psnr(plain, ref),
        "harmlessness_loss": float(harmlessness_loss(dec, ref)),
        "reconstruction_loss": float(reconstruction_loss(pred, rgba)),
        "offset_rms": float(off.pow(2).mean().sqrt()),
        "latent_rms": float(base.pow(2).mean().sqrt()),
    }
    if base_model is not None:
        from layerwise.diffusion.train import heldout_eps_loss

        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator)) if generator is not None else 0
        for key, z in (("base_eps_loss", lat), ("base_eps_loss_no_offset", base)):
            out[key] = heldout_eps_loss(base_model, z, labels=labels, generator=torch.Generator().manual_seed(seed),
                                        device=device)
    return out
