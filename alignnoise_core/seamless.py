"""SeamlessComposite: gradient-domain (Poisson) compositing and colour matching of IMAGE tensors.

Pérez, Gangnet & Blake, "Poisson Image Editing" (SIGGRAPH 2003): inside the pasted region Ω the result
``f`` keeps the *gradients* of the source ``g`` while taking the destination ``f*`` on the boundary, so
colour and brightness offsets between a generated region and the original (VAE round trips, sampler
drift) vanish at the seam instead of showing as an edge. Discretely (5-point, per channel), for p ∈ Ω::

    |N_p|·f_p − Σ_{q ∈ N_p ∩ Ω} f_q = Σ_{q ∈ N_p \\ Ω} f*_q + Σ_{q ∈ N_p} v_pq

``N_p`` = the 4-neighbours on the canvas (so the canvas border is zero-flux Neumann), ``v_pq = g_p − g_q``
("poisson") or the stronger of the source and destination differences ("mixed", the paper's mixed
gradients). We solve for the correction ``c = f − g``: it is discrete-harmonic in Ω (poisson) with
``c = f* − g`` on the known pixels next to Ω, i.e. smooth, and exactly zero when source = destination.

Soft masks (our definition, tested): Ω = {a > 0} where ``a`` is the mask, dilated by ``band`` pixels
(a max filter) when the solver may also change that many known pixels next to the seam. The corrected
source ``g + c`` is then alpha-composited exactly as ComfyUI's ImageCompositeMasked does::

    out = a·(g + c) + (1 − a)·f*

For a 0/1 mask this is the binary Poisson solution; pixels with a = 0 are returned bit-exact;
``method="alpha"`` (c = 0) is the plain ImageCompositeMasked blend; ``"color_match"`` uses the best
constant ``c`` per channel (the mean offset over the boundary edges of Ω).

Solvers (:mod:`alignnoise_core.poisson_rect`, :mod:`alignnoise_core.poisson`): when Ω is the canvas
minus one rectangle (every outpaint border) a direct substructured solve with exact eigenbases; any
other shape uses multigrid-preconditioned CG. Both stop at ``max |residual| ≤ tol`` in image units.
"""

from __future__ import annotations

import collections
import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import poisson, poisson_rect, validation

log = logging.getLogger("alignnoise")

METHODS = ("poisson", "mixed", "color_match", "alpha")
DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 100

_RECT_CACHE: "collections.OrderedDict[tuple, poisson_rect.RectComplementPoisson]" = collections.OrderedDict()


def _check_inputs(destination, source, mask, method, band):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if int(band) != band or band < 0:
        raise ValueError(f"band must be a non-negative whole number of pixels, got {band!r}.")
    for name, img in (("destination", destination), ("source", source)):
        if not torch.is_tensor(img) or img.ndim != 4 or not 1 <= img.shape[-1] <= 4:
            shape = tuple(img.shape) if torch.is_tensor(img) else type(img).__name__
            raise ValueError(f"'{name}' must be an IMAGE [B,H,W,C] with 1-4 channels, got {shape}.")
    H, W = destination.shape[1:3]
    if tuple(source.shape[1:3]) != (H, W):
        raise ValueError(f"'source' is {source.shape[2]}x{source.shape[1]} but 'destination' is {W}x{H}; resize it "
                         f"first (e.g. ImageScale) so that all three inputs have the same size.")
    m = validation.mask_bhw(mask, None, H, W, "mask")
    batches = {"destination": destination.shape[0], "source": source.shape[0], "mask": m.shape[0]}
    B = max(batches.values())
    wrong = [f"'{k}' has {v}" for k, v in batches.items() if v not in (1, B)]
    if wrong:
        raise ValueError(f"batch sizes differ ({', '.join(wrong)}, another input has {B}); give batch 1 (used for "
                         f"every item) or the same batch size.")
    colours = 3 if destination.shape[-1] == 4 else destination.shape[-1]
    if source.shape[-1] < colours:
        raise ValueError(f"'source' has {source.shape[-1]} channel(s) but 'destination' has {colours} colour "
                         f"channel(s).")
    for name, x in (("destination", destination), ("source", source)):
        validation.require_finite(x, f"'{name}'")
    return m, B, colours


def _rect_solver(H, W, rect, device, dtype):
    key = (H, W, rect, str(device), dtype)
    if key not in _RECT_CACHE:
        _RECT_CACHE[key] = poisson_rect.RectComplementPoisson(H, W, rect, device, dtype)
        while len(_RECT_CACHE) > 4:
            _RECT_CACHE.popitem(last=False)
    _RECT_CACHE.move_to_end(key)
    return _RECT_CACHE[key]


SOLVERS = ("auto", "direct", "multigrid")


