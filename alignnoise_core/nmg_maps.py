"""Noise Map Guidance's noise maps: the DDIM inversion trajectory of a real image, keyed by sigma
(Cho et al., ICLR 2024; ``hansam95/NMG`` ``NMGPipeline.invert``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .nmg import (DEFAULT_GRAD_SCALE, DEFAULT_NOISE_MAP_SCALE, REFERENCE_NUMEL, SIGMA_RTOL, EpsFn, ddim_step,
                  guidance_active, nmg_step, validate_params)


@dataclass(frozen=True)
class NoiseMaps:
    """The DDIM-inversion trajectory of one latent, keyed by sigma, in VE model space.

    Immutable by convention: every consumer reads it, nobody writes it, so one inversion can serve
    any number of edits.

    Attributes:
        sigmas: the sampling schedule, descending, float32 CPU (usually ending at 0).
        latents: ``latents[i]`` is the inverted latent at ``sigmas[i]`` (VE: ``x = x0 + sigma * eps``);
            the entry at sigma 0 is the clean source latent, the one at ``sigmas[0]`` is the inverted
            starting point of the reverse process.
        meta: free-form description (model family, prompt shape ...), shown in errors.
    """

    sigmas: torch.Tensor
    latents: tuple[torch.Tensor, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.sigmas.ndim != 1 or len(self.sigmas) != len(self.latents) or len(self.latents) < 2:
            raise ValueError("NoiseMaps needs a 1-D sigma schedule with one latent per sigma (at least 2).")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.latents[0].shape)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def index(self, sigma: float) -> int | None:
        """Position of ``sigma`` in the schedule (relative tolerance 1e-4), or None."""
        s = float(sigma)
        diff = (self.sigmas.double() - s).abs()
        i = int(torch.argmin(diff))
        tol = SIGMA_RTOL * max(abs(s), abs(float(self.sigmas[i]))) + 1e-8
        return i if float(diff[i]) <= tol else None

    def require_index(self, sigma: float) -> int:
        i = self.index(sigma)
        if i is None:
            raise ValueError(
                f"Noise Map Guidance: the sampler asked for sigma={float(sigma):.6g}, which is not in the schedule "
                f"the noise maps were inverted with ({_fmt_sigmas(self.sigmas)}). Feed NMGInvert and the sampler "
                f"the same SIGMAS (same scheduler and steps)."
            )
        return i

    def latent_at(self, sigma: float) -> torch.Tensor:
        return self.latents[self.require_index(sigma)]

    def check_schedule(self, sigmas: torch.Tensor) -> int:
        """Check that ``sigmas`` is a contiguous run of this schedule; return the offset of its start."""
        sig = sigmas.detach().float().cpu().flatten()
        if len(sig) < 2:
            raise ValueError("Noise Map Guidance needs at least one sampling step (2 sigmas).")
        start = self.index(float(sig[0]))
        ok = start is not None and start + len(sig) <= len(self.sigmas)
        if ok:
            ref = self.sigmas[start : start + len(sig)].double()
            ok = bool(torch.all((ref - sig.double()).abs() <= SIGMA_RTOL * ref.abs() + 1e-8))
        if not ok:
            raise ValueError(
                f"Noise Map Guidance: the sampler's sigmas ({_fmt_sigmas(sig)}) do not match the schedule the noise "
                f"maps were inverted with ({_fmt_sigmas(self.sigmas)}). Connect the same SIGMAS (or the same "
                f"BasicScheduler settings) to NMGInvert and to SamplerCustomAdvanced."
            )
        return start


def _fmt_sigmas(s: torch.Tensor) -> str:
    s = [float(v) for v in s.flatten()]
    head = ", ".join(f"{v:.4g}" for v in s[:3])
    return f"{len(s)} sigmas: {head}, ..., {s[-1]:.4g}" if len(s) > 4 else ", ".join(f"{v:.4g}" for v in s)


def validate_schedule(sigmas: torch.Tensor) -> torch.Tensor:
    """Check an inversion/sampling schedule (1-D, strictly descending, >= 0); return a float32 CPU copy."""
    s = torch.as_tensor(sigmas).detach().flatten().to("cpu", torch.float32).clone()
    if len(s) < 2:
        raise ValueError("SIGMAS must contain at least 2 values (1 step).")
    if not bool(torch.all(s[:-1] > s[1:])) or float(s[-1]) < 0:
        raise ValueError(
            "SIGMAS must be strictly descending and non-negative, as BasicScheduler outputs them (do not flip "
            "them: NMGInvert runs the inversion over the ascending order itself)."
        )
    return s


def ddim_invert(
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    predict_eps: EpsFn,
    sigma_floor: float = 0.0,
    callback: Callable[[int, int], None] | None = None,
    meta: dict | None = None,
) -> NoiseMaps:
    """Deterministic DDIM inversion: Euler over the ascending ``sigmas``, recording every latent.

    Args:
        x0: the clean source latent in model space (``z*_0``; SD: VAE latent times 0.18215).
        sigmas: the descending sampling schedule the edit will use (e.g. from ``BasicScheduler``).
        predict_eps: ``(x, sigma) -> eps`` with the *source* prompt and no CFG (reference: s = 1).
        sigma_floor: where the model is evaluated when the schedule's sigma is 0 (the clean latent);
            use the model's smallest training sigma (0.0292 for SD), as diffusers' inversion
            evaluates at timestep 0.
        callback: ``callback(i, total)`` after each step (progress, interrupt).
        meta: stored in the maps.

    Returns:
        The :class:`NoiseMaps` (``latents[-1]`` is ``x0`` itself when the schedule ends at 0).
    """
    s = validate_schedule(sigmas)
    asc = torch.flip(s, dims=[0])
    x = x0.detach().float().clone()
    trajectory = [x]
    total = len(asc) - 1
    for i in range(total):
        sig, sig_next = float(asc[i]), float(asc[i + 1])
        eps = predict_eps(x, max(sig, float(sigma_floor)))
        x = ddim_step(x, eps.detach().float(), sig, sig_next)
        trajectory.append(x)
        if callback is not None:
            callback(i + 1, total)
    return NoiseMaps(sigmas=s, latents=tuple(reversed(trajectory)), meta=dict(meta or {}))


def nmg_sample(
    maps: NoiseMaps,
    predict_eps_uncond: EpsFn,
    predict_eps_text: EpsFn,
    grad_scale: float = DEFAULT_GRAD_SCALE,
    noise_map_scale: float = DEFAULT_NOISE_MAP_SCALE,
    loss: str = "l1",
    start: float = 0.0,
    end: float = 1.0,
    reference_numel: int | None = REFERENCE_NUMEL,
    x_start: torch.Tensor | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The full NMG reverse process from the inverted latent (host-free loop; ComfyUI uses the guider).

    Inside the guidance window each step is :func:`nmg_step`; outside it, a plain CFG DDIM step.

    Args:
        maps: the inversion's :class:`NoiseMaps` (its sigmas are the schedule).
        x_start: start latent (default: the inverted latent ``maps.latents[0]``).
        start, end: fractions of the steps where guidance applies.
        Other arguments as in :func:`nmg_step`.

    Returns:
        The VE latent at ``maps.sigmas[-1]`` (the clean latent when the schedule ends at 0).
    """
    validate_params(grad_scale, noise_map_scale, 0.0, loss, start, end)
    x = (maps.latents[0] if x_start is None else x_start).detach().float().clone()
    total = maps.steps
    for i in range(total):
        sig, sig_next = float(maps.sigmas[i]), float(maps.sigmas[i + 1])
        if guidance_active(i, total, start, end):
            x = nmg_step(x, sig, sig_next, maps.latents[i + 1], predict_eps_uncond, predict_eps_text, grad_scale,
                         noise_map_scale, loss, reference_numel).x_next
        else:
            x = ddim_step(x, predict_eps_text(x, sig).detach().float(), sig, sig_next)
        if callback is not None:
            callback(i + 1, total)
    return x


def ddim_sample(x: torch.Tensor, sigmas: Sequence[float] | torch.Tensor, predict_eps: EpsFn) -> torch.Tensor:
    """Plain deterministic DDIM (Euler) sampling over descending ``sigmas`` (the baseline)."""
    s = validate_schedule(torch.as_tensor(sigmas))
    x = x.detach().float().clone()
    for i in range(len(s) - 1):
        x = ddim_step(x, predict_eps(x, float(s[i])).detach().float(), float(s[i]), float(s[i + 1]))
    return x
