"""The pack's recipes, written once against a small host interface.

A *host* is what runs the model: ComfyUI (``comfy_host``) or diffusers (``diffusers_bridge`` and
``pipeline``). Each recipe below is the control flow of a paper's method; hosts only supply the
operations they alone can do (evaluate the UNet with attention recorded, run one sampling pass,
re-noise with the model's own sigma parameterisation, encode/decode). A fix to a recipe is therefore
made once for both hosts.

- :func:`attention_balance_session`: AlignNoise stage 1 (``WHUIR/AlignNoise``, ``fn_AAM``): choose
  the 1/32-pixel self-attention level, record it during one evaluation per iteration, and run the
  noise optimiser of :mod:`.balance` on it.
- :func:`alignnoise_passes`: the two-pass AlignNoise recipe: optional stage 1, then sampling passes,
  each after the first starting from the frequency-refined noise of the previous one (stage 2).
- :func:`zoom_keyframe_loop`: infinite-zoom keyframes: shrink the previous keyframe into the centre,
  outpaint the border, paste the known centre back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import torch

from . import zoom
from .attention import AttentionRecorder, EarlyStop, target_grid
from .balance import BalanceResult, optimize_noise

log = logging.getLogger("alignnoise")


class AttentionHost(Protocol):
    """What a host provides for one stage-1 session."""

    def attention_levels(self) -> dict:
        """``{level: [key, ...]}`` of the UNet's self-attention layers (level 0 = the latent grid,
        2 = 1/32 px); ``{}`` when the layout is unknown (the target level is then found at run time)."""

    def run(self, recorder: AttentionRecorder, keys: Optional[list], early_stop: bool, checkpointing: bool,
            body: Callable[[Callable[[torch.Tensor], Any]], BalanceResult]) -> BalanceResult:
        """Record self-attention on ``keys`` (every self-attention layer when None) into
        ``recorder``, and return ``body(forward)`` computed inside the host's gradient context.
        ``forward(z_hat)`` evaluates the model once at the first sampling step from the initial noise
        ``z_hat``; it may raise :class:`EarlyStop` once the recorder is complete and ``early_stop``
        is set. The host sets ``recorder.expected_rows`` (attention rows per evaluation)."""

    def narrow(self, keys: list) -> None:
        """After run-time discovery: keep recording only on ``keys``."""


@dataclass
class BalanceSession:
    """Result of :func:`attention_balance_session`: the optimiser's result, the attention level
    used (2 = 1/32 px), the recorded layer keys and notes for the node's report."""

    result: BalanceResult
    level: int
    keys: list
    notes: list


def attention_balance_session(host: AttentionHost, z: torch.Tensor, mask: torch.Tensor, *, early_stop: bool = True,
                              gradient_checkpointing: bool = False, downsamples: int = 2,
                              **optimizer_kwargs) -> BalanceSession:
    """AlignNoise stage 1 on any host.

    Args:
        host: the :class:`AttentionHost`.
        z: ``(B, C, h, w)`` initial noise (unit variance).
        mask: outpaint mask, 1 = outpainted, any resolution (see :func:`.balance.optimize_noise`).
        early_stop: stop each forward right after the last target-level layer (its output is unused).
        gradient_checkpointing: recompute non-target layers in the backward pass (less memory).
        downsamples: the target level, in stride-2 downsamples below the latent (2 = 1/32 px, as the
            paper's 16x16 attention at 512 px).
        **optimizer_kwargs: forwarded to :func:`.balance.optimize_noise`.
    """
    levels = host.attention_levels()
    notes: list = []
    level = downsamples
    if levels and level not in levels:
        level = max(levels)
        notes.append(f"this UNet has no self-attention at the 1/{8 * 2 ** downsamples}-pixel level; used level "
                     f"1/{8 * 2 ** level}")
        log.warning("AttentionBalanceNoiseOptimize: %s", notes[-1])
    recorder = AttentionRecorder(target_grid(z.shape[-2:], level), z.shape[0])
    keys = None
    if levels:
        keys = list(levels[level])
        recorder.target_keys = keys
        recorder.discovered = True
    if gradient_checkpointing and keys is None:
        log.warning("gradient checkpointing skipped: unknown UNet layout (target level found at run time)")
        gradient_checkpointing = False

    def body(forward):
        def evaluate(z_hat):
            recorder.reset()
            try:
                forward(z_hat)
            except EarlyStop:
                pass
            if not recorder.discovered:
                recorder.finish_discovery()
                host.narrow(list(recorder.target_keys))
            return recorder.capture()

        return optimize_noise(evaluate, z, mask, **optimizer_kwargs)

    result = host.run(recorder, keys, early_stop, gradient_checkpointing, body)
    return BalanceSession(result, level, list(recorder.target_keys), notes)