def solve_correction(rhs: torch.Tensor, unknown: torch.Tensor, tol: float = DEFAULT_TOL,
                     max_iter: int = DEFAULT_MAX_ITER, solver: str = "auto", rect=None) -> Tuple[torch.Tensor, Dict]:
    """Solve ``A·c = rhs`` on ``unknown`` (bool ``[B,1,H,W]``, each item with ≥ 1 known pixel).

    ``solver="auto"`` picks the direct rectangle-complement solver when every item is the canvas minus
    the same rectangle, else multigrid-preconditioned CG (items with different masks solved together);
    ``"multigrid"`` forces MGPCG, ``"direct"`` requires the rectangle case. ``rect``: the known rectangle,
    when the caller has already found it.
    """
    H, W = rhs.shape[-2:]
    unknown_f = unknown.to(rhs.dtype)
    diag = poisson.neighbour_count(H, W, rhs.device, rhs.dtype)

    def apply(u):
        return poisson.neighbour_sum(u).neg_().addcmul_(diag, u).mul_(unknown_f)

    if rect is None and solver != "multigrid":
        rect = poisson_rect.known_rectangle(unknown)
    if solver == "direct" and rect is None:
        raise ValueError("the direct solver needs the unknown region to be the canvas minus one rectangle")
    if rect is not None:
        solver = _rect_solver(H, W, rect, rhs.device, rhs.dtype)
        x, info = solver.solve(rhs, tol=tol, max_iter=3, apply=apply)
        info["solver"] = "direct (canvas minus rectangle)"
    else:
        # Work on the bounding box of Ω plus one known pixel: every box edge that is not the canvas edge
        # is then a known (Dirichlet) row or column, so the cropped problem is the same problem.
        rows = unknown.any(0).any(0).any(1).nonzero().flatten()
        cols = unknown.any(0).any(0).any(0).nonzero().flatten()
        y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, H)
        x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, W)
        box = (..., slice(y0, y1), slice(x0, x1))
        solver_ = poisson.MaskedPoisson(unknown[box], rhs.dtype)
        xc, info = solver_.solve(rhs[box], tol=tol, max_iter=max_iter)
        x = torch.zeros_like(rhs)
        x[box] = xc
        info["solver"] = "multigrid-preconditioned CG"
    return x, info


def _rectangle_ring_rhs(dst: torch.Tensor, src: torch.Tensor, rect) -> torch.Tensor:
    """``neighbour_sum((f* − g)·known)·Ω`` when the known set is one rectangle: every cell of Ω next to it
    has exactly one known neighbour, across one of the rectangle's four sides."""
    H, W = dst.shape[-2:]
    r0, r1, c0, c1 = rect
    rhs = torch.zeros_like(dst)
    if r0 > 0:
        rhs[..., r0 - 1, c0:c1] = dst[..., r0, c0:c1] - src[..., r0, c0:c1]
    if r1 < H:
        rhs[..., r1, c0:c1] = dst[..., r1 - 1, c0:c1] - src[..., r1 - 1, c0:c1]
    if c0 > 0:
        rhs[..., r0:r1, c0 - 1] = dst[..., r0:r1, c0] - src[..., r0:r1, c0]
    if c1 < W:
        rhs[..., r0:r1, c1] = dst[..., r0:r1, c1 - 1] - src[..., r0:r1, c1 - 1]
    return rhs


