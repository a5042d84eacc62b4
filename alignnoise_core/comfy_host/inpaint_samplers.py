"""The training-free inpainting samplers (RePaint, DDNM, DiffPIR, ΠGDM, MCG) as ComfyUI SAMPLERs.

How a run maps onto ComfyUI (``SamplerCustomAdvanced`` → ``CFGGuider.sample`` → ``Sampler.sample``):

* The known region is the LATENT's ``noise_mask``: ComfyUI hands it to ``Sampler.sample`` as
  ``denoise_mask`` (already resized to the latent, 1 = generate) together with ``latent_image`` in model
  space. Subclassing ``comfy.samplers.Sampler`` (not ``KSAMPLER``) means ComfyUI's
  ``KSamplerX0Inpaint`` never wraps the model, so its fixed-noise replacement and x0 paste are not
  applied on top of each method's own known-region treatment: the denoiser the core sees is the
  guider itself (CFG, conds, the 9-channel concat built by ``process_conds`` all stay).
* The start is ``model_sampling.noise_scaling(sigmas[0], noise, latent_image)`` exactly as KSAMPLER
  builds it, and the result goes through ``inverse_noise_scaling``.
* The re-noising space (VE for EPS/V_PREDICTION/EDM, FLOW for CONST) comes from the model's own
  ``model_sampling``: its class and a numeric probe of ``noise_scaling`` (so a CONST with a
  ``noise_scale`` ≠ 1 or an image-to-image subclass is refused instead of being mis-modelled).
* ``denoise_mask_function`` (Differential Diffusion) is evaluated at every model call with ComfyUI's
  arguments; where the per-step mask still says "keep", the x0 prediction is pasted with the latent,
  as ComfyUI's own inpaint wrapper does. The method's own treatment and the final paste use the
  LATENT's (soft) mask.
* ΠGDM and MCG differentiate through the model. The guider's model is already loaded when
  ``Sampler.sample`` runs and a SAMPLER has no MODEL input to clone, so nothing is patched at all:
  the run happens inside :func:`.common.gradient_session` (outside inference mode, autograd on,
  ``FrozenConstants`` handing autograd private copies of the weights it must keep, so neither
  inference-tensor weights nor cast buffers reused by the next layer matter and no weight wrapper
  is needed; ``in_training`` where ComfyUI has it; weights frozen, flags restored) with an attention
  backend that has a backward pass set in the run's own model_options copy. Nothing is left on the
  user's MODEL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

import comfy.model_sampling
import comfy.samplers
from comfy_execution.utils import get_executing_context
from server import PromptServer

from .. import inpaint
from .common import check_interrupt, gradient_session, use_differentiable_attention

log = logging.getLogger("alignnoise")

_HOW_TO_MASK = ("Give the sampler a LATENT with a noise_mask: SetLatentNoiseMask (VAEEncode + MASK), VAEEncodeForInpaint, "
                "or InpaintModelConditioning with noise_mask enabled; 1 in the mask = generate, 0 = keep.")


# --------------------------------------------------------------------------------------------------
# Which space the model samples in
# --------------------------------------------------------------------------------------------------

# Owners allowed for each model_sampling method: anything else (X0, IMG_TO_IMG, COSMOS_RFLOW, newer
# CONST subclasses) changes what the sampler state means, so it is refused rather than guessed.
_VE_OWNERS = {"calculate_input": ("EPS",), "calculate_denoised": ("EPS", "V_PREDICTION", "EDM"),
              "noise_scaling": ("EPS",), "inverse_noise_scaling": ("EPS",)}
_FLOW_OWNERS = {"calculate_input": ("CONST",), "calculate_denoised": ("CONST",), "noise_scaling": ("CONST",),
                "inverse_noise_scaling": ("CONST",)}


def _owner(cls, attr: str):
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def sampling_space(model_sampling, model_name: str, feature: str) -> str:
    """``"ve"`` (x = x0 + σ·ε) or ``"flow"`` (x = (1 − σ)·x0 + σ·ε) for a ComfyUI ``model_sampling``.

    Raises:
        ValueError: for prediction types whose sampler state is neither (named in the message).
    """
    cls = type(model_sampling)
    kind = None
    for name, owners in (("ve", _VE_OWNERS), ("flow", _FLOW_OWNERS)):
        found = {attr: _owner(cls, attr) for attr in owners}
        if all(c is not None and c.__module__ == comfy.model_sampling.__name__ and c.__name__ in owners[attr]
               for attr, c in found.items()):
            kind = name
    if kind is not None:
        # Probe the state relation itself: catches a noise_scale factor or a patched noise_scaling.
        sigma = torch.tensor([0.5])
        noise, x0 = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0)
        got = float(model_sampling.noise_scaling(sigma, noise.clone(), x0.clone(), max_denoise=False).flatten()[0])
        expected = 2.5 if kind == "ve" else 1.5
        back = float(model_sampling.inverse_noise_scaling(torch.tensor([0.0]), x0.clone()).flatten()[0])
        if abs(got - expected) > 1e-5 or abs(back - 2.0) > 1e-5:
            kind = None
    if kind is None:
        chain = " → ".join(c.__name__ for c in cls.__mro__ if c not in (object, torch.nn.Module))
        raise ValueError(
            f"{feature} supports eps, v-prediction (VE state x = x0 + σ·ε) and rectified-flow/CONST models "
            f"(x = (1 − σ)·x0 + σ·ε), but the '{model_name}' model samples with {chain}, whose noise_scaling "
            f"does not match either. Use a standard SD1.x/SD2/SDXL/SD3/Flux-type model.")
    return kind


# --------------------------------------------------------------------------------------------------
# The denoiser the core sees
# --------------------------------------------------------------------------------------------------


class GuiderDenoiser:
    """k-diffusion style denoiser ``d(x, sigma, **extra_args) -> x0`` on a ComfyUI guider, without
    ComfyUI's inpaint wrapper. ``inner_model`` is the guider (k-diffusion samplers look for
    ``model.inner_model.inner_model.model_sampling``, as on ``KSamplerX0Inpaint``). Counts
    evaluations and honours Cancel on every call."""

    def __init__(self, guider):
        self.inner_model = guider
        self.evaluations = 0

    def __call__(self, x, sigma, model_options=None, seed=None, **_ignored):
        check_interrupt()
        self.evaluations += 1
        return self.inner_model(x, sigma, model_options={} if model_options is None else model_options, seed=seed)


def step_mask_function(guider, sigmas: torch.Tensor, mask: torch.Tensor, model_options: dict):
    """``mask_fn(sigma)`` for the core from the model's ``denoise_mask_function`` (Differential
    Diffusion), called exactly as ComfyUI's inpaint wrapper calls it; None when the model has none."""
    function = model_options.get("denoise_mask_function")
    if function is None:
        return None

    def mask_fn(sigma):
        s = torch.as_tensor(sigma, dtype=sigmas.dtype, device=sigmas.device).reshape(-1).expand(mask.shape[0])
        return function(s, mask, extra_options={"model": guider, "sigmas": sigmas})

    return mask_fn


# --------------------------------------------------------------------------------------------------
# Validation (before any model call)
# --------------------------------------------------------------------------------------------------


def check_inputs(feature: str, noise, latent_image, denoise_mask, sigmas, space, preflight=None) -> None:
    """Refuse what the sampler cannot work with, naming the input and the fix (the core's checks,
    run here so they happen before the guider loads anything)."""
    if denoise_mask is None:
        raise ValueError(f"{feature}: the LATENT has no noise_mask, so there is no known region to keep. "
                         + _HOW_TO_MASK)
    try:
        inpaint.validate(noise, sigmas, latent_image, denoise_mask, space)
        if preflight is not None:
            preflight(int(sigmas.shape[-1]) - 1)
    except ValueError as e:
        raise ValueError(f"{feature}: {e}") from None


# --------------------------------------------------------------------------------------------------
# The SAMPLER
# --------------------------------------------------------------------------------------------------


@dataclass
class RunStats:
    """What the last run of a sampler did (also logged): model evaluations and the core's stats
    (RePaint's ``resamplings`` / ``accepted``)."""

    model_evaluations: int = 0
    extra: dict = field(default_factory=dict)


class InpaintSampler(comfy.samplers.Sampler):
    """A ComfyUI SAMPLER running one of ``alignnoise_core.inpaint``'s sampler functions.

    Args:
        feature: node id, for messages and the log.
        function: the core function ``fn(model, x, sigmas, extra_args, callback, disable, *, known, mask,
            space, generator, mask_fn, stats, **options)``.
        options: the method's keyword options.
        needs_grad: the method takes a vector-Jacobian product through the model (ΠGDM, MCG).
        preflight: ``fn(n_steps)`` raising ValueError for a SIGMAS the method cannot use (RePaint's jump).
        expected_steps: ``fn(n_steps) -> model evaluations`` for the progress bar.
        base_sampler: optional ComfyUI SAMPLER whose step drives the descending moves (RePaint).
        on_stats: called with the :class:`RunStats` of every run (the node's report channel).

    The fresh noise of every method comes from ``extra_args["seed"]`` (the NOISE's seed that
    SamplerCustomAdvanced forwards, as for ComfyUI's ancestral samplers) + 1, on a CPU generator.
    """

    def __init__(self, feature: str, function: Callable, options: dict | None = None, needs_grad: bool = False,
                 preflight: Callable | None = None, expected_steps: Callable | None = None, base_sampler=None,
                 on_stats: Callable | None = None):
        self.feature = feature
        self.function = function
        self.options = dict(options or {})
        self.needs_grad = needs_grad
        self.preflight = preflight
        self.expected_steps = expected_steps
        self.base_sampler = base_sampler
        self.on_stats = on_stats
        self.last_stats = RunStats()

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        base_model = model_wrap.inner_model
        if latent_image is None:
            latent_image = torch.zeros_like(noise)
        if denoise_mask is None:
            denoise_mask = extra_args.get("denoise_mask")
        model_name = type(base_model.model_config).__name__
        kind = sampling_space(base_model.model_sampling, model_name, self.feature)
        space = inpaint.VE if kind == "ve" else inpaint.FLOW
        check_inputs(self.feature, noise, latent_image, denoise_mask, sigmas, space, self.preflight)
        step = ksampler_step(self.base_sampler, self.feature) if self.base_sampler is not None else None
        if self.needs_grad:
            return self._sample_differentiable(model_wrap, sigmas, extra_args, callback, noise, latent_image,
                                               denoise_mask, disable_pbar, space)
        return self._run(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar,
                         space, step)

    def _run(self, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar, space,
             step=None):
        """The core run on a guider whose conds are processed; returns model space like KSAMPLER."""
        ms = guider.inner_model.model_sampling
        mask = denoise_mask.to(latent_image.dtype)
        args = dict(extra_args)
        args["denoise_mask"] = None  # ComfyUI's fixed-noise blending stays off (the core does its own)
        mask_fn = step_mask_function(guider, sigmas, mask, args.get("model_options", {}))
        generator = torch.Generator("cpu").manual_seed(int(args.get("seed") or 0) + 1)
        denoiser = GuiderDenoiser(guider)
        n_steps = len(sigmas) - 1
        total = self.expected_steps(n_steps) if self.expected_steps is not None else n_steps
        k_callback = _progress_callback(callback, total) if callback is not None else None
        options = dict(self.options)
        if step is not None:
            options["step_fn"] = step(denoiser, sigmas, args)
        x = ms.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(guider, sigmas))
        stats: dict = {}
        out = self.function(denoiser, x, sigmas, extra_args=args, callback=k_callback, disable=disable_pbar,
                            known=latent_image, mask=mask, space=space, generator=generator, mask_fn=mask_fn,
                            stats=stats, **options)
        self.last_stats = RunStats(model_evaluations=denoiser.evaluations, extra=stats)
        summary = "".join(f", {k} {v}" for k, v in stats.items() if isinstance(v, (int, float)) and k != "nfe")
        log.info("%s: %d model evaluations over %d SIGMAS steps (%s space%s)", self.feature, denoiser.evaluations,
                 n_steps, space.name, summary)
        if self.on_stats is not None:
            self.on_stats(self.last_stats)
        return ms.inverse_noise_scaling(sigmas[-1], out)

    def _sample_differentiable(self, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                               disable_pbar, space):
        """The same run inside the pack's gradient session (see the module docstring)."""
        args = dict(extra_args)
        args["model_options"] = use_differentiable_attention(args.get("model_options", {}))
        with gradient_session(guider.inner_model):
            out = self._run(guider, sigmas, args, callback, noise, latent_image, denoise_mask, disable_pbar, space)
        return out.detach()


