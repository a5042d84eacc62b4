"""Masked discrete Poisson solver: multigrid-preconditioned conjugate gradient (MGPCG), pure torch.

Solves, for every image of a batch ``[B, C, H, W]`` and every channel independently, the 5-point
system of gradient-domain compositing (Pérez, Gangnet & Blake, "Poisson Image Editing", SIGGRAPH 2003)
on the unknown set ``U`` (a boolean ``[B, 1, H, W]``)::

    |N_p|·u_p − Σ_{q ∈ N_p ∩ U} u_q = b_p        for p ∈ U,     u = 0 outside U,

where ``N_p`` are the 4-neighbours of ``p`` that lie on the canvas. Neighbours outside ``U`` are the
Dirichlet boundary (their values are folded into ``b`` by the caller); neighbours off the canvas are
simply absent, which is the zero-flux Neumann condition at the canvas border. The matrix is the
principal submatrix of the canvas graph Laplacian on ``U``: symmetric positive definite as soon as
``U`` is not the whole canvas.

The preconditioner is one symmetric multigrid V-cycle (McAdams, Sifakis & Teran, "A parallel
multigrid Poisson solver for fluids simulation on large grids", SCA 2010, uses the same scheme):
cell-centred 2x2 coarsening, bilinear prolongation ``P`` with replicated borders (Neumann), restriction
``R = Pᵀ``, the same unscaled 5-point operator re-discretised on every level (``R·A·P ≈ 4·(−Δ)`` equals
the coarse stencil at spacing 2), damped Jacobi smoothing (ω = 0.8) before and after, and an exact
dense solve on the coarsest grid. A coarse cell is unknown only if all of its fine cells are, so every
level keeps a Dirichlet cell and stays non-singular. Everything is elementwise slicing over
``[B, C, H, W]``: no Python loop over pixels, batch items or channels, and it runs on the input device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional

import torch
import torch.nn.functional as F

JACOBI_OMEGA = 0.8
COARSEST = 16          # the coarsest grid side (at most COARSEST² cells per image, solved densely)


def neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """Σ of the 4 on-canvas neighbours of every cell of ``[..., H, W]`` (off-canvas ones are absent)."""
    s = torch.zeros_like(u)
    s[..., 1:, :] += u[..., :-1, :]
    s[..., :-1, :] += u[..., 1:, :]
    s[..., :, 1:] += u[..., :, :-1]
    s[..., :, :-1] += u[..., :, 1:]
    return s


def neighbour_count(height: int, width: int, device, dtype) -> torch.Tensor:
    """``|N_p|``: 4 inside, 3 on a canvas edge, 2 in a corner (fewer for 1-pixel-wide canvases)."""
    return neighbour_sum(torch.ones(height, width, device=device, dtype=dtype))


@dataclasses.dataclass
class _Level:
    unknown: torch.Tensor      # float 0/1 [B, 1, h, w]
    diag: torch.Tensor         # |N_p| [h, w]
    smooth: torch.Tensor       # ω·U/|N_p| [B, 1, h, w]


def _apply(level: _Level, u: torch.Tensor) -> torch.Tensor:
    """A·u on one level (u is zero outside the unknown set)."""
    return neighbour_sum(u).neg_().addcmul_(level.diag, u).mul_(level.unknown)


def _residual(level: _Level, u: torch.Tensor, b: torch.Tensor, masked: bool = True) -> torch.Tensor:
    """b − A·u; unmasked (garbage outside U) when the caller multiplies by a masked factor anyway."""
    r = neighbour_sum(u).add_(b).addcmul_(level.diag, u, value=-1)
    return r.mul_(level.unknown) if masked else r


def _prolong(c: torch.Tensor, shape) -> torch.Tensor:
    """Cell-centred bilinear interpolation to twice the size (borders replicated: Neumann), cropped to
    ``shape``. ``F.interpolate(..., align_corners=False)`` is exactly the 3/4-1/4 stencil."""
    h, w = c.shape[-2:]
    fine = F.interpolate(c, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    return fine[..., :shape[-2], :shape[-1]]


def _restrict(f: torch.Tensor, shape) -> torch.Tensor:
    """The exact transpose of :func:`_prolong` (the interpolation's own adjoint kernel), so the V-cycle
    is a symmetric preconditioner for CG."""
    h, w = shape[-2:]
    H, W = f.shape[-2:]
    if (H, W) != (2 * h, 2 * w):
        f = F.pad(f, (0, 2 * w - W, 0, 2 * h - H))
    return torch.ops.aten.upsample_bilinear2d_backward(f, [2 * h, 2 * w], list(f.shape[:-2]) + [h, w], False,
                                                       None, None)


class MaskedPoisson:
    """The hierarchy for one unknown set; :meth:`solve` runs MGPCG for any right-hand side.

    Args:
        unknown: bool ``[B, 1, H, W]``, True where the value is solved for. Every batch item must keep
            at least one known cell (an all-unknown item has no boundary; the caller handles it).
        dtype: float32 (default) or float64 arithmetic.
    """

    def __init__(self, unknown: torch.Tensor, dtype: torch.dtype = torch.float32):
        if unknown.ndim != 4 or unknown.shape[1] != 1:
            raise ValueError(f"unknown must be [B,1,H,W], got {tuple(unknown.shape)}")
        if bool(unknown.flatten(1).all(1).any()):
            raise ValueError("every batch item needs at least one known (Dirichlet) pixel")
        self.dtype = dtype
        self.levels: List[_Level] = []
        u = unknown.bool()
        while True:
            h, w = u.shape[-2:]
            diag = neighbour_count(h, w, u.device, dtype)
            uf = u.to(dtype)
            self.levels.append(_Level(uf, diag, JACOBI_OMEGA * uf / diag))
            if max(h, w) <= COARSEST or not bool(u.any()):
                break
            # Pad odd sides with "unknown" so that padding never turns a coarse cell into a Dirichlet one.
            u = F.pad(u.to(torch.uint8), (0, w % 2, 0, h % 2), value=1).bool()
            u = F.max_pool2d((~u).to(dtype), 2).bool().logical_not()
        self._coarse_inverse = self._dense_inverse(self.levels[-1])

    @staticmethod
    def _dense_inverse(level: _Level) -> torch.Tensor:
        """Inverse of the coarsest operator per batch item, ``[B, n, n]`` (identity rows on known cells)."""
        B, _, h, w = level.unknown.shape
        n = h * w
        basis = torch.eye(n, dtype=level.diag.dtype, device=level.diag.device).view(n, 1, 1, h, w)
        cols = _apply(level, basis * level.unknown)               # [n, B, 1, h, w]: A·e_j
        A = cols.reshape(n, B, n).permute(1, 2, 0)                # [B, n(row), n(col)]
        known = 1 - level.unknown.reshape(B, n)
        A = A + torch.diag_embed(known)
        return torch.linalg.inv(A.double()).to(level.diag.dtype) * (level.unknown.reshape(B, n, 1) *
                                                                    level.unknown.reshape(B, 1, n))

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        """A·u on the finest level (``u`` zero outside the unknown set)."""
        return _apply(self.levels[0], u)

    def vcycle(self, b: torch.Tensor, index: int = 0, sweeps: int = 2) -> torch.Tensor:
        """One symmetric V-cycle from a zero guess: an SPD approximation of ``A⁻¹·b``."""
        level = self.levels[index]
        if index == len(self.levels) - 1:
            B, C, h, w = b.shape
            return torch.einsum("bij,bcj->bci", self._coarse_inverse, b.reshape(B, C, h * w)).reshape(B, C, h, w)
        u = level.smooth * b
        for _ in range(sweeps - 1):
            u.addcmul_(level.smooth, _residual(level, u, b, masked=False))
        coarse = self.levels[index + 1]
        rc = _restrict(_residual(level, u, b), coarse.unknown.shape).mul_(coarse.unknown)
        u.add_(_prolong(self.vcycle(rc, index + 1, sweeps), b.shape).mul_(level.unknown))
        for _ in range(sweeps):
            u.addcmul_(level.smooth, _residual(level, u, b, masked=False))
        return u

    def solve(self, b: torch.Tensor, tol: float = 1e-5, max_iter: int = 100, x0: Optional[torch.Tensor] = None):
        """Preconditioned CG on ``A·x = b`` (``b`` ``[B, C, H, W]``, zero outside the unknown set).

        Stops when every system's largest absolute residual ``max_p |b − A·x|`` is at most ``tol``
        (residuals of the unscaled 5-point equations, i.e. in image units), or after ``max_iter``.

        Returns:
            ``(x, info)`` with ``info = {"iterations", "residual"}`` (the final max-abs residual).
        """
        b = b.to(self.dtype) * self.levels[0].unknown
        x = torch.zeros_like(b) if x0 is None else x0.to(self.dtype) * self.levels[0].unknown
        r = b - self.apply(x) if x0 is not None else b.clone()
        res = float(r.abs().amax()) if r.numel() else 0.0
        it = 0
        if res <= tol:
            return x, {"iterations": 0, "residual": res}
        z = self.vcycle(r)
        p = z
        rz = (r * z).sum((-2, -1), keepdim=True, dtype=torch.float64)
        while it < max_iter:
            it += 1
            Ap = self.apply(p)
            pAp = (p * Ap).sum((-2, -1), keepdim=True, dtype=torch.float64)
            alpha = torch.where(pAp > 0, rz / pAp.clamp_min(1e-300), torch.zeros_like(pAp)).to(self.dtype)
            x = x + alpha * p
            r = r - alpha * Ap
            res = float(r.abs().amax())
            if res <= tol or not math.isfinite(res):
                break
            z = self.vcycle(r)
            rz_new = (r * z).sum((-2, -1), keepdim=True, dtype=torch.float64)
            beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz)).to(self.dtype)
            rz = rz_new
            p = z + beta * p
        true_res = float((b - self.apply(x)).abs().amax())
        return x, {"iterations": it, "residual": true_res}
