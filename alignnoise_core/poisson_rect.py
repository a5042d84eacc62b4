"""Direct Poisson solve on "the canvas minus a rectangle": the outpainting case, exact and fast.

When the unknown set ``U`` is the canvas minus one axis-aligned known rectangle ``K`` (an outpaint
border on any subset of the four sides: a strip, an L, a U or a frame), the 5-point system of
:mod:`alignnoise_core.poisson` is split into at most four rectangles plus a few interface rows and
solved directly (a Schur complement / substructuring method, e.g. Smith, Bjørstad & Gropp, "Domain
Decomposition", 1996, ch. 4)::

    T  = rows [0, r0) × all columns        (Neumann top/left/right, Dirichlet below)
    Bt = rows [r1, H) × all columns        (Dirichlet above, Neumann elsewhere)
    L, R = the side strips between them, without their first/last row
    Γ  = the first/last rows of the side strips (they separate L and R from T and Bt)

On each rectangle the operator is separable: ``A = L_y ⊗ I + I ⊗ L_x`` where each 1-D factor is the
tridiagonal Laplacian with a Neumann (canvas edge) or Dirichlet (known or interface cell) end, whose
eigenvectors are known cosines/sines (DCT-II, quarter-wave DCT, DST-I). A rectangle solve is
``Φ_y · ((Φ_yᵀ f Φ_x) / (λ_y + λ_x)) · Φ_xᵀ``: four dense matmuls. The Γ unknowns (``2·(c0 + W − c1)``
at most) couple through the Schur complement ``S = A_ΓΓ − Σ_D E_Dᵀ A_DD⁻¹ E_D``, assembled once per
geometry from the same eigenpairs and Cholesky-factorised in float64. The result is the exact discrete
solution up to float rounding (one refinement step brings the residual to float32 level).
"""

from __future__ import annotations

import functools
import math
from typing import Dict, List, Optional, Tuple

import torch


def known_rectangle(unknown: torch.Tensor) -> Optional[Tuple[int, int, int, int]]:
    """``(r0, r1, c0, c1)`` when every item of ``unknown`` (bool ``[B, 1, H, W]``) is the canvas minus the
    same rectangle ``rows [r0, r1) × cols [c0, c1)`` (non-empty, not the whole canvas); else None."""
    first = unknown[0, 0]
    if not bool((unknown == first).all()):
        return None
    known = ~first
    rows = known.any(1).nonzero().flatten()
    cols = known.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if not bool(known[r0:r1, c0:c1].all()) or int(known.sum()) != (r1 - r0) * (c1 - c0):
        return None
    if (r0, r1, c0, c1) == (0, first.shape[0], 0, first.shape[1]):
        return None
    return r0, r1, c0, c1


