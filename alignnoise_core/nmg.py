"""Noise Map Guidance (NMG): DDIM inversion into "noise maps" and the guided reverse process.

Host-free port of `hansam95/NMG` (Cho et al., "Noise Map Guidance: Inversion with Spatial Context
for Real Image Editing", ICLR 2024), written in ComfyUI's sigma ("VE") parameterisation so the same
code drives a ComfyUI sampler and a diffusers UNet.

Conventions (SD1.x/SD2.x/SDXL discrete VP schedules):

- ``x`` is the VE-scaled latent the k-diffusion samplers work on: ``x = x0 + sigma * eps``. The VP
  latent the UNet sees (diffusers' ``z_t``) is ``z = x / sqrt(1 + sigma^2)``, and
  ``alpha_bar = 1 / (1 + sigma^2)``, ``sqrt(1 - alpha_bar) = sigma / sqrt(1 + sigma^2)``.
- DDIM with eta = 0 is the Euler step ``x' = x + (sigma' - sigma) * eps`` in this parameterisation.
- The model is reached only through host-supplied callables ``predict_eps(x, sigma) -> eps`` (VE
  input, float sigma); the host converts to whatever its UNet wants.
- Noise maps are keyed by sigma, not by step index, so inversion and sampling must share the sigmas.

Reference indexing: Step A's energy compares the DDIM step ``z_t -> z_{t-1}`` with the inversion
latent at the *next* noise level (Prompt-to-Prompt variant ``forward_latents[len - i - 2]``), not the
MasaCtrl variant that compares with the latent at the current level (``hansam95/NMG`` ``MasaCtrl/diffuser_utils.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("l1", "l2", "smooth_l1")
REFERENCE_NUMEL = 4 * 64 * 64  # one SD1.x latent at 512x512: the size s_g = 5000 was tuned for
SMOOTH_L1_BETA = 1e-4  # the reference's smooth_l1 beta
DEFAULT_GRAD_SCALE = 5000.0
DEFAULT_NOISE_MAP_SCALE = 10.0
DEFAULT_TEXT_SCALE = 10.0
SIGMA_RTOL = 1e-4  # sigma look-up tolerance (relative); neighbouring SD sigmas differ by > 0.1 %

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Schedule helpers
# --------------------------------------------------------------------------------------------------


def vp_scale(sigma: float) -> float:
    """``sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2)``: multiply a VE latent by it to get the VP latent."""
    return 1.0 / math.sqrt(1.0 + float(sigma) ** 2)


def discrete_sigmas(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """Sigma of every training timestep of the SD "scaled_linear" schedule (ascending, float64).

    Same table as ComfyUI's ``ModelSamplingDiscrete.sigmas`` and diffusers'
    ``((1 - alphas_cumprod) / alphas_cumprod) ** 0.5``.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigma_to_timestep(sigma: float, sigma_table: torch.Tensor) -> int:
    """Nearest training timestep in log-sigma, as ComfyUI's ``ModelSamplingDiscrete.timestep``."""
    log_s = math.log(max(float(sigma), 1e-10))
    return int(torch.argmin((sigma_table.log() - log_s).abs()).item())


def ddim_sigmas(steps: int, sigma_table: torch.Tensor | None = None) -> torch.Tensor:
    """Descending sigmas of diffusers' DDIM timesteps (``steps_offset=0``: 980, 960, ..., 0) plus a final 0.

    The schedule the reference used (50 steps). ComfyUI users get an equivalent grid from
    ``BasicScheduler`` (any scheduler works as long as inversion and sampling share it).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    table = discrete_sigmas() if sigma_table is None else sigma_table
    ratio = len(table) // steps
    timesteps = [i * ratio for i in reversed(range(steps))]
    return torch.tensor([float(table[t]) for t in timesteps] + [0.0], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Elementary pieces
# --------------------------------------------------------------------------------------------------


def ddim_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) step from ``sigma`` to ``sigma_next`` in VE form (= Euler).

    Equal to diffusers' ``DDIMScheduler.step(eps, t, z).prev_sample`` after the VP<->VE rescaling.
    Works in both directions (ascending sigmas = DDIM inversion).
    """
    return x + (float(sigma_next) - float(sigma)) * eps


