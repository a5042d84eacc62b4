"""Noise Map Guidance in ComfyUI: NMGInvert's DDIM inversion and the NMGGuidance GUIDER.
The math is in :mod:`alignnoise_core.nmg` (Cho et al., ICLR 2024, ``hansam95/NMG``)."""

from __future__ import annotations

import logging

import comfy.k_diffusion.sampling as kds
import comfy.model_sampling
import comfy.samplers
import torch

from .. import nmg, nmg_maps, validation
from .common import (ModelInfo, Progress, SamplerContext, check_interrupt, gradient_session, intermediate_device,
                     latent_format, model_info, model_sampling, release_model, run_sampler,
                     use_differentiable_attention)

log = logging.getLogger("alignnoise")


def _nmg_check_model(model, feature: str) -> ModelInfo:
    """SD1.x/SD2.x/SDXL with a VE-type sampler state (x = x0 + sigma * eps: eps and v-prediction)."""
    info = model_info(model, feature)
    ms = model_sampling(model)
    if not isinstance(ms, comfy.model_sampling.EPS) or isinstance(ms, comfy.model_sampling.CONST):
        raise ValueError(f"{feature} needs an eps- or v-prediction model (SD1.x/SD2.x/SDXL); this model samples with "
                         f"'{type(ms).__name__}', which the DDIM inversion formulas do not cover.")
    return info


def _nmg_latent_space(model) -> str:
    return type(latent_format(model)).__name__


def nmg_invert(model, positive, latent: dict, sigmas: torch.Tensor):
    """DDIM inversion of ``latent`` with the source prompt: Euler over the ascending ``sigmas``.

    Runs as a custom Sampler through ``CFGGuider.sample`` (GPU loading, cond processing, hooks,
    wrappers), cfg 1 (the reference inverts without CFG), one UNet call per step with a ComfyUI
    progress bar and Cancel. At sigma 0 the model is evaluated at its smallest training sigma.

    Returns:
        ``(maps, latent_out)``: the :class:`~.nmg_maps.NoiseMaps` (model space, CPU) and a LATENT holding the
        inverted latent (the sampler's start when fed with ``DisableNoise`` and the same sigmas).
    """
    info = _nmg_check_model(model, "NMGInvert")
    samples = validation.require_latent(latent, "the 'latent_image' LATENT")
    if getattr(samples, "is_nested", False) or samples.ndim != 4:
        raise ValueError(f"NMGInvert needs an image LATENT [B,C,h,w], got shape {tuple(samples.shape)}.")
    if latent.get("noise_mask") is not None:
        raise ValueError("NMGInvert inverts the whole latent; this LATENT has a noise_mask. Use the plain VAEEncode "
                         "output (no SetLatentNoiseMask / VAEEncodeForInpaint).")
    validation.require_finite(sigmas, "the 'sigmas'")
    s = nmg_maps.validate_schedule(sigmas)
    if float(s[-1]) != 0.0:
        raise ValueError("NMGInvert needs SIGMAS that end at 0 (the clean image), e.g. from BasicScheduler; got a "
                         f"schedule ending at {float(s[-1]):.4g} (a SplitSigmas high part?).")
    steps = len(s) - 1
    progress = Progress(steps)
    out: dict = {}

    def fn(ctx: SamplerContext):
        b = ctx.latent_image.shape[0]

        def predict_eps(x, sigma):
            ts = torch.full((b,), float(sigma), device=x.device, dtype=torch.float32)
            (den,) = ctx.calc_cond_batch(["positive"], x, ts)
            return (x - den.float()) / float(sigma)

        maps = nmg_maps.ddim_invert(
            ctx.latent_image.float(), s, predict_eps, sigma_floor=float(ctx.base_model.model_sampling.sigma_min),
            callback=lambda i, n: progress.update(1))
        out["maps"] = maps
        return maps.latents[0]

    inverted = run_sampler(model, positive, positive, 1.0, samples, s, fn)
    raw = out["maps"]
    meta = {"family": info.family, "latent_space": _nmg_latent_space(model), "shape": tuple(samples.shape)}
    latents = tuple(t.detach().to("cpu", torch.float32) for t in raw.latents)
    maps = nmg_maps.NoiseMaps(sigmas=raw.sigmas, latents=latents, meta=meta)
    latent_out = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
    latent_out["samples"] = inverted.to(intermediate_device())
    return maps, latent_out


_NMG_DETERMINISTIC = ("euler", "ddim")


def _nmg_check_sampler(sampler) -> None:
    """Only plain Euler (= DDIM, eta 0) keeps NMG's transition intact: one model call per maps sigma."""
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", type(sampler).__name__).removeprefix("sample_")
    extra = getattr(sampler, "extra_options", {}) or {}
    if isinstance(sampler, comfy.samplers.KSAMPLER) and fn is kds.sample_euler and float(extra.get("s_churn", 0)) == 0:
        return
    if any(k in name for k in ("ancestral", "sde", "ddpm", "lcm", "er_sde", "sa_solver")) or extra.get("s_churn"):
        why = "it injects fresh noise at every step, which destroys the deterministic inversion trajectory"
    else:
        why = "it is not a single first-order step per sigma (NMG replaces each step with its own DDIM double step)"
    raise ValueError(f"NMGGuidance needs the deterministic DDIM sampler: pick 'euler' or 'ddim' in KSamplerSelect. "
                     f"The sampler '{name}' cannot be used because {why}.")


