"""The noise parameterisation of a sampler's state: ``x = α(σ)·x0 + s(σ)·ε``.

ComfyUI's samplers work in one space per model family (``comfy/model_sampling.py``):

* EPS and V_PREDICTION models (SD1.x, SD2.x, SDXL): variance exploding, α = 1, s = σ
  (``noise_scaling``: ``latent + σ·noise``). The VP state of DDPM papers is ``x/√(1+σ²)`` with
  ``ᾱ = 1/(1+σ²)``, so every VP formula below is the paper's one rewritten with α and s.
* CONST (rectified flow: SD3, Flux, Qwen-Image): α = 1 − σ, s = σ.

Coefficients are plain Python floats (one σ per step for the whole batch), tensors only meet them
in the final linear combinations.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


class NoiseSpace:
    """``x = α(σ)·x0 + s(σ)·ε`` given by two callables ``float -> float``.

    Args:
        alpha: α(σ), the signal scale (1 at σ = 0).
        scale: s(σ), the noise scale (0 at σ = 0).
        name: shown in error messages and bench tables.
    """

    def __init__(self, alpha: Callable[[float], float], scale: Callable[[float], float], name: str = "custom"):
        self._alpha, self._scale, self.name = alpha, scale, name

    def __repr__(self) -> str:
        return f"NoiseSpace({self.name})"

    def alpha(self, sigma) -> float:
        return float(self._alpha(float(sigma)))

    def scale(self, sigma) -> float:
        return float(self._scale(float(sigma)))

    def coeffs(self, sigma) -> tuple[float, float]:
        return self.alpha(sigma), self.scale(sigma)

    def ve_sigma(self, sigma) -> float:
        """The equivalent variance-exploding σ̄ = s/α (DiffPIR's σ̄_t = √(1−ᾱ)/√ᾱ); inf where α = 0."""
        a, s = self.coeffs(sigma)
        return s / a if a > 0 else math.inf

    def noise_known(self, y: torch.Tensor, sigma, noise: torch.Tensor) -> torch.Tensor:
        """``α·y + s·n``: the known latent brought to level σ (RePaint's injection)."""
        a, s = self.coeffs(sigma)
        return y * a + noise * s if s > 0 else y * a

    def eps(self, x: torch.Tensor, x0: torch.Tensor, sigma) -> torch.Tensor:
        """The noise implied by a state and its x0 prediction, ``(x − α·x0)/s`` (0 at s = 0)."""
        a, s = self.coeffs(sigma)
        if s <= 0:
            return torch.zeros_like(x)
        return (x - x0 * a) / s

    def renoise(self, x_lo: torch.Tensor, sigma_lo, sigma_hi, noise: torch.Tensor) -> torch.Tensor:
        """The forward (Markov) transition from level ``sigma_lo`` up to ``sigma_hi``:
        ``x_hi = (α_hi/α_lo)·x_lo + √(s_hi² − (α_hi/α_lo)²·s_lo²)·n``. Its marginal is
        ``α_hi·x0 + s_hi·ε`` whenever ``x_lo``'s is ``α_lo·x0 + s_lo·ε`` (RePaint's ``undo``)."""
        a_lo, s_lo = self.coeffs(sigma_lo)
        a_hi, s_hi = self.coeffs(sigma_hi)
        if a_lo <= 0:
            if s_hi < s_lo:
                raise ValueError(f"renoise goes up in noise, got σ {float(sigma_lo)} -> {float(sigma_hi)}")
            return noise * s_hi  # α_lo = 0 means pure noise already
        ratio = a_hi / a_lo
        var = s_hi * s_hi - ratio * ratio * s_lo * s_lo
        if var < -1e-9 * max(s_hi * s_hi, 1e-30):
            raise ValueError(f"renoise goes up in noise, got σ {float(sigma_lo)} -> {float(sigma_hi)}")
        return x_lo * ratio + noise * math.sqrt(max(var, 0.0))

    def posterior_std(self, sigma, sigma_next) -> float:
        """Standard deviation of the DDPM posterior q(x_next | x, x0) (σ_next < σ), the η = 1 noise of DDIM."""
        a, s = self.coeffs(sigma)
        a_n, s_n = self.coeffs(sigma_next)
        if s_n <= 0 or s <= 0:
            return 0.0
        ratio = a / a_n
        b2 = max(s * s - ratio * ratio * s_n * s_n, 0.0)
        return s_n * math.sqrt(b2) / s

    def ddim_step(self, x: torch.Tensor, x0: torch.Tensor, sigma, sigma_next, eta: float,
                  draw: Callable[[], torch.Tensor], eps: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM(η) from σ to σ_next: ``α_next·x0 + √(s_next² − c²)·ε̂ + c·n`` with ``c = η·posterior_std``.

        η = 1 is the DDPM ancestral (posterior) step of RePaint (with ComfyUI's ``ddpm`` variance
        β̃), η = 0 the deterministic DDIM step. ``draw()`` is called only when fresh noise is used,
        so identical samplers consume the same noise. ``eps`` defaults to ``(x − α·x0)/s``.
        """
        a_n, s_n = self.coeffs(sigma_next)
        if s_n <= 0:
            return x0 * a_n
        e = self.eps(x, x0, sigma) if eps is None else eps
        c = eta * self.posterior_std(sigma, sigma_next)
        out = x0 * a_n + e * math.sqrt(max(s_n * s_n - c * c, 0.0))
        if c > 0:
            out = out + draw() * c
        return out

    def mix_step(self, x0: torch.Tensor, eps: torch.Tensor, sigma_next, fresh: float,
                 draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """DDNM's η-mix / DiffPIR's ζ step: ``α_next·x0 + s_next·(√(1−η²)·ε̂ + η·n)``.

        ``fresh`` = η is the fraction (in standard deviation) of the total noise at σ_next that is
        fresh; DiffPIR's ζ is η². The noise scale is the full s_next (the fix of DDNM's
        ``sigma_t = √(1 − ᾱ²)``)."""
        a_n, s_n = self.coeffs(sigma_next)
        if s_n <= 0:
            return x0 * a_n
        out = x0 * a_n + eps * (s_n * math.sqrt(max(1.0 - fresh * fresh, 0.0)))
        if fresh > 0:
            out = out + draw() * (s_n * fresh)
        return out


VE = NoiseSpace(lambda s: 1.0, lambda s: s, "VE")
FLOW = NoiseSpace(lambda s: 1.0 - s, lambda s: s, "FLOW")
