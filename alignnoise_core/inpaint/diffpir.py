"""DiffPIR (Zhu et al., CVPRW 2023; ``yuanzhi-zhu/DiffPIR:main_ddpir_inpainting.py``) for inpainting.

Per step σ → σ_next::

    x0   = model(x, σ)
    ρ    = λ·σ_n² / σ̄²                       (σ̄ = s/α: the VE σ; DiffPIR's √(1−ᾱ)/√ᾱ)
    x̂0   = ((1−m)⊙y + ρ·x0) / ((1−m) + ρ)   (closed-form proximal step; skipped on the final step)
    ε̂    = (x − α·x̂0)/s
    x_next = α_next·x̂0 + s_next·(√(1−ζ)·ε̂ + √ζ·n)

ζ = 1 (the reference default) re-noises fully (ComfyUI's ``lcm`` step), ζ = 0 is DDIM. DiffPIR's
extra σ_η (``eta``, default 0 in the reference) is not exposed.

Soft masks: (1−m) is the weight (precision) of the data term, so every cell with m < 1 is pulled
towards y, harder at low noise.

σ_n: the reference uses σ_n = max(0.001, noise level) for images in [0, 1]. In a latent the known
latent is not a noiseless measurement (VAE encoding is not local or exact), and latents have unit
scale rather than ~0.25. The default σ_n = 0.1 (latent units) was tuned on the exact Gaussian model
(``bench/bench_inpaint_exact.py``, ``--set diffpir.sigma_n=...``): the largest value whose
conditional-mean error stays within 3 % of σ_n → 0 on every row (σ_n = 0.001 / 0.05 / 0.1 / 0.2 / 0.5:
0.202 / 0.203 / 0.207 / 0.218 / 0.268 on the VE hole), so the data term tolerates encoding error of
that size without loosening the fit.
"""

from __future__ import annotations

import math

import torch

from .common import finish, prepare, report
from .space import NoiseSpace


@torch.no_grad()
def sample_diffpir(model, x, sigmas, extra_args=None, callback=None, disable=None, *, known, mask,
                   space: NoiseSpace, generator=None, noise_sampler=None, mask_fn=None, stats=None,
                   lam: float = 1.0, sigma_n: float = 0.1, zeta: float = 1.0):
    """DiffPIR's closed-form proximal step.

    Args:
        lam: λ, the weight of the prior against the data term.
        sigma_n: σ_n, the assumed noise of the known latent (latent units).
        zeta: ζ in [0, 1], the fraction of fresh noise variance per step (1 = fully re-noised).
    """
    if not 0.0 <= zeta <= 1.0:
        raise ValueError(f"zeta must be in [0, 1], got {zeta}.")
    if lam <= 0 or sigma_n < 0:
        raise ValueError(f"lam must be > 0 and sigma_n >= 0, got lam={lam}, sigma_n={sigma_n}.")
    extra_args, y, masks, draw, s_in = prepare(x, sigmas, extra_args, known, mask, space, generator,
                                               noise_sampler, mask_fn)
    n_steps = len(sigmas) - 1
    fresh = math.sqrt(zeta)
    for i in range(n_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        x0 = model(x, s * s_in, **extra_args)
        report(callback, i, x, s, x0)
        x0_hat = x0
        if i < n_steps - 1:
            keep = 1 - masks.at(s)
            bar = space.ve_sigma(s)
            rho = lam * sigma_n * sigma_n / (bar * bar) if math.isfinite(bar) else 0.0
            den = keep + rho
            x0_hat = torch.where(den > 0, (keep * y + rho * x0) / den.clamp_min(1e-30), x0)
        x = space.mix_step(x0_hat, space.eps(x, x0_hat, s), s_next, fresh, lambda: draw(s, s_next))
    if stats is not None:
        stats.update(nfe=n_steps)
    return finish(x, y, masks.base, space, sigmas, draw)
