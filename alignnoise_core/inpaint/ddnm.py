"""DDNM / DDNM+ (Wang et al., ICLR 2023; ``wyhuai/DDNM::simplified_ddnm_plus``) for inpainting.

Null-space correction with A = A† = the keep mask, in x0 space::

    x̂0 = x0 − λ_t·(1−m)⊙(x0 − y)              (λ_t = 1 without measurement noise: a paste of y)
    x_next = α_next·x̂0 + γ_t·(√(1−η²)·ε̂ + η·n)  (ε̂ = (x − α·x0)/s from the RAW prediction)

η is DDNM's fraction of the total noise that is fresh at each step (not DDIM's η; default 0.85).
Because ε̂ comes from the raw x0, the known region keeps the model's own noise estimate
(``x_next,known = α·y + …·(x − α·x0)/s``), which feeds the known-region residual back into x.

DDNM+ (``sigma_y > 0``): λ_t = 1 if s_next ≥ α_next·σ_y, else s_next/(α_next·σ_y), and
γ_t = √(s_next² − (λ_t·α_next·σ_y)²) (the paper's rule with σ_t → s_next, a_t → α_next).

Time travel (``travel_length`` l, ``travel_repeat`` s): RePaint's ``get_schedule_jump`` walk; every
re-noise entry sets ``x = α_j·x0_raw + s_j·n`` from the LAST RAW x0 prediction (not the corrected
one), as the reference does.

Soft masks: (1−m) weights the correction (m = 0.3 moves x0 70 % of the way to y).

Fix (documented deviation): the reference's simplified path uses ``sigma_t = √(1 − ᾱ_next²)`` (ᾱ
squared) as γ_t on top of c1, c2 = √(1−ᾱ_next)·(η, √(1−η²)), which under-scales the noise (a 1-D
Gaussian toy ends with variance 0.024 instead of 0.36). Here the noise scale is the full s_next, the
standard DDIM-style form the reference's comment intends.
"""

from __future__ import annotations

import math

import torch

from .common import finish, prepare, report
from .schedule import jump_transitions
from .space import NoiseSpace


@torch.no_grad()
def sample_ddnm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, known, mask,
                space: NoiseSpace, generator=None, noise_sampler=None, mask_fn=None, stats=None,
                eta: float = 0.85, travel_length: int = 10, travel_repeat: int = 5, sigma_y: float = 0.0):
    """DDNM (``sigma_y = 0``) or DDNM+ (``sigma_y > 0``, in latent units).

    Args:
        eta: fraction of fresh noise per step (DDNM's η, 0.85 in the reference).
        travel_length: time-travel jump length l (the reference config has l = s = 1: off).
        travel_repeat: how many times each travel point is visited (s).
        sigma_y: measurement noise of the known latent (DDNM+); 0 = exact paste.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta (fraction of fresh noise) must be in [0, 1], got {eta}.")
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y}.")
    extra_args, y, masks, draw, s_in = prepare(x, sigmas, extra_args, known, mask, space, generator,
                                               noise_sampler, mask_fn)
    n_steps = len(sigmas) - 1
    x0_raw, nfe = None, 0
    for i, k in jump_transitions(n_steps, travel_length, travel_repeat):
        if k < i:  # time travel back: re-noise the last raw prediction to level k
            x = space.noise_known(x0_raw, sigmas[k], draw(sigmas[i], sigmas[k]))
            continue
        s, s_next = sigmas[i], sigmas[k]
        x0_raw = model(x, s * s_in, **extra_args)
        report(callback, nfe, x, s, x0_raw)
        nfe += 1
        a_n, sc_n = space.coeffs(s_next)
        lam, gamma = 1.0, sc_n
        if sigma_y > 0 and sc_n > 0:
            if sc_n < a_n * sigma_y:
                lam, gamma = sc_n / (a_n * sigma_y), 0.0
            else:
                gamma = math.sqrt(sc_n * sc_n - (a_n * sigma_y) ** 2)
        keep = 1 - masks.at(s)
        x0_hat = x0_raw + (y - x0_raw) * keep * lam
        eps = space.eps(x, x0_raw, s)
        if sc_n <= 0:
            x = x0_hat * a_n
            continue
        x = x0_hat * a_n + eps * (gamma * math.sqrt(1 - eta * eta))
        if eta > 0 and gamma > 0:
            x = x + draw(s, s_next) * (gamma * eta)
    if stats is not None:
        stats.update(nfe=nfe)
    return finish(x, y, masks.base, space, sigmas, draw)
