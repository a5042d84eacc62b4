"""ZoomOutpaintKeyframes in ComfyUI: the ComfyUI host of :func:`alignnoise_core.recipes.zoom_keyframe_loop`
and :func:`alignnoise_core.recipes.alignnoise_passes` (geometry in :mod:`alignnoise_core.zoom`)."""

from __future__ import annotations

import logging

import comfy.sample
import comfy.samplers
import torch

from .. import options, validation
from .. import zoom as zoom_core
from ..recipes import alignnoise_passes, zoom_keyframe_loop
from .common import (Progress, TensorNoise, calculate_sigmas, check_interrupt, decode_pixels, intermediate_device,
                     is_inpaint_model, model_info, outpaint_inputs, random_noise)
from .stage1 import attention_balance
from .stage2 import frequency_refine

log = logging.getLogger("alignnoise")


class _ComfyOutpaintPasses:
    """One keyframe's outpaint as a host of the two-pass recipe: ComfyUI's own sampling
    (``comfy.sample.sample_custom``, i.e. ``SamplerCustom``) on the keyframe's latent."""

    def __init__(self, model, positive, negative, latent, mask, sigmas, sampler, cfg, seed, balance_iterations,
                 on_step):
        self.model, self.positive, self.negative, self.latent, self.mask = model, positive, negative, latent, mask
        self.sigmas, self.sampler, self.cfg, self.seed = sigmas, sampler, cfg, seed
        self.balance_iterations, self.on_step = balance_iterations, on_step

    def optimize_noise(self, z):
        run = attention_balance(self.model, self.positive, self.negative, self.latent, self.sigmas, self.seed,
                                mask=self.mask[None], cfg=self.cfg, iterations=self.balance_iterations)
        return run.noise, run.result

    def sample(self, start, steps, pass_index):
        return comfy.sample.sample_custom(self.model, start, self.cfg, self.sampler, self.sigmas, self.positive,
                                          self.negative, self.latent["samples"], noise_mask=self.latent["noise_mask"],
                                          callback=self.on_step, disable_pbar=True, seed=self.seed)

    def refine(self, samples, noise, pass_index):
        refined, _ = frequency_refine(self.model, {"samples": samples, "noise_mask": self.latent["noise_mask"]},
                                      TensorNoise(noise, self.seed, "ZoomOutpaintKeyframes"), mask=self.mask[None],
                                      seed=self.seed, sigmas=self.sigmas)
        return refined.generate_noise(self.latent)


def zoom_outpaint_keyframes(model, positive, negative, vae, image: torch.Tensor, zoom_steps: int, zoom: float,
                            seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                            denoise: float = 1.0, overlap: float = 8.0, mask_blur: float = 8.0,
                            fill: str = "reflect", alignnoise: str = "off", balance_iterations: int = 10,
                            paste_blend: str = "alpha") -> torch.Tensor:
    """Infinite-zoom keyframes: shrink the previous keyframe into the centre, outpaint the border, paste back.

    Each outpaint runs ComfyUI's own sampling: 9-channel inpainting models get
    ``InpaintModelConditioning``'s concat conditioning, all models the latent ``noise_mask``.

    Args:
        alignnoise: ``off``, or AlignNoise for every outpaint: ``stage 1`` optimises the initial noise
            (attention balance), ``stage 2`` samples twice with frequency-refined noise, ``stages 1+2``.
        balance_iterations: stage-1 optimisation steps.
        paste_blend: ``alpha`` (feathered paste of the known centre), ``poisson`` or ``color_match``
            (the generated border's colours matched to the centre at the seam, SeamlessComposite).

    Returns:
        IMAGE ``[zoom_steps + 1, H, W, C]``: the start image then each zoomed-out keyframe.
    """
    options.ZOOM_ALIGNNOISE.check(alignnoise, "alignnoise")
    options.ZOOM_FILL.check(fill, "fill")
    options.PASTE_BLEND.check(paste_blend, "paste_blend")
    validation.require_image(image, "image")
    if image.shape[0] != 1:
        raise ValueError(f"ZoomOutpaintKeyframes takes ONE start image [1,H,W,C], got shape {tuple(image.shape)}; "
                         f"pick one with ImageFromBatch.")
    _, height, width, channels = image.shape
    zoom_core.check_keyframe_args(height, width, zoom, zoom_steps)
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}.")
    if alignnoise != "off":
        model_info(model, "ZoomOutpaintKeyframes with AlignNoise stages")  # clear error for unsupported models
    is_inpaint = is_inpaint_model(model)
    use_stage1 = alignnoise in ("stage 1", "stages 1+2")
    passes = 2 if alignnoise in ("stage 2", "stages 1+2") else 1
    progress = Progress(zoom_steps * steps * passes)  # stage 1 reports its own iterations
    sigmas = calculate_sigmas(model, scheduler, steps, denoise)
    sampler = comfy.samplers.sampler_object(sampler_name)
    log.info("ZoomOutpaintKeyframes: %d steps of %.3gx on %dx%d (%s model, alignnoise %s)", zoom_steps, zoom,
             width, height, "9-channel inpaint" if is_inpaint else "4-channel + noise_mask", alignnoise)

    def outpaint(canvas, mask, k):
        check_interrupt()
        pos, neg, latent = outpaint_inputs(positive, negative, vae, canvas[None], mask, is_inpaint)
        step_seed = int(seed) + k
        host = _ComfyOutpaintPasses(model, pos, neg, latent, mask, sigmas, sampler, cfg, step_seed,
                                    balance_iterations, lambda *a: progress.update(1))
        samples, _, _ = alignnoise_passes(host, random_noise(latent, step_seed), [steps] * passes,
                                          attention_balance=use_stage1)
        return decode_pixels(vae, samples, height, width, channels, "canvas")

    start = image[0].detach().to("cpu", torch.float32).clone()
    keyframes = zoom_keyframe_loop(start, zoom_steps, zoom, outpaint, overlap=overlap, mask_blur=mask_blur, fill=fill,
                                   blend=paste_blend)
    return torch.stack(keyframes).to(intermediate_device())