def _progress_callback(callback, steps: int):
    """ComfyUI's ``callback(i, x0, x, total)`` from the core's k-diffusion dicts; one tick per model step.
    (RePaint-style walks revisit levels, so the index is a running count and the total grows if needed.)"""
    state = {"i": 0, "total": max(1, steps)}

    def k_callback(d):
        check_interrupt()
        state["total"] = max(state["total"], int(d.get("total", state["total"])), state["i"] + 1)
        callback(state["i"], d["denoised"], d["x"], state["total"])
        state["i"] += 1

    return k_callback


def ksampler_step(sampler, feature: str = "RePaintSampler") -> Callable:
    """``make(denoiser, sigmas, extra_args) -> step_fn(x, i, i_next, x0)``: RePaint's descending move
    run by any ComfyUI SAMPLER, i.e. a KSAMPLER's ``sampler_function`` on the two-sigma slice
    ``sigmas[i:i_next+1]`` with the run's extra_args (its first model call is served from ``x0``).

    Each call gets its own seed (the run's seed + a call count), so ancestral/SDE samplers draw fresh
    noise per step instead of repeating their first draw. Limits: multistep samplers (dpmpp_2m,
    deis, ipndm, res_multistep, …) lose their history between calls and act as their first-order
    start; samplers with several model calls per step (heun, dpmpp_2s_ancestral, …) cost that many
    evaluations per descending move; dpm_fast / dpm_adaptive plan over the whole schedule and are refused.
    """
    function = getattr(sampler, "sampler_function", None)
    if function is None:
        raise ValueError(f"{feature}: the 'sampler' input must be a KSAMPLER (e.g. from KSamplerSelect); got "
                         f"{type(sampler).__name__}, which cannot be run one step at a time.")
    name = getattr(function, "__name__", "")
    if "dpm_fast" in name or "dpm_adaptive" in name:
        raise ValueError(f"{feature}: dpm_fast / dpm_adaptive plan over the whole schedule and cannot drive single "
                         "RePaint steps; pick another sampler (euler, euler_ancestral, ddpm, dpmpp_2s_ancestral, ...).")
    extra_options = dict(getattr(sampler, "extra_options", {}) or {})

    def make(denoiser, sigmas, extra_args):
        calls = {"n": 0}

        def step_fn(x, i, i_next, x0):
            calls["n"] += 1
            args = dict(extra_args)
            args["seed"] = int(args.get("seed") or 0) + 7919 * calls["n"]
            model = _ServeFirst(denoiser, x, x0)
            return function(model, x, sigmas[i:i_next + 1], extra_args=args, callback=None, disable=True,
                            **extra_options)

        return step_fn

    return make


