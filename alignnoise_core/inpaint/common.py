"""Shared pieces of the inpainting samplers: input checks, fresh noise, masks and the final paste."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .space import NoiseSpace


def _finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} contains {bad} NaN or Inf value(s); fix the node that produced it "
                         f"(e.g. a VAE overflow in float16) or re-run it in float32.")


def validate(x: torch.Tensor, sigmas: torch.Tensor, known: torch.Tensor, mask: torch.Tensor,
             space: Optional[NoiseSpace] = None) -> torch.Tensor:
    """Check the sampler inputs before any model call; return the mask as a float tensor shaped like ``x``.

    Raises ``ValueError`` naming the input on: NaN/Inf in the latent, known latent or mask; a known
    latent or mask that does not broadcast to the latent (batch 1 broadcasts); mask values outside
    [0, 1]; a mask with nothing to generate (all zeros) or nothing known (all ones); SIGMAS with
    fewer than two levels or not descending.
    """
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"the latent must be a tensor [B, C, ...], got {getattr(x, 'shape', type(x))}.")
    _finite(x, "the latent (sampler input x)")
    if known is None or not torch.is_tensor(known):
        raise ValueError("the known latent is missing: the LATENT needs its source samples and a noise_mask "
                         "(SetLatentNoiseMask, VAEEncodeForInpaint or InpaintModelConditioning).")
    if mask is None or not torch.is_tensor(mask):
        raise ValueError("the LATENT has no noise_mask: add one with SetLatentNoiseMask (or VAEEncodeForInpaint / "
                         "InpaintModelConditioning with noise_mask on) so the sampler knows what to keep.")
    for t, what in ((known, "the known latent"), (mask, "the noise_mask")):
        try:
            shape = torch.broadcast_shapes(t.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(f"{what} has shape {tuple(t.shape)}, which does not match the latent {tuple(x.shape)}: "
                             f"use the same batch (or 1) and the latent's height and width.")
    _finite(known, "the known latent")
    _finite(mask, "the noise_mask")
    m = mask.to(device=x.device, dtype=x.dtype).expand(x.shape)
    lo, hi = float(m.min()), float(m.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"the noise_mask must be in [0, 1] (1 = generate), got values in [{lo:.3g}, {hi:.3g}].")
    if hi <= 0:
        raise ValueError("the noise_mask is all zeros: nothing to generate. Paint the region to inpaint or "
                         "outpaint with 1 (white).")
    if lo >= 1:
        raise ValueError("the noise_mask is all ones: nothing is known, so there is nothing to inpaint from. Use a "
                         "plain sampler, or mark the region to keep with 0.")
    if not torch.is_tensor(sigmas) or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError("SIGMAS must be a 1-D tensor with at least two noise levels (one step).")
    _finite(sigmas, "SIGMAS")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise ValueError("SIGMAS must be descending (high noise to low noise); got an increasing pair.")
    if space is not None and not isinstance(space, NoiseSpace):
        raise ValueError(f"space must be a NoiseSpace (VE, FLOW or custom), got {type(space).__name__}.")
    return m.clamp(0.0, 1.0)


def noise_source(x: torch.Tensor, generator: Optional[torch.Generator] = None,
                 noise_sampler: Optional[Callable] = None) -> Callable[[float, float], torch.Tensor]:
    """``fn(sigma, sigma_next) -> tensor like x`` of fresh standard normal noise: the host's
    ``noise_sampler`` if given, else ``torch.randn`` with ``generator`` (seed 0 when None).
    Noise is drawn on the generator's device and moved to ``x``'s, so CPU seeds give the same
    result on any device."""
    if noise_sampler is not None:
        return noise_sampler
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0)
    gen_device = generator.device

    def draw(sigma=None, sigma_next=None) -> torch.Tensor:
        n = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32)
        return n.to(device=x.device, dtype=x.dtype)

    return draw


class Masks:
    """The mask of each step: ``mask_fn(sigma)`` (Differential Diffusion) or the fixed mask."""

    def __init__(self, mask: torch.Tensor, x: torch.Tensor, mask_fn: Optional[Callable] = None):
        self.base, self.fn, self.x = mask, mask_fn, x

    def at(self, sigma) -> torch.Tensor:
        if self.fn is None:
            return self.base
        m = self.fn(sigma)
        return m.to(device=self.x.device, dtype=self.x.dtype).expand(self.x.shape).clamp(0.0, 1.0)


def paste_known(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask·x + (1 − mask)·known``: exactly ``known`` where mask == 0 (also for soft masks)."""
    y = known.to(device=x.device, dtype=x.dtype).expand(x.shape)
    return torch.where(mask <= 0, y, x * mask + y * (1 - mask))


def finish(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor, space: NoiseSpace, sigmas: torch.Tensor,
           draw: Callable) -> torch.Tensor:
    """The final paste. SIGMAS ending at 0: exactly ``known`` where mask == 0. SIGMAS ending at σ > 0
    (a split schedule that another sampler continues): the known latent at that level,
    ``α·y + s·n`` with fresh noise, so the next sampler receives a consistent state."""
    last = float(sigmas[-1])
    if last > 0:
        known = space.noise_known(known, last, draw(last, last))
    return paste_known(x, known, mask)


def known_residual(x0: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample score ‖(1−m)⊙(y − x0)‖² / ‖1−m‖₁: how far the x0 prediction is from the known latent
    on the known region (lower is more consistent)."""
    keep = (1 - mask)
    dims = tuple(range(1, x0.ndim))
    return (keep * (known - x0)).pow(2).sum(dims) / keep.sum(dims).clamp_min(1e-8)


def report(callback: Optional[Callable], i: int, x: torch.Tensor, sigma, x0: torch.Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})


def prepare(x, sigmas, extra_args, known, mask, space, generator, noise_sampler, mask_fn):
    """The common entry of every sampler: validate, then (extra_args, known, Masks, draw, s_in)."""
    m = validate(x, sigmas, known, mask, space)
    if space is None:
        raise ValueError("space is required: VE for EPS/V_PREDICTION models, FLOW for CONST (flow) models.")
    y = known.to(device=x.device, dtype=x.dtype).expand(x.shape)
    return ({} if extra_args is None else extra_args), y, Masks(m, x, mask_fn), \
        noise_source(x, generator, noise_sampler), x.new_ones([x.shape[0]])
