"""RePaint (Lugmayr et al., CVPR 2022; ``andreas128/RePaint``) and its base sampler, plus a
training-free adaptation of StrDiffusion's adaptive resampling (Liu et al., CVPR 2024, §2.4).

Per descending step σ_i → σ_{i+1} (``gaussian_diffusion.py::p_sample`` with ``inpa_inj_sched_prev``):

1. inject the known latent with FRESH noise, ``x ← m⊙x + (1−m)⊙(α_i·y + s_i·n)`` (skipped on the very
   first step, as in the reference, where ``pred_xstart`` is still None);
2. ``x0 = model(x, σ_i)`` and the descending step (default: the DDPM ancestral step, i.e. the
   posterior q(x_{i+1} | x_i, x0); or any host step through ``step_fn``).

Undo (resampling) is one forward transition σ_i → σ_{i−1} per re-noise entry of the walk
(:meth:`NoiseSpace.renoise`, RePaint's ``√(1−β)·x + √β·n`` in any parameterisation), over the
exact ``get_schedule_jump`` walk on the SIGMAS indices.

Soft masks: the injection is a blend with weight m (m = 1 keeps the sample, 0 takes the noised known
latent); the final result is ``m·x + (1−m)·y``.

Deviations from the reference: the descending step uses the DDPM posterior variance β̃ (ComfyUI's
``ddpm``), not a learned variance (ComfyUI models have none); the known latent is pasted at the end
(the reference saves the raw sample). The walk runs over the host's SIGMAS (50 steps in the node
defaults) instead of 250 respaced DDPM steps, so j = 10 spans a fifth of the trajectory.

Measured on the exact Gaussian model (``bench/bench_inpaint_exact.py``, 50 steps): RePaint mixes
slowly. The conditional-mean error falls with r (VE hole: r = 3 / 5 / 10 / 25 give 0.26 / 0.22 /
0.16 / 0.13 at 130 / 210 / 410 / 1010 NFE, the built-in ddpm inpainting 0.37), and the generated
region keeps too much variance (ratio 2.6 / 2.2 / 1.8 / 1.6). The adaptive schedule at its defaults is
worse than the fixed one at similar cost (0.33 at ≤ 200 NFE): in the early phase the residual score is
dominated by the injected noise, rejected candidates waste their resampling, and averaging x0
predictions shrinks the spread.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .common import finish, known_residual, prepare, report
from .schedule import check_jump_fits, jump_transitions
from .space import NoiseSpace


class _Descent:
    """Injection + model call + step, shared by RePaint and the plain replacement sampler."""

    def __init__(self, model, sigmas, extra_args, callback, y, masks, draw, s_in, space, eta, step_fn):
        self.model, self.sigmas, self.extra_args, self.callback = model, sigmas, extra_args, callback
        self.y, self.masks, self.draw, self.s_in, self.space = y, masks, draw, s_in, space
        self.eta, self.step_fn = eta, step_fn
        self.nfe, self.last_x0 = 0, None

    def inject(self, x: torch.Tensor, i: int) -> torch.Tensor:
        s = self.sigmas[i]
        m = self.masks.at(s)
        noised = self.space.noise_known(self.y, s, self.draw(s, self.sigmas[i + 1]))
        return x * m + noised * (1 - m)

    def down(self, x: torch.Tensor, i: int, inject: bool) -> torch.Tensor:
        if inject:
            x = self.inject(x, i)
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        x0 = self.model(x, s * self.s_in, **self.extra_args)
        report(self.callback, self.nfe, x, s, x0)
        self.nfe += 1
        self.last_x0 = x0
        if self.step_fn is not None:
            return self.step_fn(x, i, i + 1, x0)
        return self.space.ddim_step(x, x0, s, s_next, self.eta, lambda: self.draw(s, s_next))

    def up(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.space.renoise(x, self.sigmas[i], self.sigmas[i - 1], self.draw(self.sigmas[i], self.sigmas[i - 1]))


@torch.no_grad()
def sample_replacement(model, x, sigmas, extra_args=None, callback=None, disable=None, *, known, mask,
                       space: NoiseSpace, generator=None, noise_sampler=None, mask_fn=None, stats=None,
                       eta: float = 1.0, step_fn: Optional[Callable] = None):
    """Fresh-noise replacement ("injection") sampler: RePaint without resampling.

    Args:
        eta: DDIM η of the descending step (1 = DDPM ancestral step, 0 = deterministic DDIM).
        step_fn: ``step_fn(x, i, i_next, x0) -> x_next`` replacing the built-in step.
    """
    extra_args, y, masks, draw, s_in = prepare(x, sigmas, extra_args, known, mask, space, generator,
                                               noise_sampler, mask_fn)
    run = _Descent(model, sigmas, extra_args, callback, y, masks, draw, s_in, space, eta, step_fn)
    for i in range(len(sigmas) - 1):
        x = run.down(x, i, inject=i > 0)
    if stats is not None:
        stats.update(nfe=run.nfe)
    return finish(x, y, masks.base, space, sigmas, draw)


@torch.no_grad()
def sample_repaint(model, x, sigmas, extra_args=None, callback=None, disable=None, *, known, mask,
                   space: NoiseSpace, generator=None, noise_sampler=None, mask_fn=None, stats=None,
                   jump_length: int = 10, jump_n_sample: int = 5, schedule: str = "fixed",
                   eta: float = 1.0, step_fn: Optional[Callable] = None,
                   adaptive_every: int = 5, adaptive_length: int = 5, adaptive_u_min: int = 3,
                   adaptive_u_max: int = 6, adaptive_phase: float = 0.6):
    """RePaint over the given SIGMAS.

    Args:
        jump_length: RePaint's j, how many steps each resampling jumps back up.
        jump_n_sample: RePaint's r, how many times each jump point is visited (1 = no resampling).
        schedule: ``"fixed"`` (RePaint's walk) or ``"adaptive"`` (StrDiffusion-style, below).
        eta: DDIM η of the built-in descending step (1 = the paper's DDPM ancestral step).
        step_fn: ``step_fn(x, i, i_next, x0) -> x_next``: run the descending step
            ``sigmas[i] -> sigmas[i_next]`` with any host sampler; ``x0`` is this step's model output
            (a host wrapper can serve it for the first call; extra calls are the host's cost).
        adaptive_every, adaptive_length, adaptive_u_min, adaptive_u_max, adaptive_phase: the adaptive
            rule. In the first ``adaptive_phase`` of the descent, every ``adaptive_every`` steps, up to
            ``adaptive_u_max − 1`` resamplings of ``adaptive_length`` steps each (undo then redo) are
            run. The score is the known-region residual of the step's x0 prediction,
            ‖(1−m)⊙(y − x0)‖²/‖1−m‖₁, which costs no extra model call. Candidates before
            ``adaptive_u_min`` are averaged (their x0 predictions, keeping the latest noise), later
            ones are kept per sample only if the score improves, otherwise that sample stops.
            StrDiffusion scores with a trained discriminator D(t, texture, structure); this
            training-free score is NOT that discriminator, only its role (lower = more consistent)
            is kept. ``stats`` receives ``resamplings`` (undo/redo cycles run) and ``accepted``
            (candidates kept, summed over the batch).
    """
    extra_args, y, masks, draw, s_in = prepare(x, sigmas, extra_args, known, mask, space, generator,
                                               noise_sampler, mask_fn)
    n_steps = len(sigmas) - 1
    run = _Descent(model, sigmas, extra_args, callback, y, masks, draw, s_in, space, eta, step_fn)
    if schedule == "fixed":
        first = True
        for i, k in jump_transitions(n_steps, jump_length, jump_n_sample):
            if k > i:
                x = run.down(x, i, inject=not first)
                first = False
            else:
                x = run.up(x, i)
        if stats is not None:
            stats.update(nfe=run.nfe, resamplings=(jump_n_sample - 1) * len(range(0, n_steps - jump_length, jump_length)))
    elif schedule == "adaptive":
        if adaptive_u_min < 1 or adaptive_u_max < adaptive_u_min or adaptive_every < 1 or adaptive_length < 1:
            raise ValueError("adaptive resampling needs 1 <= u_min <= u_max and positive every/length, got "
                             f"u_min={adaptive_u_min}, u_max={adaptive_u_max}, every={adaptive_every}, "
                             f"length={adaptive_length}.")
        check_jump_fits(n_steps, adaptive_length, adaptive_u_max, "SIGMAS (adaptive resampling)")
        resamplings = accepted = 0
        for i in range(n_steps):
            x = run.down(x, i, inject=i > 0)
            n = i + 1
            if n % adaptive_every or n < adaptive_length or n > adaptive_phase * n_steps or n >= n_steps:
                continue
            x, r, a = _adaptive(run, x, n, y, masks.at(sigmas[n - 1]), adaptive_length, adaptive_u_min,
                                adaptive_u_max)
            resamplings, accepted = resamplings + r, accepted + a
        if stats is not None:
            stats.update(nfe=run.nfe, resamplings=resamplings, accepted=accepted)
    else:
        raise ValueError(f"schedule must be 'fixed' or 'adaptive', got {schedule!r}.")
    return finish(x, y, masks.base, space, sigmas, draw)


def _adaptive(run: _Descent, x, n, y, m, length, u_min, u_max):
    """One trigger of the adaptive rule at sigma index ``n`` (just reached)."""
    space, sig = run.space, run.sigmas[n]
    a_n = space.alpha(sig)
    best = known_residual(run.last_x0, y, m)
    x0_sum, count = run.last_x0.clone(), 1
    active = torch.ones_like(best, dtype=torch.bool)
    resamplings = accepted = 0
    shape = (-1,) + (1,) * (x.ndim - 1)
    for u in range(1, u_max):
        cand = x
        for k in range(n, n - length, -1):
            cand = run.up(cand, k)
        for k in range(n - length, n):
            cand = run.down(cand, k, inject=True)
        resamplings += 1
        x0 = run.last_x0
        score = known_residual(x0, y, m)
        if u < u_min:  # averaged: mean x0 prediction, the latest candidate's noise
            x0_sum, count = x0_sum + x0, count + 1
            x = cand + (x0_sum / count - x0) * a_n
            best, accepted = score, accepted + int(active.sum())
            continue
        keep = active & (score < best)
        x = torch.where(keep.view(shape), cand, x)
        best = torch.where(keep, score, best)
        accepted += int(keep.sum())
        active = keep
        if not bool(active.any()):
            break
    return x, resamplings, accepted
