"""An exact test model: stationary Gaussian latents with a closed-form MMSE denoiser and posterior.

Each channel c of an h×w latent is an independent stationary Gaussian field on the torus with mean
μ_c and a covariance that is diagonal in the 2-D Fourier basis (circulant), eigenvalues

    λ_c(f) = v_c·((1−ν)·g_c(f)/mean(g_c) + ν),   g_c(f) = exp(−2π²ℓ_c²|f|²)

(a Gaussian kernel of length ℓ_c cells, marginal variance v_c, a nugget ν that keeps the posterior
well conditioned). For x = α·x0 + s·ε the MMSE denoiser is exact and cheap::

    D(x, σ) = E[x0 | x] = μ + F⁻¹[ α·λ/(α²·λ + s²) · F(x − α·μ) ]

and differentiable (ΠGDM/MCG can take its vector-Jacobian product). The conditional law of the
unknown cells given the known ones is computed from the dense covariance of each channel (small
grids, e.g. 16×16×4): μ_U + Σ_UK Σ_KK⁻¹ (y_K − μ_K) and Σ_UU − Σ_UK Σ_KK⁻¹ Σ_KU.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .space import NoiseSpace


class GaussianLatentPrior:
    """Stationary Gaussian latent distribution on a ``channels × height × width`` torus.

    Args:
        channels, height, width: the latent shape.
        lengthscales, variances, means: per channel ℓ_c (cells), v_c, μ_c (cycled if shorter).
            ``lengthscales`` of 0 give an independent prior (λ = v, the S = I case).
        nugget: ν, the white fraction of each channel's variance.
        dtype: computation dtype of the denoiser and samples.
    """

    def __init__(self, channels: int = 4, height: int = 16, width: int = 16,
                 lengthscales: Sequence[float] = (1.5, 2.5, 3.5, 2.0), variances: Sequence[float] = (1.0, 0.8, 1.2, 0.6),
                 means: Sequence[float] = (0.3, -0.2, 0.1, 0.0), nugget: float = 0.02, dtype=torch.float32):
        self.shape = (channels, height, width)
        self.dtype = dtype
        pick = lambda seq, c: float(seq[c % len(seq)])
        fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
        fx = torch.fft.fftfreq(width, dtype=torch.float64).view(1, -1)
        f2 = fy * fy + fx * fx
        lam, mu = [], []
        for c in range(channels):
            ell, v = pick(lengthscales, c), pick(variances, c)
            g = torch.exp(-2 * math.pi ** 2 * ell * ell * f2)
            lam.append(v * ((1 - nugget) * g / g.mean() + nugget) if ell > 0 else torch.full_like(f2, v))
            mu.append(pick(means, c))
        self.spectrum = torch.stack(lam)  # [C, H, W], float64
        self.mean = torch.tensor(mu, dtype=torch.float64).view(-1, 1, 1).expand(self.shape).clone()

    # -- the denoiser ---------------------------------------------------------------------------------

    def denoise(self, x: torch.Tensor, sigma, space: NoiseSpace) -> torch.Tensor:
        """E[x0 | x] for x = α(σ)·x0 + s(σ)·ε (σ shared by the batch: a tensor [B] or a float)."""
        sig = float(sigma.reshape(-1)[0]) if torch.is_tensor(sigma) else float(sigma)
        a, s = space.coeffs(sig)
        lam = self.spectrum.to(device=x.device)
        mu = self.mean.to(device=x.device, dtype=x.dtype)
        gain = (a * lam / (a * a * lam + s * s)).to(x.dtype) if s > 0 else None
        if gain is None:
            return x / a
        r = torch.fft.fft2(x - mu * a)
        return mu + torch.fft.ifft2(r * gain).real

    def model(self, space: NoiseSpace):
        """``model(x, sigma, **extra_args) -> x0``: the denoiser in k-diffusion's calling convention."""
        def call(x, sigma, **extra_args):
            return self.denoise(x, sigma, space)
        return call

    # -- sampling and the exact posterior -------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws x0 ~ N(μ, Σ), shape [n, C, H, W]."""
        white = torch.randn((n,) + self.shape, generator=generator, dtype=torch.float64)
        x = torch.fft.ifft2(torch.fft.fft2(white) * self.spectrum.sqrt()).real
        return (x + self.mean).to(self.dtype)

    def covariance(self, channel: int) -> torch.Tensor:
        """The dense [H·W, H·W] covariance of one channel (from the autocovariance ifft2(λ))."""
        _, h, w = self.shape
        auto = torch.fft.ifft2(self.spectrum[channel]).real
        iy, ix = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        iy, ix = iy.reshape(-1), ix.reshape(-1)
        return auto[(iy.view(-1, 1) - iy.view(1, -1)) % h, (ix.view(-1, 1) - ix.view(1, -1)) % w]

    def conditional(self, known: torch.Tensor, generate: torch.Tensor):
        """Exact conditional mean and variance given the known cells.

        Args:
            known: [C, H, W] (or [1, C, H, W]) latent; only its known cells are read.
            generate: [H, W] binary mask, 1 = unknown (generated), shared by the channels.
        Returns:
            (mean, var), each [C, H, W] float64: mean = y on known cells, μ_cond on unknown ones;
            var = 0 on known cells.
        """
        y = known.reshape(self.shape).to(torch.float64)
        unk = generate.reshape(-1) > 0.5
        if bool(unk.all()) or not bool(unk.any()):
            raise ValueError("the mask must have both known and unknown cells")
        mean, var = y.clone(), torch.zeros(self.shape, dtype=torch.float64)
        for c in range(self.shape[0]):
            cov = self.covariance(c)
            k_idx, u_idx = (~unk).nonzero().view(-1), unk.nonzero().view(-1)
            s_kk = cov[k_idx][:, k_idx]
            s_uk = cov[u_idx][:, k_idx]
            chol = torch.linalg.cholesky(s_kk)
            yk = y[c].reshape(-1)[k_idx] - self.mean[c].reshape(-1)[k_idx]
            gain = torch.cholesky_solve(s_uk.T, chol).T  # Σ_UK Σ_KK⁻¹
            m_c, v_c = mean[c].reshape(-1), var[c].reshape(-1)
            m_c[u_idx] = self.mean[c].reshape(-1)[u_idx] + gain @ yk
            v_c[u_idx] = cov[u_idx, u_idx] - (gain * s_uk).sum(1)
        return mean, var


def posterior_metrics(samples: torch.Tensor, cond_mean: torch.Tensor, cond_var: torch.Tensor,
                      prior_mean: torch.Tensor, generate: torch.Tensor) -> dict:
    """Compare a batch of inpainted samples with the exact posterior on the unknown cells.

    Returns:
        ``mean_error``: ‖mean(samples) − μ_cond‖ / ‖μ_prior − μ_cond‖ over unknown cells (0 = exact,
        1 = as good as ignoring the known region); ``var_ratio``: mean sample variance / mean
        conditional variance over unknown cells; ``mc_floor``: the ``mean_error`` an exact sampler
        reaches with this many samples (√(Σ var_cond / n) / ‖μ_prior − μ_cond‖).
    """
    s = samples.to(torch.float64)
    unk = (generate > 0.5).expand(cond_mean.shape)
    gap = (prior_mean - cond_mean)[unk].norm()
    err = (s.mean(0) - cond_mean)[unk].norm() / gap
    ratio = s.var(0)[unk].mean() / cond_var[unk].mean()
    floor = (cond_var[unk].sum() / s.shape[0]).sqrt() / gap
    return {"mean_error": float(err), "var_ratio": float(ratio), "mc_floor": float(floor)}