class NMGGuider(comfy.samplers.CFGGuider):
    """A GUIDER whose every step is NMG's Step A (noise map guidance) + Step B (text CFG).

    ``predict_noise`` returns the x0 that makes the sampler's Euler step land exactly on the NMG
    result (see :func:`~.nmg.effective_x0`); outside the guidance window it is a plain CFG step.
    """

    def __init__(self, model_patcher, maps, grad_scale, noise_map_scale, loss, start, end):
        super().__init__(model_patcher)
        self.maps = maps
        self.nmg = dict(grad_scale=float(grad_scale), noise_map_scale=float(noise_map_scale), loss=loss)
        self.window = (float(start), float(end))
        self.run = None

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        _nmg_check_sampler(sampler)
        validation.require_finite(latent_image, "the LATENT given to SamplerCustomAdvanced")
        if getattr(latent_image, "is_nested", False) or tuple(latent_image.shape) != self.maps.shape:
            raise ValueError(f"NMGGuidance: the latent has shape {tuple(latent_image.shape)} but the noise maps "
                             f"were inverted from a latent of shape {self.maps.shape}. Sample NMGInvert's "
                             f"'latent' output (same image size and batch).")
        if denoise_mask is not None:
            raise ValueError("NMGGuidance: the latent has a noise_mask; NMG edits the whole latent. Use "
                             "NMGInvert's latent output directly.")
        if noise is not None and torch.count_nonzero(noise) > 0:
            raise ValueError("NMGGuidance starts from the inverted latent and must not get extra noise: connect "
                             "DisableNoise to SamplerCustomAdvanced's noise input.")
        self.maps.check_schedule(sigmas)
        self.run = {"start_checked": False}
        try:
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
                                  seed)
        finally:
            self.run = None
            release_model(self.model_patcher)  # unload the clone: nothing of this run stays loaded

    def _cfg_x0(self, x, timestep, model_options, seed):
        return comfy.samplers.CFGGuider.predict_noise(self, x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        if self.run is None:
            raise ValueError("NMGGuidance's GUIDER only works through its own sample() (SamplerCustomAdvanced).")
        check_interrupt()
        maps = self.maps
        sigma = float(timestep.flatten()[0])
        i = maps.require_index(sigma)
        if i + 1 >= len(maps.sigmas):
            raise ValueError(f"NMGGuidance: sigma {sigma:.4g} is the last of the noise maps' schedule; there is "
                             f"no step after it. Use the same SIGMAS for NMGInvert and the sampler.")
        sigma_next = float(maps.sigmas[i + 1])
        if not self.run["start_checked"]:
            self.run["start_checked"] = True
            ref = maps.latents[i].to(x.device, torch.float32)
            if float((x.float() - ref).abs().mean()) > 1e-3 * (float(ref.abs().mean()) + 1e-6):
                log.warning("NMGGuidance: the sampler does not start from the inverted latent of these noise "
                            "maps; connect NMGInvert's latent output and DisableNoise.")
        if not nmg.guidance_active(i, maps.steps, *self.window):
            return self._cfg_x0(x, timestep, model_options, seed)
        base = self.inner_model
        negative = self.conds.get("negative")
        mo_grad = use_differentiable_attention(model_options)

        def eps_uncond(xv, s):
            # Called by the core inside inference_mode(False) + enable_grad; gradients w.r.t. the latent only.
            with gradient_session(base):
                (den,) = comfy.samplers.calc_cond_batch(base, [negative], xv, timestep.detach().clone(), mo_grad)
            if xv.requires_grad and den.grad_fn is None:  # x0 must depend on the latent via the UNet
                raise ValueError(nmg._NOT_DIFFERENTIABLE)
            return (xv - den.float()) / sigma

        def eps_text(xv, s):
            return (xv - self._cfg_x0(xv.to(x.dtype), timestep, model_options, seed).float()) / sigma

        target = maps.latents[i + 1].to(x.device, torch.float32)
        res = nmg.nmg_step(x.float(), sigma, sigma_next, target, eps_uncond, eps_text, **self.nmg)
        return nmg.effective_x0(x.float(), res.x_next, sigma, sigma_next).to(x.dtype)


def nmg_guider(model, positive, negative, maps, cfg: float = 10.0, grad_scale: float = 5000.0,
               noise_map_scale: float = 10.0, loss: str = "l1", start: float = 0.0, end: float = 1.0):
    """Build the NMG GUIDER for ``SamplerCustomAdvanced`` (DisableNoise, euler/ddim, the maps' sigmas).

    The model is cloned (the input MODEL is untouched, its patches are kept); Step A's gradient runs
    in :func:`~.common.gradient_session`; the clone is unloaded after each sampling run.
    """
    if not isinstance(maps, nmg_maps.NoiseMaps):
        raise ValueError(f"noise_maps must come from NMGInvert, got {type(maps).__name__}.")
    nmg.validate_params(grad_scale, noise_map_scale, cfg, loss, start, end)
    _nmg_check_model(model, "NMGGuidance")
    space = _nmg_latent_space(model)
    if maps.meta.get("latent_space", space) != space:
        raise ValueError(f"These noise maps were inverted with a {maps.meta.get('family')} model "
                         f"({maps.meta.get('latent_space')} latents) but NMGGuidance got a model with {space} latents. "
                         f"Use the same model family for NMGInvert and NMGGuidance.")
    guider = NMGGuider(model.clone(), maps, grad_scale, noise_map_scale, loss, start, end)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider
