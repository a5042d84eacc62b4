"""Gradient-guided inpainting: ΠGDM (Song et al., ICLR 2023) and MCG (Chung et al., NeurIPS 2022).

Both take one vector-Jacobian product through the model per step: inside
``torch.inference_mode(False)`` and ``torch.enable_grad()`` the state is a fresh leaf ``x.detach().clone().requires_grad_(True)``, ``x0 = model(x_leaf, σ)``, and
``torch.autograd.grad`` gives the gradient (the host makes the model differentiable; its weights need
no grad and nothing is kept on them).

ΠGDM, after the reference port ``NVlabs/RED-diff:algos/pgdm.py`` (no official code exists)::

    g      = ∇_x [ sg((1−m)⊙(y − x0)) · x0 ]            (= Jᵀ r: the pseudo-inverse guidance)
    x̂0     = x0 + (1−m)⊙(y − x0),  ε̂ = (x − α·x0)/s   (RED-diff's inpainting branch: paste, raw ε)
    x_next = DDIM_η(x̂0, ε̂) + w·α·α_next·m⊙g

RED-diff writes ``coeff = √ᾱ_s·√ᾱ_t·w`` with the gradient taken w.r.t. the VP state; with
x = α·x_ve the same step reads w·α_t·α_next·∇_x in any space (w·∇_x in VE). The reference's defaults
are w = 1, η = 0 (``grad_term_weight``, ``awd=True``); re-tuned on the exact Gaussian model to w = 3,
η = 0.5 (VE hole: conditional-mean error 0.151 → 0.097, border 0.485 → 0.325; variance ratio
1.34 → 0.82 and 1.40 → 1.06). The paper's explicit r_t⁻² = 1 + σ̄² factor is not added (it
overshoots on a toy).

MCG, after RED-diff's ``algos/mcg.py`` (the squared residual)::

    L      = Σ ((1−m)⊙(y − x0))²                           (per sample: the batch does not couple)
    x'     = DDIM_η(x0, ε)                                 (raw prediction)
    x''    = x' − w·α_t·√(α_next² + s_next²)·m⊙∇_x L        (RED-diff's w·√ᾱ_t in VP, mapped to x)
    x_next = m⊙x'' + (1−m)⊙(α_next·y + s_next·n)           (projection with fresh noise, to level σ_next)

Why squared: the official code (``HJ-harry/MCG_diffusion``) uses the non-squared norm ‖y − A x̂0‖
over the whole batch, whose gradient has unit norm whatever the residual, so its per-entry size
scales like 1/√(#known entries) (and, over a batch, 1/√batch): the right step depends on the latent
size and the batch. Measured on the exact model of the bench (4×16×16 latent, hole, VE, per-sample
norm, the official step mapped to this space): α = 1 under-corrects (conditional-mean error 0.28,
variance ratio 1.6), α = 3 is best (0.10, 0.86), α = 10 collapses the variance (0.13, 0.50). The
squared residual's gradient shrinks with the residual, so one step size works for any latent size
and batch. w = 0.5 was tuned on the exact Gaussian model (VE hole: w = 0 / 0.25 /
0.5 / 1 / 2 give conditional-mean error 0.37 / 0.15 / 0.06 / 0.11 / 0.18 with variance ratio
3.8 / 1.0 / 0.70 / 0.52 / 0.43: larger steps overshoot and collapse the variance).
The official code noises the known region to level t; RED-diff and the paper use t−1 (σ_next), as here.

Soft masks: (1−m) weights the residual, m the gradient and the projection blend.
"""

from __future__ import annotations

import math

import torch

from .common import finish, prepare, report
from .space import NoiseSpace


def _vjp(model, x, sigma, extra_args, weight_fn, keep):
    """x0 = model(x) and ∇_x of ``weight_fn(x0, keep)`` (a scalar), through one backward pass.

    Runs outside ``inference_mode`` (ComfyUI runs nodes inside it): the leaf, ``keep`` and ``sigma``
    are cloned there so no inference tensor is saved for backward (the model's own weights are the
    host's business)."""
    with torch.inference_mode(False), torch.enable_grad():
        x_req = x.detach().clone().requires_grad_(True)
        x0 = model(x_req, sigma.clone(), **extra_args)
        grad, = torch.autograd.grad(weight_fn(x0, keep.clone()), x_req)
    return x0.detach(), grad.detach()


@torch.no_grad()
def sample_pigdm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, known, mask,
                 space: NoiseSpace, generator=None, noise_sampler=None, mask_fn=None, stats=None,
                 weight: float = 3.0, eta: float = 0.5):
    """ΠGDM (pseudo-inverse guided diffusion) for inpainting.

    Args:
        weight: w, the guidance weight (RED-diff's ``grad_term_weight``, 1 there).
        eta: DDIM η of the step (0 = deterministic, the reference's value).
    """
    extra_args, y, masks, draw, s_in = prepare(x, sigmas, extra_args, known, mask, space, generator,
                                               noise_sampler, mask_fn)
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        m = masks.at(s)
        keep = 1 - m
        x0, grad = _vjp(model, x, s * s_in, extra_args, lambda z, k: ((k * (y.clone() - z)).detach() * z).sum(), keep)
        report(callback, i, x, s, x0)
        eps = space.eps(x, x0, s)
        x0_hat = x0 + (y - x0) * keep
        x_new = space.ddim_step(x, x0_hat, s, s_next, eta, lambda: draw(s, s_next), eps=eps)
        x = x_new + grad * m * (weight * space.alpha(s) * space.alpha(s_next))
    if stats is not None:
        stats.update(nfe=n_steps, vjp=n_steps)
    return finish(x, y, masks.base, space, sigmas, draw)


@torch.no_grad()
def sample_mcg(model, x, sigmas, extra_args=None, callback=None, disable=None, *, known, mask,
               space: NoiseSpace, generator=None, noise_sampler=None, mask_fn=None, stats=None,
               step: float = 0.5, eta: float = 1.0):
    """MCG (manifold-constrained gradient) for inpainting.

    Args:
        step: w, the gradient step (RED-diff's ``grad_term_weight``; re-tuned, see the module notes).
        eta: DDIM η of the step (1 = DDPM ancestral, the paper's score-SDE-like sampler).
    """
    extra_args, y, masks, draw, s_in = prepare(x, sigmas, extra_args, known, mask, space, generator,
                                               noise_sampler, mask_fn)
    n_steps = len(sigmas) - 1
    for i in range(n_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        keep = 1 - masks.at(s)
        x0, grad = _vjp(model, x, s * s_in, extra_args, lambda z, k: (k * (y.clone() - z)).pow(2).sum(), keep)
        report(callback, i, x, s, x0)
        x = space.ddim_step(x, x0, s, s_next, eta, lambda: draw(s, s_next))
        if step:
            a_n, sc_n = space.coeffs(s_next)
            x = x - grad * (1 - keep) * (step * space.alpha(s) * math.sqrt(a_n * a_n + sc_n * sc_n))
        m_next = masks.at(s_next)
        if space.scale(s_next) > 0:
            x = x * m_next + space.noise_known(y, s_next, draw(s, s_next)) * (1 - m_next)
    if stats is not None:
        stats.update(nfe=n_steps, vjp=n_steps)
    return finish(x, y, masks.base, space, sigmas, draw)