@functools.lru_cache(maxsize=32)
def _basis_cpu(n: int, kind: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal eigenvectors (columns) and eigenvalues of the 1-D Laplacian of length ``n``.

    ``kind`` names the (start, end) conditions: ``N`` = Neumann (canvas edge), ``D`` = a Dirichlet
    neighbour beyond that end.
    """
    i = torch.arange(n, dtype=torch.float64)[:, None] + 0.5
    k = torch.arange(n, dtype=torch.float64)[None, :]
    if kind == "NN":
        omega = math.pi * k / n
        phi = torch.cos(omega * i)
    elif kind in ("ND", "DN"):
        omega = math.pi * (k + 0.5) / (n + 0.5)
        phi = torch.cos(omega * i)
        if kind == "DN":
            phi = phi.flip(0)
    elif kind == "DD":
        omega = math.pi * (k + 1) / (n + 1)
        phi = torch.sin(omega * (i + 0.5))
    else:
        raise ValueError(kind)
    phi = phi / phi.norm(dim=0, keepdim=True)
    return phi, (2 - 2 * torch.cos(omega)).flatten()


def _basis(n: int, kind: str, device, dtype):
    phi, lam = _basis_cpu(n, kind)
    return phi.to(device, dtype), lam.to(device, dtype)


def _forward(f: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """``Φ_yᵀ f Φ_x``, touching only the rows or columns where ``f`` is non-zero: with Poisson cloning the
    right-hand side lives on the cells next to the known rectangle (one row or one column)."""
    flat = f.reshape(-1, *f.shape[-2:]) != 0
    rows = flat.any(-1).any(0).nonzero().flatten()
    cols = flat.any(-2).any(0).nonzero().flatten()
    ny, nx = f.shape[-2:]
    if rows.numel() * nx <= cols.numel() * ny:
        return py[rows].T @ (f[..., rows, :] @ px)
    return (py.T @ f[..., cols]) @ px[cols]


class _Rect:
    """One subdomain: rows ``[y0, y1)`` × cols ``[x0, x1)`` with its per-axis boundary kinds."""

    def __init__(self, y0, y1, x0, x1, ykind, xkind):
        self.y0, self.y1, self.x0, self.x1 = y0, y1, x0, x1
        self.ykind, self.xkind = ykind, xkind
        # (local row, Γ indices, local cols) for every group of Γ cells next to this rectangle
        self.couplings: List[Tuple[int, torch.Tensor, torch.Tensor]] = []


class RectComplementPoisson:
    """Exact solver for ``U`` = canvas ``H × W`` minus the rectangle ``rows [r0, r1) × cols [c0, c1)``.

    Same contract as :class:`alignnoise_core.poisson.MaskedPoisson.solve` (``b`` zero outside ``U``).
    """

    def __init__(self, height: int, width: int, rect: Tuple[int, int, int, int], device, dtype=torch.float32):
        H, W = height, width
        r0, r1, c0, c1 = rect
        self.shape, self.rect, self.dtype, self.device = (H, W), rect, dtype, device
        top_side = "D" if r0 > 0 else "N"
        bottom_side = "D" if r1 < H else "N"
        gamma_rows = sorted({r for r, present in ((r0, r0 > 0), (r1 - 1, r1 < H)) if present})
        gamma_cols = [c for c in range(W) if c < c0 or c >= c1]
        ys, ye = (r0 + 1 if r0 > 0 else 0), (r1 - 1 if r1 < H else H)
        # Γ cells: the side-strip cells in the interface rows (only when there are side strips).
        self.gamma = [(r, c) for r in gamma_rows for c in gamma_cols] if gamma_cols else []
        self.rects: List[_Rect] = []
        if r0 > 0:
            self.rects.append(_Rect(0, r0, 0, W, "ND", "NN"))
        if r1 < H:
            self.rects.append(_Rect(r1, H, 0, W, "DN", "NN"))
        if ys < ye:
            ykind = top_side + bottom_side
            if c0 > 0:
                self.rects.append(_Rect(ys, ye, 0, c0, ykind, "ND"))
            if c1 < W:
                self.rects.append(_Rect(ys, ye, c1, W, ykind, "DN"))
        g_r = torch.tensor([g[0] for g in self.gamma], dtype=torch.long)
        g_c = torch.tensor([g[1] for g in self.gamma], dtype=torch.long)
        self.g_r, self.g_c = g_r.to(device), g_c.to(device)
        for rect_ in self.rects:
            for row, local in ((rect_.y0 - 1, 0), (rect_.y1, rect_.y1 - rect_.y0 - 1)):
                sel = ((g_r == row) & (g_c >= rect_.x0) & (g_c < rect_.x1)).nonzero().flatten()
                if sel.numel():
                    rect_.couplings.append((local, sel.to(device), (g_c[sel] - rect_.x0).to(device)))
        self._factor = self._schur() if self.gamma else None

    def _eig(self, rect_: _Rect, dtype):
        py, ly = _basis(rect_.y1 - rect_.y0, rect_.ykind, self.device, dtype)
        px, lx = _basis(rect_.x1 - rect_.x0, rect_.xkind, self.device, dtype)
        return py, ly, px, lx

    def _schur(self) -> torch.Tensor:
        """Cholesky factor of ``S = A_ΓΓ − Σ_D E_Dᵀ A_DD⁻¹ E_D`` (float64)."""
        H, W = self.shape
        n = len(self.gamma)
        g_r, g_c = self.g_r.cpu(), self.g_c.cpu()
        near = ((g_r[:, None] - g_r[None]).abs() + (g_c[:, None] - g_c[None]).abs()) == 1
        diag = ((g_r > 0).double() + (g_r < H - 1).double() + (g_c > 0).double() + (g_c < W - 1).double())
        S = torch.diag(diag) - near.double()
        S = S.to(self.device)
        for rect_ in self.rects:
            py, ly, px, lx = self._eig(rect_, torch.float64)
            denom = ly[None, :] + lx[:, None]                          # [nx, ny]
            for a, ia, ca in rect_.couplings:
                for b, ib, cb in rect_.couplings:
                    h = ((py[a] * py[b])[None, :] / denom).sum(1)     # [nx]
                    G = (px[ca] * h) @ px[cb].T
                    S[ia[:, None], ib[None, :]] -= G
        return torch.linalg.cholesky(S)

    def _solve_once(self, b: torch.Tensor) -> torch.Tensor:
        dt = self.dtype
        b = b.to(dt)
        x = torch.zeros_like(b)
        spectra = []
        gamma_rhs = b[..., self.g_r, self.g_c].double() if self.gamma else None
        for rect_ in self.rects:
            py, ly, px, lx = self._eig(rect_, dt)
            f = b[..., rect_.y0:rect_.y1, rect_.x0:rect_.x1]
            Y = _forward(f, py, px) / (ly[:, None] + lx[None, :])
            spectra.append((rect_, py, px, ly, lx, Y))
            for a, ia, ca in rect_.couplings:
                gamma_rhs[..., ia] += ((py[a] @ Y) @ px[ca].T).double()
        if self.gamma:
            c_gamma = torch.cholesky_solve(gamma_rhs.unsqueeze(-1).flatten(0, -3), self._factor)
            c_gamma = c_gamma.view(gamma_rhs.shape).to(dt)
            x[..., self.g_r, self.g_c] = c_gamma
        for rect_, py, px, ly, lx, Y in spectra:
            for a, ia, ca in rect_.couplings:
                # Γ values act as Dirichlet data on row a: their spectrum is py[a] ⊗ (c_Γ · px[ca]).
                Y = Y + (py[a][:, None] * (c_gamma[..., ia] @ px[ca])[..., None, :]) / (ly[:, None] + lx[None, :])
            x[..., rect_.y0:rect_.y1, rect_.x0:rect_.x1] = py @ Y @ px.T
        return x

    def solve(self, b: torch.Tensor, tol: float = 1e-5, max_iter: int = 3, apply=None):
        """Direct solve plus up to ``max_iter − 1`` refinement steps while ``max|b − A·x| > tol``."""
        x = self._solve_once(b)
        res, it = float("inf"), 1
        if apply is None:
            return x, {"iterations": 1, "residual": float("nan")}
        while True:
            r = b.to(x.dtype) - apply(x)
            res = float(r.abs().amax()) if r.numel() else 0.0
            if res <= tol or it >= max_iter:
                break
            x = x + self._solve_once(r)
            it += 1
        return x, {"iterations": it, "residual": res}