class _ServeFirst:
    """The denoiser for one base-sampler step: its first call at the step's own state returns the x0
    the core already computed there (no second model evaluation); any other call evaluates."""

    def __init__(self, denoiser, x, x0):
        self.denoiser, self.inner_model, self.x, self.x0 = denoiser, denoiser.inner_model, x, x0

    def __call__(self, x, sigma, **extra_args):
        if self.x0 is not None and x is self.x:
            x0, self.x0 = self.x0, None
            return x0
        return self.denoiser(x, sigma, **extra_args)


def report_text(text: str) -> None:
    """Show ``text`` on the node that is running the sampler (SamplerCustomAdvanced) in the UI, where
    this ComfyUI has progress texts; otherwise nothing (the log has it too)."""
    context = get_executing_context()
    server = getattr(PromptServer, "instance", None)
    send = getattr(server, "send_progress_text", None)
    if context is None or not callable(send) or getattr(server, "client_id", None) is None:
        return
    send(text, context.node_id)


_GRAD_METHODS = ("pigdm", "mcg")


def make_sampler(method: str, feature: str, base_sampler=None, **options) -> InpaintSampler:
    """The SAMPLER of one method (``inpaint.SAMPLERS`` key) with its node options.

    Checks the options that need no model (RePaint's jump, the base sampler) here, so a bad node
    setting fails at the node; SIGMAS-dependent checks run when sampling starts, before any model call."""
    function = inpaint.SAMPLERS[method]
    if base_sampler is not None:
        ksampler_step(base_sampler, feature)  # refuse unusable samplers now
    preflight = None
    if method == "repaint":
        if options.get("schedule", "fixed") == "fixed":
            def preflight(n):
                inpaint.schedule.check_jump_fits(n, options["jump_length"], options["jump_n_sample"])
        else:
            def preflight(n):
                inpaint.schedule.check_jump_fits(n, options["adaptive_length"], options["adaptive_u_max"],
                                                 "SIGMAS (adaptive resampling)")
    elif method == "ddnm" and options.get("travel_repeat", 1) > 1:
        def preflight(n):
            inpaint.schedule.check_jump_fits(n, options["travel_length"], options["travel_repeat"])

    def expected_steps(n):
        return inpaint.expected_nfe(method, n, **options)

    def on_stats(stats: RunStats):
        extra = stats.extra
        text = f"{feature}: {stats.model_evaluations} model evaluations"
        if "resamplings" in extra:
            text += f", {extra['resamplings']} resamplings"
        if "accepted" in extra:
            text += f" ({extra['accepted']} candidates accepted)"
        report_text(text)

    return InpaintSampler(feature, function, options, needs_grad=method in _GRAD_METHODS, preflight=preflight,
                          expected_steps=expected_steps, base_sampler=base_sampler, on_stats=on_stats)
