"""The diffusion core every Part IV / V chapter stands on.

- :mod:`~layerwise.diffusion.schedule`: forward process, ε-loss, DDPM / DDIM sampling and
  DDIM inversion (diffusers' schedulers; the per-step arithmetic written out).
- :mod:`~layerwise.diffusion.dit`: a tiny DiT with adaLN-Zero, attention masks, explicit
  2- or 3-axis rotary positions and a token interface.
- :mod:`~layerwise.diffusion.autoencoder`: a tiny RGB ↔ 4×8×8 autoencoder (the "VAE").
- :mod:`~layerwise.diffusion.unet`: diffusers' ``UNet2DModel`` as a denoiser.
"""

from layerwise.diffusion.schedule import (SCHEDULE, ddim_inversion_step, ddim_step, eps_loss, invert,
                                          make_scheduler, predict_x0, q_sample, sample)
from layerwise.diffusion.dit import DiTConfig, TinyDiT, grid_position_ids
from layerwise.diffusion.autoencoder import AEConfig, TinyAutoencoder
from layerwise.diffusion.unet import UNetConfig, UNetDenoiser

__all__ = ["SCHEDULE", "make_scheduler", "q_sample", "eps_loss", "predict_x0", "ddim_step",
           "ddim_inversion_step", "sample", "invert", "DiTConfig", "TinyDiT", "grid_position_ids",
           "AEConfig", "TinyAutoencoder", "UNetConfig", "UNetDenoiser"]
