"""AlignNoise stage 2 (FrequencyNoiseRefine) in ComfyUI: the NOISE that makes a second sampler pass
start from the frequency-refined first pass. The math is in :mod:`alignnoise_core.frequency`."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import frequency, validation
from .common import latent_format, model_sampling, sampling_parameterization


class RefinedNoise:
    """A ComfyUI ``NOISE`` that makes the sampler start exactly from a refined latent.

    ``SamplerCustomAdvanced`` starts from ``x = noise_scaling(σ0, noise, latent_in)`` (``latent_in``
    = ``process_latent_in(latent)``, or zeros for an all-zero latent). ``generate_noise`` inverts that
    for whatever latent the sampler is given, so the second pass may be fed an empty latent, the
    first pass's output, or the inpaint latent: its first state is ``x = sampler_start(z', σ0)`` in
    every case, as long as its sigmas start at ``σ0`` (the model's sigma_max unless ``sigmas`` was
    given to the node).

    Args:
        refined: ``z'``, the refined latent in normalised (VP) form, CPU float32.
        sigma: ``σ0``, the first sigma of the second pass.
        max_denoise: whether ``σ0`` is the model's sigma_max (the sampler then scales noise by
            ``√(1+σ²)``), decided exactly as ``comfy.samplers.Sampler.max_denoise``.
        parameterization: ``"eps"`` or ``"flow"``.
        process_in: the model's ``latent_format.process_in``.
        seed: reported to the sampler (ancestral/SDE samplers draw their extra noise from it).
    """

    def __init__(self, refined: torch.Tensor, sigma: float, max_denoise: bool, parameterization: str,
                 process_in: Callable[[torch.Tensor], torch.Tensor], seed: int):
        self.refined = refined.detach().to("cpu", torch.float32).clone()
        self.sigma = float(sigma)
        self.max_denoise = bool(max_denoise)
        self.parameterization = parameterization
        self.process_in = process_in
        self.seed = int(seed)

    def start_state(self) -> torch.Tensor:
        """The model-space state the sampler will start from (``x = z'·√(1+σ²)`` for eps models)."""
        return frequency.sampler_start(self.refined.double(), self.sigma, self.parameterization).float()

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.refined.shape):
            raise ValueError(
                f"FrequencyNoiseRefine made its NOISE for a latent of shape {tuple(self.refined.shape)}, but the "
                f"second sampler got {tuple(samples.shape)}. Give the second SamplerCustomAdvanced a latent of the "
                f"same size and batch as the first pass (e.g. the first pass's output)."
            )
        latent = samples.detach().to("cpu", torch.float64)
        # Mirror CFGGuider.inner_sample: an all-zero latent is not shifted by process_latent_in.
        latent_in = self.process_in(latent) if torch.count_nonzero(latent) > 0 else torch.zeros_like(latent)
        x_start = frequency.sampler_start(self.refined.double(), self.sigma, self.parameterization)
        noise = frequency.noise_for_start(x_start, latent_in.double(), self.sigma, self.parameterization,
                                          self.max_denoise)
        return noise.to(torch.float32)


def frequency_refine(model, samples: dict, noise, mask: torch.Tensor | None = None, filter_type: str = "butterworth",
                     d_s: float = 0.25, order: int = 4, d_t: float = 0.25, seed: int = 0,
                     sigmas: torch.Tensor | None = None) -> tuple[RefinedNoise, dict]:
    """AlignNoise stage 2 in ComfyUI: re-noise the first pass with its initial NOISE, mix frequencies
    in the outpainted region, and return a NOISE for the second pass plus a small info dict.

    Args:
        model: the MODEL (its model_sampling gives sigma_max and the parameterisation, its latent
            format ``process_latent_in``).
        samples: the first pass's LATENT (``output`` or ``denoised_output`` of the first sampler).
        noise: the first pass's NOISE; ``noise.generate_noise(samples)`` must give its initial noise.
        mask: 1 = outpainted (MASK, any resolution); falls back to ``samples["noise_mask"]``; with
            neither, the whole latent is refined (plain FreeInit).
        sigmas: optional schedule of the second pass; its first sigma is the re-noising level.
    """
    kind = sampling_parameterization(model, "FrequencyNoiseRefine")
    ms = model_sampling(model)
    sigma_max = float(ms.sigma_max)
    if sigmas is not None and len(sigmas) > 0:
        sigma0 = float(sigmas[0])
        if sigma0 <= 0:
            raise ValueError("The sigmas given to FrequencyNoiseRefine start at 0: nothing to re-noise.")
    else:
        sigma0 = sigma_max
    max_denoise = math.isclose(sigma_max, sigma0, rel_tol=1e-05) or sigma0 > sigma_max  # as Sampler.max_denoise
    if kind == "flow":
        sigma0 = min(sigma0, 1.0)
    lat = validation.require_latent(samples, "the 'samples' LATENT")
    if getattr(lat, "is_nested", False):
        raise ValueError("FrequencyNoiseRefine does not support nested (multi-part) latents.")
    if lat.ndim not in (4, 5):
        raise ValueError(f"FrequencyNoiseRefine needs a 4-D or 5-D LATENT, got shape {tuple(lat.shape)}.")
    initial = noise.generate_noise(samples)
    if tuple(initial.shape) != tuple(lat.shape):
        raise ValueError(
            f"The NOISE gives shape {tuple(initial.shape)} for this latent of shape {tuple(lat.shape)}; connect the "
            f"NOISE that drove the first pass."
        )
    validation.require_finite(initial, "the 'noise' NOISE")
    if mask is None:
        mask = samples.get("noise_mask")
    validation.require_finite(mask, "the 'mask'")
    if sigmas is not None:
        validation.require_finite(sigmas, "the 'sigmas'")
    lf = latent_format(model)
    x0 = lf.process_in(lat.detach().to("cpu", torch.float64))
    refined = frequency.refine(
        x0, initial.detach().to("cpu", torch.float64), sigma0, mask=mask, filter_type=filter_type, d_s=d_s,
        order=order, d_t=d_t, seed=seed, parameterization=kind,
    )
    info = {"sigma": sigma0, "max_denoise": max_denoise, "parameterization": kind, "masked": mask is not None}
    return RefinedNoise(refined, sigma0, max_denoise, kind, lf.process_in, seed), info
