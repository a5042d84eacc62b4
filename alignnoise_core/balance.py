"""AlignNoise stage 1 ("AAM"): attention-balance loss and the initial-noise optimiser.

Host-free (torch only). The UNet is reached through a host-supplied callable
``evaluate(z_hat) -> AttentionCapture`` so the same optimiser drives diffusers
(:mod:`.diffusers_bridge`) and ComfyUI (:mod:`.comfy_bridge`).

Reference: ``WHUIR/AlignNoise:pipeline/pipeline_sd_alignnoise.py::fn_AAM`` and
``::fn_compute_loss_mask`` (loss with a Python loop over query tokens). This module computes the
same loss vectorised (one ``conv2d`` for all query maps) and fixes the reference's NaN/empty-mask
quirks (each is noted where it is fixed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .validation import mask_bhw

logger = logging.getLogger(__name__)

def reference_kernel(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The 3x3 kernel of the reference ``GaussianSmoothing(kernel_size=3, sigma=0.5)``.

    The reference uses ``exp(-((x-mu)/(2*sigma))**2)`` instead of the textbook Gaussian, so the
    effective sigma is ~0.707; we compute it with that same formula (centre 0.33191, sum 1; a
    textbook sigma=0.5 kernel would have centre 0.61935).

    Returns:
        Tensor of shape (3, 3) summing to 1.
    """
    sigma, size = 0.5, 3
    x = torch.arange(size, dtype=torch.float64)
    mean = (size - 1) / 2
    g1 = torch.exp(-(((x - mean) / (2 * sigma)) ** 2))  # the reference's (buggy) Gaussian
    g2 = g1[:, None] * g1[None, :]
    return (g2 / g2.sum()).to(dtype=dtype, device=device)


#: The normalised values of :func:`reference_kernel` to 5 decimals (``WHUIR/AlignNoise`` ``utils/gaussian_smoothing``).
REFERENCE_KERNEL_VALUES = (
    (0.04492, 0.12210, 0.04492),
    (0.12210, 0.33191, 0.12210),
    (0.04492, 0.12210, 0.04492),
)

MINMAX_EPS = 1e-6  # both min-max normalisations and the loss denominator use 1e-6 in the reference


@dataclass
class BalanceTerms:
    """Per-item terms of the attention-balance loss.

    Attributes:
        loss: (B,) ``AS_out / (AS_src + 1e-6) + max(0, tau - AS_out)``; 0 where an item has no
            outpaint query (reference behaviour: immediate success).
        as_src: (B,) mean combined attention on source keys (``AS_src`` in the paper).
        as_out: (B,) mean combined attention on outpaint keys (``AS_out``).
        combined: (B, h, w) min-max normalised combined map ``C_hat`` (where outpaint queries attend).
        has_out: (B,) bool, the item has at least one outpaint token at this grid.
        has_src: (B,) bool, the item has at least one source token at this grid.
    """

    loss: torch.Tensor
    as_src: torch.Tensor
    as_out: torch.Tensor
    combined: torch.Tensor
    has_out: torch.Tensor
    has_src: torch.Tensor


def _minmax(x: torch.Tensor, dims) -> torch.Tensor:
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo + MINMAX_EPS)


