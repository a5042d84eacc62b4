"""Tiny random diffusers models shared by the host-free tests (no downloads, seeded, CPU)."""

from __future__ import annotations

import torch

# Latent 16x16 -> down levels at 16, 8, 4 (attention) and 2 (none), like SD's 64/32/16/8 at 512 px:
# the 1/4-latent level (4x4 here, 16x16 in SD at 512 px) is the "1/32-pixel" target level of AlignNoise.
TINY_UNET = dict(
    sample_size=16,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)


def make_tiny_unet(in_channels: int = 4, seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**TINY_UNET, "in_channels": in_channels, **overrides})
    return unet.eval().requires_grad_(False)


def make_tiny_vae(seed: int = 0):
    """AutoencoderKL with SD's 8x downsampling and 4 latent channels, tiny widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    return vae.eval().requires_grad_(False)


def text_embeddings(batch: int = 1, dim: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 77, dim, generator=g)
