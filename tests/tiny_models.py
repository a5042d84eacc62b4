"""Tiny random diffusers models shared by the host-free tests (no downloads, seeded, CPU)."""

from __future__ import annotations

import torch

from alignnoise_core.tiny_pipeline import build_unet, build_vae

# The "tiny" preset of alignnoise_core.tiny_pipeline: latent 16x16 -> down levels at 16, 8, 4
# (attention) and 2 (none), like SD's 64/32/16/8 at 512 px: the 1/4-latent level (4x4 here, 16x16 in
# SD at 512 px) is the "1/32-pixel" target level of AlignNoise.


def make_tiny_unet(in_channels: int = 4, seed: int = 0, **overrides):
    return build_unet("tiny", in_channels=in_channels, seed=seed, **overrides).eval().requires_grad_(False)


def make_tiny_vae(seed: int = 0):
    """AutoencoderKL with SD's 8x downsampling and 4 latent channels, tiny widths."""
    return build_vae("tiny", seed=seed, sample_size=64).eval().requires_grad_(False)


def text_embeddings(batch: int = 1, dim: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 77, dim, generator=g)