def balance_loss(
    attn: torch.Tensor,
    token_mask: torch.Tensor,
    grid: tuple[int, int],
    tau: float = 0.15,
    smooth: bool = True,
) -> BalanceTerms:
    """Vectorised AlignNoise attention-balance loss (``fn_compute_loss_mask``, K=1).

    Args:
        attn: (B, N, N) self-attention probabilities averaged over layers and heads, queries on
            dim 1 and keys on dim 2, tokens row-major over ``grid``. Cast to float32 here.
        token_mask: (B, N) or (N,) bool/0-1, 1 = outpaint token (used as query; ``AS_out`` keys),
            0 = source token (``AS_src`` keys).
        grid: (h, w) token grid with ``h * w == N``.
        tau: hinge level ``tau`` of ``max(0, tau - AS_out)`` (paper/reference: 0.15).
        smooth: apply the reference 3x3 reflect-padded smoothing to every query map.

    Returns:
        :class:`BalanceTerms`. Never NaN: items without source tokens get ``AS_src = 0`` (the
        optimiser skips them; the reference produced NaN there).
    """
    h, w = grid
    attn = attn.float()
    b, n, n_k = attn.shape
    if n != h * w or n_k != n:
        raise ValueError(f"attention of shape {tuple(attn.shape)} does not match token grid {h}x{w}")
    tm = token_mask.reshape(-1, n).to(device=attn.device).bool().expand(b, n)
    maps = attn.reshape(b * n, 1, h, w)
    if smooth:
        if h < 2 or w < 2:
            raise ValueError(f"token grid {h}x{w} is too small for the 3x3 smoothing; use a larger image")
        kernel = reference_kernel(attn.dtype, attn.device)[None, None]
        maps = F.conv2d(F.pad(maps, (1, 1, 1, 1), mode="reflect"), kernel)
    maps = _minmax(maps, (2, 3)).reshape(b, n, h, w)
    # Sum over outpaint queries only; a multiply keeps items with different masks in one batch.
    combined = (maps * tm[:, :, None, None].to(maps.dtype)).sum(1)
    combined = _minmax(combined, (1, 2))
    flat = combined.reshape(b, n)
    out_f = tm.to(flat.dtype)
    src_f = 1.0 - out_f
    n_out, n_src = out_f.sum(1), src_f.sum(1)
    as_out = (flat * out_f).sum(1) / n_out.clamp_min(1)
    as_src = (flat * src_f).sum(1) / n_src.clamp_min(1)
    loss = as_out / (as_src + MINMAX_EPS) + torch.clamp(tau - as_out, min=0)
    has_out, has_src = n_out > 0, n_src > 0
    zero = torch.zeros_like(loss)
    loss = torch.where(has_out, loss, zero)
    as_out = torch.where(has_out, as_out, zero)
    as_src = torch.where(has_out, as_src, zero)
    return BalanceTerms(loss, as_src, as_out, combined, has_out, has_src)