def nmg_energy(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss: str = "l1",
    reference_numel: int | None = REFERENCE_NUMEL,
    beta: float = SMOOTH_L1_BETA,
) -> torch.Tensor:
    """The NMG energy E between a predicted latent and the stored noise map (both VP).

    The reference uses ``F.l1_loss`` (mean reduction), so the gradient shrinks as 1/numel and the
    paper's grad_scale (s_g = 5000) only means what it meant for a 4x64x64 SD1.x latent at 512x512
    (``hansam95/NMG`` ``pipeline_stable_diffusion_nmg.py``). Here each batch item's summed loss is divided by a fixed
    ``reference_numel`` (16384 by default) instead: identical to the reference for one 4x64x64 latent,
    and the per-element gradient, hence the effect of s_g, no longer depends on the image size, the
    channel count (SDXL 128x128 latents) or the batch size.

    Args:
        pred: the latent predicted by the differentiable DDIM step, ``[B, C, H, W]``.
        target: the inversion latent at the same noise level, same shape.
        loss: ``"l1"`` (reference default), ``"l2"`` (MSE) or ``"smooth_l1"`` (beta = 1e-4).
        reference_numel: the normaliser N0; ``None`` reproduces the reference's plain mean.
        beta: smooth-L1 transition point.

    Returns:
        A scalar: sum over batch items of ``sum(loss_elements) / N0``.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    if pred.shape != target.shape:
        raise ValueError(
            f"NMG energy: predicted latent {tuple(pred.shape)} and noise map {tuple(target.shape)} differ in shape."
        )
    if loss == "l1":
        elem = F.l1_loss(pred, target, reduction="none")
    elif loss == "l2":
        elem = F.mse_loss(pred, target, reduction="none")
    else:
        elem = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    if reference_numel is None:
        return elem.mean()
    return elem.sum() / float(reference_numel)


def guided_eps(
    eps_uncond: torch.Tensor, grad_x: torch.Tensor, sigma: float, noise_map_scale: float, grad_scale: float
) -> torch.Tensor:
    """Noise-map-guided epsilon ``eps_hat = eps_u + s_m * s_g * sqrt(1 - alpha_bar_t) * dE/dz_t``.

    ``grad_x`` is dE/dx for the VE latent ``x``. With ``z = x / sqrt(1 + sigma^2)`` we have
    ``dE/dz = sqrt(1 + sigma^2) * dE/dx`` and ``sqrt(1 - alpha_bar) = sigma / sqrt(1 + sigma^2)``, so the
    paper's term is simply ``sigma * dE/dx``. (Reference: ``eps_m = eps_u - sqrt(1 - a_t) * s_g * g`` with
    ``g = -dE/dz``; ``eps_hat = eps_u + s_m * (eps_m - eps_u)``.)
    """
    return eps_uncond + (float(noise_map_scale) * float(grad_scale) * float(sigma)) * grad_x


def rescale_level(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Re-read a VE latent made at ``sigma_from`` as a VP latent at ``sigma_to`` (same z, new VE scale).

    Used for the reference's double step: the Step-A latent ``z^NM`` has the noise level of t-1 but
    is fed to Step B as if it were ``z_t`` (VP tensors are passed unchanged between the two
    ``scheduler.step`` calls at the same t).
    """
    return x * (math.sqrt(1.0 + float(sigma_to) ** 2) / math.sqrt(1.0 + float(sigma_from) ** 2))