class TwoPassHost(Protocol):
    """What a host provides for :func:`alignnoise_passes` (start noises are in the host's units)."""

    def optimize_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, Optional[BalanceResult]]:
        """Stage 1: the attention-balanced noise for the first pass."""

    def sample(self, start: torch.Tensor, steps: int, pass_index: int) -> torch.Tensor:
        """One full sampling pass from the start noise ``start``; returns the host's latent."""

    def refine(self, latent: torch.Tensor, noise: torch.Tensor, pass_index: int) -> torch.Tensor:
        """Stage 2: the start noise of pass ``pass_index`` from the previous pass's ``latent`` and the
        noise ``noise`` that drove the first pass (re-noise, keep low frequencies in the mask)."""


def alignnoise_passes(host: TwoPassHost, z: torch.Tensor, pass_steps: list, attention_balance: bool = True):
    """AlignNoise's sampling recipe: stage 1 (optional), then ``len(pass_steps)`` passes, pass k > 0
    starting from stage 2's refinement of pass k-1 (``pipeline_sd_alignnoise.py``'s ``num_iters`` loop).

    Returns:
        ``(latent, z_hat, balance)``: the last pass's latent, the first pass's noise and the stage-1
        result (None when stage 1 is off).
    """
    z_hat, balance = host.optimize_noise(z) if attention_balance else (z, None)
    latent = None
    for k, steps in enumerate(pass_steps):
        start = z_hat if k == 0 else host.refine(latent, z_hat, k)
        latent = host.sample(start, steps, k)
    return latent, z_hat, balance


def zoom_keyframe_loop(image: torch.Tensor, steps_out: int, zoom_factor: float,
                       outpaint: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], *, overlap: float = 8.0,
                       mask_blur: float = 8.0, fill: str = "reflect", paste_back: bool = True) -> list:
    """Infinite-zoom keyframes on any host.

    Keyframe ``K_{k+1}`` is ``K_k`` shrunk by ``zoom_factor`` into the centre of the canvas, the
    border outpainted by ``outpaint(canvas [H,W,C], mask [H,W], k)`` (which returns the generated
    picture ``[H,W,C]`` in 0..1), and the known centre pasted back (exactly inside, feathered across
    the ``overlap`` band), so colours cannot drift from keyframe to keyframe. The geometry is that of
    :func:`.zoom.render_frames`, so keyframes and interpolated frames line up to the sub-pixel.

    Returns:
        ``[K_0 = image, K_1, ..., K_steps_out]``, each ``[H, W, C]``.
    """
    height, width = image.shape[:2]
    zoom.check_keyframe_args(height, width, zoom_factor, steps_out)
    mask = zoom.outpaint_mask(height, width, zoom_factor, overlap, mask_blur)
    alpha = zoom.paste_back_alpha(height, width, zoom_factor, overlap)
    keys = [image]
    for k in range(steps_out):
        canvas, _ = zoom.shrink_to_center(keys[-1], zoom_factor, fill)
        generated = outpaint(canvas, mask, k)
        key = zoom.paste_back(generated, canvas, alpha) if paste_back else generated
        keys.append(key.clamp(0.0, 1.0))
    return keys