def tokens_from_mask(mask: torch.Tensor, latent_hw: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Downsample an outpaint mask to the attention token grid like the reference.

    The reference binarises the pixel mask at 0.5, resizes it to the latent with ``nearest``
    (``prepare_mask_latents``) and then to the 16x16 grid with ``nearest`` (top-left sampling).

    Args:
        mask: (B, H, W) or (B, 1, H, W) or (H, W), 1 = outpaint, any resolution (pixel or latent).
        latent_hw: latent (h, w) the model runs at.
        grid: token grid (h, w) of the target attention level.

    Returns:
        (B, h*w) bool, row-major.
    """
    m = (mask_bhw(mask)[:, None] >= 0.5).float()
    if tuple(m.shape[-2:]) != tuple(latent_hw):
        m = F.interpolate(m, size=tuple(latent_hw), mode="nearest")
    m = F.interpolate(m, size=tuple(grid), mode="nearest")
    return m.reshape(m.shape[0], -1) > 0.5


# ----------------------------------------------------------------------------------------------
# Optimiser
# ----------------------------------------------------------------------------------------------


@dataclass
class AttentionCapture:
    """What one UNet evaluation returns to the optimiser.

    Attributes:
        probs: (B, N, N) float32 self-attention probabilities at the target level, averaged over
            layers and heads (differentiable w.r.t. the noise).
        grid: (h, w) token grid of the target level.
    """

    probs: torch.Tensor
    grid: tuple[int, int]


@dataclass
class BalanceResult:
    """Outcome of :func:`optimize_noise`.

    Attributes:
        noise: (B, C, h, w) float32 optimised noise ``z*exp(0.5*l)+mu`` (unit variance, VP space).
        losses: per iteration, a list of per-item loss floats (NaN-free).
        as_src_before / as_out_before / as_src_after / as_out_after: per-item floats of the first
            and last evaluated iteration.
        maps_before / maps_after: (B, h, w) combined attention maps ``C_hat`` (first / last).
        success: per item, the loss fell below the threshold.
        status: per item, a short human-readable status string.
        forwards / backwards: UNet evaluations with grad and backward passes performed.
        grid: token grid of the target level (None when nothing was evaluated).
    """

    noise: torch.Tensor
    losses: list = field(default_factory=list)
    as_src_before: list = field(default_factory=list)
    as_out_before: list = field(default_factory=list)
    as_src_after: list = field(default_factory=list)
    as_out_after: list = field(default_factory=list)
    maps_before: Optional[torch.Tensor] = None
    maps_after: Optional[torch.Tensor] = None
    success: list = field(default_factory=list)
    status: list = field(default_factory=list)
    forwards: int = 0
    backwards: int = 0
    grid: Optional[tuple] = None


def _item_has_outpaint(mask: torch.Tensor, b: int) -> list[bool]:
    m = mask_bhw(mask)
    flat = (m.reshape(m.shape[0], -1) >= 0.5).any(1)
    if flat.shape[0] == 1 and b > 1:
        flat = flat.expand(b)
    return [bool(x) for x in flat]


def optimize_noise(
    evaluate: Callable[[torch.Tensor], AttentionCapture],
    z: torch.Tensor,
    mask: torch.Tensor,
    iterations: int = 10,
    lr: float = 1e-2,
    loss_threshold: float = 0.55,
    tau: float = 0.15,
    smooth: bool = True,
    adam_eps: float = 1e-3,
    final_eval: bool = False,
    callback: Optional[Callable[[int, dict], None]] = None,
) -> BalanceResult:
    """Optimise the initial noise so outpaint tokens attend to the source (AlignNoise ``fn_AAM``).

    The noise is reparameterised as ``z_hat = z * exp(0.5 * l) + mu`` (``l`` log-variance, ``mu``
    mean, both zero-initialised, kept in float32) and optimised with Adam(lr, eps=1e-3). Each
    iteration evaluates the UNet once; an item stops when its loss is below ``loss_threshold``,
    checked *before* the update, so the returned noise is the one that met the threshold. A
    success at iteration k costs k+1 forwards and k backwards; no success costs ``iterations``
    forwards and backwards and returns the noise after the last update.

    Batch items are optimised separately (own loss, own stop) but evaluated in one batched
    forward: Adam is element-wise and the UNet treats items independently, so this equals
    running them one by one.

    Args:
        evaluate: host callable; given ``z_hat`` (B, C, h, w) float32 with grad, runs the UNet once
            and returns an :class:`AttentionCapture` at the target level.
        z: (B, C, h, w) initial Gaussian noise (not modified).
        mask: outpaint mask, 1 = outpaint, (B|1, H, W) at any resolution.
        iterations: maximum number of evaluate/update rounds (reference ``max_step`` = 10).
        lr: Adam learning rate (reference ``initno_lr`` = 1e-2).
        loss_threshold: stop when the loss is below it (reference 0.55).
        tau: hinge level of the loss (reference 0.15).
        smooth: reference 3x3 smoothing of the query maps.
        adam_eps: Adam epsilon (reference 1e-3).
        final_eval: if no item converged, evaluate the returned noise once more (no backward) so
            the "after" diagnostics describe the noise actually returned.
        callback: called as ``callback(k, info)`` after each evaluation; may raise to abort.

    Returns:
        :class:`BalanceResult`.
    """
    z = z.detach().float().clone()  # a normal tensor even if z is an inference tensor (ComfyUI)
    b = z.shape[0]
    res = BalanceResult(noise=z.clone())
    has_out = _item_has_outpaint(mask, b)
    res.success = [False] * b
    res.status = ["optimised" if h else "skipped: empty mask (nothing to optimise)" for h in has_out]
    if iterations <= 0:
        res.status = ["not optimised (iterations = 0)"] * b
        return res
    if not any(has_out):
        return res

    log_var = torch.zeros_like(z, requires_grad=True)
    mu = torch.zeros_like(z, requires_grad=True)
    opt = torch.optim.Adam([log_var, mu], lr=lr, eps=adam_eps)
    active = list(has_out)  # still being optimised
    result = z.clone()
    latent_hw = tuple(z.shape[-2:])
    token_mask = None

    def z_hat():
        return z * torch.exp(0.5 * log_var) + mu

    with torch.enable_grad():
        for k in range(iterations):
            zh = z_hat()
            cap = evaluate(zh)
            res.forwards += 1
            if token_mask is None:
                res.grid = tuple(cap.grid)
                token_mask = tokens_from_mask(mask, latent_hw, res.grid).to(cap.probs.device)
                if token_mask.shape[0] == 1 and b > 1:
                    token_mask = token_mask.expand(b, -1)
            terms = balance_loss(cap.probs, token_mask, res.grid, tau=tau, smooth=smooth)
            losses = terms.loss.detach().cpu().tolist()
            res.losses.append(losses)
            if k == 0:
                res.as_src_before = terms.as_src.detach().cpu().tolist()
                res.as_out_before = terms.as_out.detach().cpu().tolist()
                res.maps_before = terms.combined.detach().cpu()
                for i in range(b):
                    if not active[i]:
                        continue
                    if not bool(terms.has_out[i]):
                        active[i] = False
                        res.status[i] = "skipped: no outpaint token survives at the attention level"
                    elif not bool(terms.has_src[i]):
                        # reference: AS_src = mean([]) = NaN -> NaN noise; here: keep the noise
                        active[i] = False
                        res.status[i] = "skipped: no source token survives at the attention level"
            src_l, out_l = terms.as_src.detach().cpu().tolist(), terms.as_out.detach().cpu().tolist()
            if k == 0:
                res.as_src_after, res.as_out_after = list(src_l), list(out_l)
                res.maps_after = res.maps_before.clone()
            for i in range(b):
                if active[i]:  # "after" = the last evaluation of the noise this item returns
                    res.as_src_after[i], res.as_out_after[i] = src_l[i], out_l[i]
                    res.maps_after[i] = terms.combined[i].detach().cpu()
            for i in range(b):
                if active[i] and losses[i] < loss_threshold:  # stop rule, checked before the update
                    active[i] = False
                    res.success[i] = True
                    res.status[i] = f"converged at iteration {k} (loss {losses[i]:.4f} < {loss_threshold})"
                    result[i] = zh[i].detach()
            if callback is not None:
                callback(k, {"losses": losses, "as_src": res.as_src_after, "as_out": res.as_out_after})
            if not any(active):
                break
            sel = torch.tensor(active, device=terms.loss.device, dtype=terms.loss.dtype)
            loss = (terms.loss * sel).sum()  # items are independent: the sum gives each its own gradient
            opt.zero_grad(set_to_none=True)
            loss.backward()
            res.backwards += 1
            opt.step()
            del cap, terms, loss, zh

    final = z_hat().detach()
    for i in range(b):
        if active[i]:
            result[i] = final[i]
            res.status[i] = f"no convergence in {iterations} iterations (last loss {res.losses[-1][i]:.4f})"
    res.noise = result
    if final_eval and any(active):
        with torch.no_grad():
            cap = evaluate(result)
            terms = balance_loss(cap.probs, token_mask, res.grid, tau=tau, smooth=smooth)
        for i in range(b):
            if active[i]:
                res.as_src_after[i] = float(terms.as_src[i])
                res.as_out_after[i] = float(terms.as_out[i])
                res.maps_after[i] = terms.combined[i].detach().cpu()
    if not bool(torch.isfinite(res.noise).all()):
        raise RuntimeError("AttentionBalance produced non-finite noise; please report this")
    return res