def effective_x0(x: torch.Tensor, x_next: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """The x0 an Euler sampler must receive so that its step from ``x`` at ``sigma`` lands on ``x_next``.

    Euler does ``x + (sigma' - sigma) * (x - x0) / sigma``; solving for x0 gives this. With
    ``sigma_next = 0`` it is ``x_next`` itself.
    """
    sigma, sigma_next = float(sigma), float(sigma_next)
    if sigma_next == sigma:
        raise ValueError("effective_x0 needs two different sigmas.")
    return x - sigma * (x_next - x) / (sigma_next - sigma)


# --------------------------------------------------------------------------------------------------
# Noise maps (the inversion trajectory, keyed by sigma)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# The guided reverse step (Step A + Step B)
# --------------------------------------------------------------------------------------------------


_NOT_DIFFERENTIABLE = (
    "Noise Map Guidance needs gradients of the model's prediction with respect to the latent, but the model "
    "returned a non-differentiable output (e.g. a compiled or quantised model without backward support, or a "
    "patch that detaches its output). Use a plain SD1.x/SD2.x/SDXL checkpoint, or set grad_scale to 0."
)


@dataclass
class StepA:
    """Result of the noise-map-guidance half step.

    Attributes:
        x_guided: ``z^NM`` as a VE latent at ``sigma_next`` (DDIM step with ``eps_guided``).
        eps_uncond: ``eps_u``, the unconditional prediction at the current latent.
        eps_guided: ``eps_hat``.
        energy: E of the *unguided* step (the value the gradient was taken of).
        grad: dE/dx (zeros when guidance is off).
    """

    x_guided: torch.Tensor
    eps_uncond: torch.Tensor
    eps_guided: torch.Tensor
    energy: float
    grad: torch.Tensor


def step_a(
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    target_next: torch.Tensor,
    predict_eps_uncond: EpsFn,
    grad_scale: float = DEFAULT_GRAD_SCALE,
    noise_map_scale: float = DEFAULT_NOISE_MAP_SCALE,
    loss: str = "l1",
    reference_numel: int | None = REFERENCE_NUMEL,
) -> StepA:
    """Step A: noise-map guidance on the unconditional branch (reference ``NMGPipeline.__call__``).

    ``eps_u = eps(x, sigma, null)``; ``x_prev = DDIM(eps_u)``; ``E = loss(z_prev, z*_{t-1})`` in VP
    space; ``eps_hat = eps_u + s_m * s_g * sqrt(1 - a_t) * dE/dz_t``; ``z^NM = DDIM(eps_hat)`` from the
    same ``x``. The gradient runs through the UNet (``predict_eps_uncond`` must be differentiable
    w.r.t. its input). When ``s_m * s_g == 0`` no backward pass is made and ``z^NM`` is the plain
    unconditional DDIM step.

    Args:
        x: current VE latent at ``sigma`` (not modified).
        sigma, sigma_next: this step's noise levels.
        target_next: the noise map at ``sigma_next`` (VE, same shape as ``x``).
        predict_eps_uncond: ``(x, sigma) -> eps`` with the null/negative prompt.
        grad_scale: s_g (reference 5000; its ``recon()`` uses 1e4).
        noise_map_scale: s_m (reference 10).
        loss: ``"l1"``, ``"l2"`` or ``"smooth_l1"``.
        reference_numel: energy normaliser, see :func:`nmg_energy`.
    """
    if x.shape != target_next.shape:
        raise ValueError(
            f"Noise Map Guidance: latent shape {tuple(x.shape)} differs from the inverted latent "
            f"{tuple(target_next.shape)}. Sample the latent NMGInvert returned (same size and batch)."
        )
    scale = float(noise_map_scale) * float(grad_scale)
    vp_next = vp_scale(sigma_next)
    # Leave an outer inference_mode (ComfyUI) so autograd can record; clone inputs that may be
    # inference tensors before they enter the graph.
    with torch.inference_mode(False), torch.set_grad_enabled(scale != 0.0):
        xg = x.detach().clone().requires_grad_(scale != 0.0)
        eps_u = predict_eps_uncond(xg, float(sigma))
        x_prev = ddim_step(xg, eps_u, sigma, sigma_next)
        energy = nmg_energy(x_prev * vp_next, target_next.detach().clone().to(x_prev) * vp_next, loss, reference_numel)
        if scale != 0.0:
            if eps_u.grad_fn is None:
                raise ValueError(_NOT_DIFFERENTIABLE)
            (grad,) = torch.autograd.grad(energy, xg)
        else:
            grad = torch.zeros_like(xg)
    eps_u = eps_u.detach()
    grad = grad.detach()
    eps_hat = guided_eps(eps_u, grad, sigma, noise_map_scale, grad_scale) if scale != 0.0 else eps_u
    x_guided = ddim_step(x.detach().to(eps_hat), eps_hat, sigma, sigma_next)
    return StepA(x_guided=x_guided, eps_uncond=eps_u, eps_guided=eps_hat, energy=float(energy.detach()), grad=grad)


@dataclass
class NMGStep:
    """Result of one full NMG transition (Step A then Step B).

    Attributes:
        x_next: the VE latent at ``sigma_next`` after both steps.
        x_text_input: the latent Step B evaluated (``z^NM`` re-read at ``sigma``).
        eps_text: the CFG epsilon of Step B.
        a: the :class:`StepA` record.
    """

    x_next: torch.Tensor
    x_text_input: torch.Tensor
    eps_text: torch.Tensor
    a: StepA


def nmg_step(
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    target_next: torch.Tensor,
    predict_eps_uncond: EpsFn,
    predict_eps_text: EpsFn,
    grad_scale: float = DEFAULT_GRAD_SCALE,
    noise_map_scale: float = DEFAULT_NOISE_MAP_SCALE,
    loss: str = "l1",
    reference_numel: int | None = REFERENCE_NUMEL,
) -> NMGStep:
    """One NMG transition sigma -> sigma_next: Step A (noise map guidance) then Step B (text CFG).

    Step B is the paper's double step: the guided latent ``z^NM`` (noise level of t-1) is treated as
    a refined ``z_t``, the CFG epsilon ``eps_T = eps_null + s_T * (eps_c - eps_null)`` is predicted at
    the *same* t, and a second DDIM step t -> t-1 is taken from ``z^NM`` (reference
    ``NMGPipeline.__call__``; the paper's equation for ``z_{t-1}``).

    Args:
        predict_eps_text: ``(x, sigma) -> eps`` with CFG applied (target prompt, negative, s_T).
        Other arguments as in :func:`step_a`.
    """
    a = step_a(x, sigma, sigma_next, target_next, predict_eps_uncond, grad_scale, noise_map_scale, loss,
               reference_numel)
    x_b = rescale_level(a.x_guided, sigma_next, sigma)
    eps_t = predict_eps_text(x_b, float(sigma)).detach().to(x_b)
    x_next = ddim_step(x_b, eps_t, sigma, sigma_next)
    return NMGStep(x_next=x_next, x_text_input=x_b, eps_text=eps_t, a=a)


def guidance_active(step: int, total: int, start: float = 0.0, end: float = 1.0) -> bool:
    """Whether NMG applies at reverse step ``step`` (0-based) of ``total``: ``start <= step/total < end``."""
    frac = step / max(total, 1)
    return start <= frac < end


def validate_params(grad_scale: float, noise_map_scale: float, text_scale: float, loss: str, start: float,
                    end: float) -> None:
    """Raise a clear ValueError for bad NMG settings."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
    for name, v in (("grad_scale", grad_scale), ("noise_map_scale", noise_map_scale), ("cfg", text_scale)):
        if not math.isfinite(float(v)) or float(v) < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v}.")
    if not (0.0 <= float(start) <= float(end) <= 1.0):
        raise ValueError(f"Need 0 <= start_percent <= end_percent <= 1, got start={start}, end={end}.")


