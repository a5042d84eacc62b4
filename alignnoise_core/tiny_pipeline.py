"""Random-weight ``StableDiffusionInpaintPipeline`` directories for tests, benches and first runs.

No download: the UNet (9 input channels), VAE, CLIP text model and a byte-level CLIP tokenizer (a
generated ``vocab.json``/``merges.txt``) are built from small local configs with seeded random
weights and saved with ``save_pretrained``. The result loads like any diffusers inpainting model::

    python -m alignnoise_core make-tiny-model ./tiny-inpaint
    python -m alignnoise_core outpaint photo.png --model ./tiny-inpaint --left 64 --right 64 --out out.png

The pictures are noise-like (the weights are random); the point is to exercise the whole path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

#: Size presets. ``tiny``: seconds on CPU at 128 px. ``mid``: an SD-like layout at reduced widths
#: (about 1/10 of SD2's UNet compute per pixel) for benchmarks.
PRESETS = {
    "tiny": dict(
        unet=dict(
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=1,
            attention_head_dim=8,
            norm_num_groups=8,
            cross_attention_dim=32,
        ),
        vae=dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=8),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    ),
    "mid": dict(
        unet=dict(
            block_out_channels=(64, 128, 256, 256),
            layers_per_block=2,
            attention_head_dim=8,
            norm_num_groups=32,
            cross_attention_dim=256,
        ),
        vae=dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=32),
        text=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4),
    ),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (every byte gets one visible character)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer_files(directory: str | os.PathLike) -> Path:
    """Write a minimal byte-level CLIP ``vocab.json`` + ``merges.txt`` (every byte, with and without
    the end-of-word marker, plus a few merges) into ``directory`` and return it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = ["t h", "th e</w>", "a n", "i n", "o n</w>", "e r</w>"]
    tokens += ["th", "the</w>", "an", "in", "on</w>", "er</w>", "<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return d


def build_unet(preset: str = "tiny", in_channels: int = 9, seed: int | None = None, **overrides):
    """A random SD-layout ``UNet2DConditionModel`` of a :data:`PRESETS` size (attention at the first
    three levels, like SD1.x/2.x). ``seed=None`` keeps the caller's RNG stream."""
    from diffusers import UNet2DConditionModel

    if seed is not None:
        torch.manual_seed(seed)
    config = dict(
        sample_size=16 if preset == "tiny" else 32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        **PRESETS[preset]["unet"],
    )
    return UNet2DConditionModel(**{**config, **overrides})


def build_vae(preset: str = "tiny", seed: int | None = None, **overrides):
    """A random ``AutoencoderKL`` with SD's 8x downsampling and 4 latent channels, :data:`PRESETS` widths."""
    from diffusers import AutoencoderKL

    if seed is not None:
        torch.manual_seed(seed)
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=128,
        **PRESETS[preset]["vae"],
    )
    return AutoencoderKL(**{**config, **overrides})


def build_tiny_inpaint_pipeline(preset: str = "tiny", seed: int = 0, scheduler: str = "pndm"):
    """Build a random ``StableDiffusionInpaintPipeline`` in memory (CPU, float32, no download).

    Args:
        preset: ``tiny`` or ``mid`` (see :data:`PRESETS`).
        seed: seed of the random weights.
        scheduler: ``pndm`` (as SD2-inpainting ships: ``skip_prk_steps``, ``steps_offset=1``) or ``ddim``.
    """
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionInpaintPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    unet = build_unet(preset, in_channels=9)
    vae = build_vae(preset)  # continues the same RNG stream as the UNet
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(
            str(write_tokenizer_files(tmp)), local_files_only=True, model_max_length=77
        )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=cfg["unet"]["cross_attention_dim"],
            **cfg["text"],
        )
    )
    if cfg["text"]["hidden_size"] != cfg["unet"]["cross_attention_dim"]:
        raise AssertionError("text hidden size must equal the UNet's cross_attention_dim")
    sched_cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                     set_alpha_to_one=False, num_train_timesteps=1000)
    if scheduler == "pndm":
        sched = PNDMScheduler(skip_prk_steps=True, **sched_cfg)
    elif scheduler == "ddim":
        sched = DDIMScheduler(clip_sample=False, **sched_cfg)
    else:
        raise ValueError(f"Unknown scheduler {scheduler!r}; use 'pndm' or 'ddim'.")
    pipe = StableDiffusionInpaintPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_model(directory: str | os.PathLike, preset: str = "tiny", seed: int = 0, scheduler: str = "pndm") -> Path:
    """Save a random inpainting pipeline (see :func:`build_tiny_inpaint_pipeline`) to ``directory``."""
    d = Path(directory)
    pipe = build_tiny_inpaint_pipeline(preset, seed, scheduler)
    pipe.save_pretrained(str(d))
    return d