def mixed_guidance_rhs(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``Σ_q (v_pq − (g_p − g_q))`` with ``v`` the larger-magnitude of the destination and source differences
    (per edge and channel, as in Pérez et al. §4 and OpenCV's MIXED_CLONE)."""
    out = torch.zeros_like(src)
    for dim in (-2, -1):
        n = src.shape[dim]
        if n < 2:
            continue
        gs = src.narrow(dim, 1, n - 1) - src.narrow(dim, 0, n - 1)     # g_{p+1} − g_p
        gd = dst.narrow(dim, 1, n - 1) - dst.narrow(dim, 0, n - 1)
        extra = torch.where(gd.abs() > gs.abs(), gd - gs, torch.zeros_like(gs))
        out.narrow(dim, 0, n - 1).sub_(extra)   # p = lower cell: v_pq − (g_p − g_q) = −(extra of edge)
        out.narrow(dim, 1, n - 1).add_(extra)   # p = upper cell
    return out


def paste(original: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor, blend: str = "alpha") -> torch.Tensor:
    """Paste-back of a generation ``[H, W, C]`` over the ``original`` where ``mask`` ``[H, W]`` (1 = generated).

    ``alpha``: ``lerp(original, generated, mask)``, exactly the original where mask == 0 and the generation
    where mask == 1 (the pack's long-standing paste-back); ``poisson`` / ``color_match``: the generation's
    colours are first matched to the original at the seam (:func:`seamless_composite`, clamped to 0..1).
    """
    if blend == "alpha":
        return torch.lerp(original, generated, mask.clamp(0, 1)[..., None])
    out, _, _ = seamless_composite(original[None], generated[None], mask[None], method=blend, clamp=True)
    return out[0]


def seamless_composite(destination: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                       method: str = "poisson", band: int = 0, tol: float = DEFAULT_TOL,
                       max_iter: int = DEFAULT_MAX_ITER, clamp: bool = False,
                       dtype: torch.dtype = torch.float32, solver: str = "auto") -> Tuple[torch.Tensor, torch.Tensor, Dict]:
    """Composite ``source`` into ``destination`` where ``mask`` > 0 without a visible seam.

    Args:
        destination: IMAGE ``[B, H, W, C]`` (C = 1..4; a 4th channel is alpha and is returned untouched).
        source: IMAGE of the same size (its colour channels are used), e.g. the outpainted/inpainted result.
        mask: MASK ``[B, H, W]`` or ``[H, W]``, 1 = take the source; soft values blend (see module doc).
            Any of the three inputs may have batch 1 and is then used for every item.
        method: ``"poisson"`` (source gradients, Pérez et al.), ``"mixed"`` (stronger of source and
            destination gradients), ``"color_match"`` (constant per-channel offset), ``"alpha"``
            (ImageCompositeMasked's blend, no correction).
        band: known pixels within this many pixels (Chebyshev distance) of the mask are given to the solver
            too (their result is the corrected source); 0 keeps every known pixel bit-exact.
        tol: stop when every equation's residual is at most this (image units, 0..1).
        max_iter: multigrid-CG iteration cap (the direct solver needs 1-2 passes).
        clamp: clip the changed pixels to [0, 1] (the correction may overshoot where the source is near 0 or 1).
        dtype: arithmetic precision of the solve (float32; float64 for tighter residuals on CPU/CUDA).
        solver: ``"auto"``, ``"direct"`` or ``"multigrid"`` (see :func:`solve_correction`).

    Returns:
        ``(image, changed, info)``: the float32 IMAGE (same size and batch, input device), a MASK ``[B,H,W]``
        of pixels that differ from ``destination``, and a dict with the solver, iterations, residual and
        per-item notes.
    """
    m, B, colours = _check_inputs(destination, source, mask, method, band)
    device = destination.device
    dst_full = destination.to(torch.float32).expand(B, -1, -1, -1)
    dst = dst_full[..., :colours].movedim(-1, 1).to(dtype).contiguous()
    src = source.to(device, torch.float32).expand(B, -1, -1, -1)[..., :colours].movedim(-1, 1).to(dtype).contiguous()
    alpha = m.to(device, dtype).clamp(0, 1).expand(B, -1, -1).unsqueeze(1)
    if band > 0:
        k = 2 * int(band) + 1
        alpha = F.max_pool2d(F.max_pool2d(alpha, (k, 1), 1, (band, 0)), (1, k), 1, (0, band))
    unknown = alpha > 0
    n_unknown = unknown.flatten(1).sum(1)
    full = n_unknown == unknown[0, 0].numel()
    info: Dict = {"method": method, "solver": "none", "iterations": 0, "residual": 0.0, "notes": []}
    for i in range(B):
        if int(n_unknown[i]) == 0:
            info["notes"].append(f"item {i}: mask is empty, destination returned")
        elif bool(full[i]):
            info["notes"].append(f"item {i}: mask covers the whole image, so there is no boundary to match: "
                                 f"the source is composited without correction")
    # Items without any known pixel have no boundary: they keep c = 0 (solve nothing for them).
    solve_set = unknown & ~full.view(B, 1, 1, 1)
    active = solve_set.flatten(1).any(1)
    correction = None
    if method in ("poisson", "mixed") and bool(active.any()):
        rect = poisson_rect.known_rectangle(solve_set) if solver != "multigrid" and bool(active.all()) else None
        if method == "poisson" and rect is not None:
            rhs = _rectangle_ring_rhs(dst, src, rect)      # the same values, from the perimeter only
        else:
            rhs = poisson.neighbour_sum(torch.where(unknown, 0.0, dst - src))
            if method == "mixed":
                rhs = rhs + mixed_guidance_rhs(dst, src)
            rhs.mul_(solve_set)
        if bool(active.all()):
            correction, solve_info = solve_correction(rhs, solve_set, tol=tol, max_iter=max_iter, solver=solver,
                                                      rect=rect)
        else:
            idx = active.nonzero().flatten()
            c, solve_info = solve_correction(rhs[idx], solve_set[idx], tol=tol, max_iter=max_iter, solver=solver)
            correction = torch.zeros_like(src)
            correction[idx] = c
        info.update(solve_info)
    elif method == "color_match" and bool(active.any()):
        # Best constant over the boundary edges: each known pixel counts once per neighbour in Ω.
        known = (~unknown).to(dtype)
        weight = poisson.neighbour_sum(solve_set.to(dtype)) * known
        total = weight.sum((-2, -1), keepdim=True)
        offset = ((dst - src) * weight).sum((-2, -1), keepdim=True) / total.clamp_min(1)
        correction = offset * solve_set
        info["solver"] = "mean boundary offset"
    fixed = src if correction is None else src + correction
    if clamp:
        fixed = fixed.clamp(0, 1)
    if bool(((alpha == 0) | (alpha == 1)).all()):
        result = torch.where(unknown, fixed, dst)                    # binary mask: no blend arithmetic
    else:
        blended = alpha * fixed + (1 - alpha) * dst                   # ImageCompositeMasked's formula and order
        result = torch.where(unknown, blended, dst)
    out = dst_full.clone()
    out[..., :colours] = result.movedim(1, -1)
    changed = (unknown[:, 0] & (result != dst).any(1)).to(torch.float32)
    return out, changed, info
