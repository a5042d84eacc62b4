"""Training-free inpainting samplers (RePaint, DDNM/DDNM+, DiffPIR, ΠGDM, MCG) in k-diffusion's contract.

Host-free torch: nothing here imports ComfyUI. The ComfyUI glue (``alignnoise_core/comfy_host``)
builds the arguments below from a LATENT's ``noise_mask`` and the model's ``model_sampling`` and
wraps each function as a SAMPLER.

API (every sampler)::

    x = sample_<method>(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                        known, mask, space, generator=None, noise_sampler=None,
                        mask_fn=None, stats=None, **method_params)

* ``model(x, sigma * s_in, **extra_args)`` returns the x0 prediction (CFG applied). The host passes
  ``extra_args`` with ``denoise_mask=None`` so ComfyUI's own fixed-noise blending is bypassed.
* ``x``: the start state at ``sigmas[0]`` (ComfyUI: ``noise_scaling(sigmas[0], noise, latent)``).
* ``sigmas``: descending noise levels, usually ending in 0 (any scheduler's SIGMAS).
* ``known``: the known latent y in x0 units, shape of ``x`` (batch 1 broadcasts).
* ``mask``: 1 where to GENERATE (ComfyUI's convention), broadcastable to ``x``; soft values allowed
  (each method documents how it uses them). The result always satisfies
  ``x_final = mask·x + (1 − mask)·known``, i.e. ``known`` exactly where ``mask == 0``. (SIGMAS that
  stop at σ > 0, e.g. from SplitSigmas, end with ``α·known + s·n`` there instead, fresh noise.)
* Soft masks: RePaint/MCG blend the noised known latent with weight 1 − m; DDNM and ΠGDM move x0
  a fraction 1 − m of the way to y; DiffPIR weights its data term by 1 − m; the final paste blends.
* Gradient methods (ΠGDM, MCG) leave ``torch.inference_mode()`` for their one vector-Jacobian
  product per step (``inference_mode(False)`` + ``enable_grad``); the host must make the model usable
  in autograd (weights need no grad, but must not be inference tensors). Nothing else needs grad.
* ``space``: a :class:`NoiseSpace`, ``x = α(σ)·x0 + s(σ)·ε``: :data:`VE` (EPS / V_PREDICTION models in
  ComfyUI's sampler space: α = 1, s = σ), :data:`FLOW` (CONST: α = 1 − σ, s = σ), or
  ``NoiseSpace(alpha_fn, scale_fn, name)`` from two callables ``float -> float``.
* Fresh noise: ``noise_sampler(sigma, sigma_next) -> tensor like x`` if given, else
  ``torch.randn(..., generator=generator)`` (same seed, same output). Without either, a generator
  seeded with 0 is used.
* ``mask_fn(sigma) -> mask``: optional per-step mask (Differential Diffusion's
  ``denoise_mask_function``); the known-region treatment of a step uses ``mask_fn(sigma)``, the
  final paste uses ``mask``.
* ``callback``: called after every model evaluation with k-diffusion's dict
  (``x, i, sigma, sigma_hat, denoised``); ``i`` counts model evaluations (total given by
  :func:`expected_nfe`), so the host can drive a progress bar and check for interrupts there.
* ``stats``: an optional dict the sampler fills (``nfe``, and for RePaint ``resamplings``,
  ``accepted``).
* :func:`validate` (called by every sampler before any model call; the host may call it earlier)
  raises ``ValueError`` naming the bad input: NaN/Inf, shape mismatch, all-ones / all-zeros mask,
  SIGMAS too short for the jump length.

Methods: :func:`sample_repaint` (``schedule="fixed" | "adaptive"``, ``step_fn`` hook for any
descending step), :func:`sample_ddnm`, :func:`sample_diffpir`, :func:`sample_pigdm`,
:func:`sample_mcg`; :func:`sample_replacement` (fresh-noise injection + DDIM(η) step; the base
sampler) and :func:`sample_builtin_inpaint` (an emulation of ComfyUI's ``KSamplerX0Inpaint``, for
comparisons). Node defaults live in :data:`DEFAULTS` (one dict per method) and their cost in model
evaluations in :func:`expected_nfe`. The exact Gaussian test model is in :mod:`.gaussian`.
"""

from .defaults import DEFAULTS, expected_nfe
from .space import FLOW, VE, NoiseSpace
from .schedule import get_schedule_jump, jump_transitions, schedule_nfe
from .common import validate
from .repaint import sample_repaint, sample_replacement
from .ddnm import sample_ddnm
from .diffpir import sample_diffpir
from .guided import sample_mcg, sample_pigdm
from .builtin import sample_builtin_inpaint

SAMPLERS = {
    "repaint": sample_repaint,
    "ddnm": sample_ddnm,
    "diffpir": sample_diffpir,
    "pigdm": sample_pigdm,
    "mcg": sample_mcg,
}

__all__ = [
    "DEFAULTS", "expected_nfe", "NoiseSpace", "VE", "FLOW", "get_schedule_jump", "jump_transitions",
    "schedule_nfe", "validate", "sample_repaint", "sample_replacement", "sample_ddnm", "sample_diffpir",
    "sample_pigdm", "sample_mcg", "sample_builtin_inpaint", "SAMPLERS",
]
