"""Exact sub-pixel resampling for the zoom frames: antialiased separable kernels as banded weight
matrices, rendering a scaled or cropped layer, and feathered rectangle alphas."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rect:
    """Axis-aligned rectangle in continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``)."""

    x: float
    y: float
    w: float
    h: float


def centered_rect(height: int, width: int, scale: float) -> Rect:
    """The centred rectangle of size ``scale * W x scale * H`` inside an ``H x W`` frame."""
    w, h = width * scale, height * scale
    return Rect((width - w) / 2.0, (height - h) / 2.0, w, h)


def _kernel(x: torch.Tensor, kind: str) -> torch.Tensor:
    ax = x.abs()
    if kind == "bilinear":
        return (1.0 - ax).clamp_min(0.0)
    # Keys cubic convolution, a = -0.5 (PIL / OpenCV-like bicubic).
    a = -0.5
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (a + 2.0) * ax3 - (a + 3.0) * ax2 + 1.0
    far = a * ax3 - 5.0 * a * ax2 + 8.0 * a * ax - 4.0 * a
    return torch.where(ax <= 1.0, near, torch.where(ax < 2.0, far, torch.zeros_like(ax)))


def _support(step: float, kind: str) -> float:
    return (1.0 if kind == "bilinear" else 2.0) * max(step, 1.0)


def _source_range(out_size: int, out_start: int, src_size: int, origin: float, step: float,
                  kind: str) -> tuple[int, int]:
    """Source pixels ``[lo, hi)`` that output pixels ``out_start ..`` (+``out_size``) can touch."""
    support = _support(step, kind)
    u_lo = origin + (out_start + 0.5) * step
    u_hi = origin + (out_start + out_size - 0.5) * step
    lo = max(int(math.floor(min(u_lo, u_hi) - support - 0.5)), 0)
    hi = min(int(math.ceil(max(u_lo, u_hi) + support + 0.5)), src_size)
    return min(lo, src_size - 1), max(hi, min(lo, src_size - 1) + 1)


def resample_matrix(out_size: int, out_start: int, src_size: int, origin: float, step: float,
                    kind: str = "bicubic", dtype=torch.float32, device=None) -> tuple[torch.Tensor, int]:
    """Dense 1-D resampling weights for output pixels ``out_start .. out_start+out_size-1``.

    Output pixel centre ``X = x + 0.5`` maps to source coordinate ``U = origin + X * step`` (source
    pixel ``j`` has its centre at ``j + 0.5``). When ``step > 1`` (downscaling) the kernel is stretched
    by ``step`` (antialiasing). Taps outside the source are dropped and the rest renormalised, so every
    row sums to 1 (flat colours stay exactly flat).

    Returns:
        ``(W, j0)``: weights ``[out_size, n_src]`` over source pixels ``j0 .. j0+n_src-1``.
    """
    stretch = max(step, 1.0)
    lo, hi = _source_range(out_size, out_start, src_size, origin, step, kind)
    x = torch.arange(out_start, out_start + out_size, dtype=torch.float64, device=device)
    u = origin + (x + 0.5) * step
    j = torch.arange(lo, hi, dtype=torch.float64, device=device)
    w = _kernel((j[None, :] + 0.5 - u[:, None]) / stretch, kind)
    s = w.sum(dim=1, keepdim=True)
    # A row whose taps all fell outside (cannot happen for in-frame geometry) takes the nearest pixel.
    bad = s[:, 0].abs() < 1e-12
    if bool(bad.any()):
        nearest = (u - 0.5).round().clamp(lo, hi - 1).long() - lo
        w[bad] = 0.0
        w[bad, nearest[bad]] = 1.0
        s = w.sum(dim=1, keepdim=True)
    return (w / s).to(dtype), lo


_BLOCK = 32  # output px per band block: the weights are banded, so blocks skip most of the zeros


def banded_weights(out_size: int, out_start: int, src_size: int, origin: float, step: float,
                   kind: str = "bicubic", block: int = _BLOCK, dtype=torch.float32,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of :func:`resample_matrix` in block-banded form.

    Output pixels are grouped in blocks of ``block``; block ``b`` reads the source window
    ``starts[b] .. starts[b] + L - 1`` (always inside the source).

    Returns:
        ``(weights [nb, block, L], starts [nb] int64)``; rows past ``out_size`` are padding.
    """
    stretch = max(step, 1.0)
    support = _support(step, kind)
    nb = -(-out_size // block)
    span = min(src_size, int(math.ceil(block * step + 2.0 * support)) + 2)
    x = torch.arange(out_start, out_start + nb * block, dtype=torch.float64, device=device).view(nb, block)
    u = origin + (x + 0.5) * step
    starts = torch.floor(u[:, 0] - support - 0.5).clamp(0, src_size - span).to(torch.int64)
    j = starts[:, None] + torch.arange(span, device=device)
    w = _kernel((j[:, None, :].to(torch.float64) + 0.5 - u[:, :, None]) / stretch, kind)
    s = w.sum(dim=2, keepdim=True)
    bad = s[..., 0].abs() < 1e-12
    if bool(bad.any()):  # rows mapping outside the source (padding rows): nearest pixel
        nearest = ((u - 0.5).round() - starts[:, None].to(torch.float64)).clamp(0, span - 1).long()
        onehot = torch.nn.functional.one_hot(nearest, span).to(w.dtype)
        w = torch.where(bad[..., None], onehot, w)
        s = w.sum(dim=2, keepdim=True)
    return (w / s).to(dtype), starts


def _band_rows(src: torch.Tensor, weights: torch.Tensor, starts: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resample dim 1 of ``src [C, S, X]`` with banded weights: ``[C, out_size, X]``."""
    nb, block, span = weights.shape
    out = torch.empty((src.shape[0], out_size, src.shape[2]), dtype=src.dtype, device=src.device)
    for b, s in enumerate(starts.tolist()):  # each block reads only its band of source rows
        n = min(block, out_size - b * block)
        torch.matmul(weights[b, :n], src[:, s:s + span], out=out[:, b * block:b * block + n])
    return out


def _band_cols(src: torch.Tensor, weights: torch.Tensor, starts: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resample the last dim of ``src [C, H, S]`` with banded weights: ``[C, H, out_size]``."""
    nb, block, span = weights.shape
    c, h, _ = src.shape
    out = torch.empty((c * h, out_size), dtype=src.dtype, device=src.device)
    for b, s in enumerate(starts.tolist()):  # [C*H, span] strided view @ [span, n]: no gather, no copy
        n = min(block, out_size - b * block)
        out[:, b * block:b * block + n] = src[:, :, s:s + span].reshape(c * h, span) @ weights[b, :n].T
    return out.view(c, h, out_size)


def _resample_layer(src: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], origin_y: float,
                    origin_x: float, step_y: float, step_x: float, kind: str) -> torch.Tensor:
    """Resample channels-first ``src [C, Hs, Ws]`` to the output block ``rows x cols`` (``[C, h, w]``).

    Separable: a row pass then a column pass, each a product of block-banded weights with the
    source band every block needs (O(pixels x (block x step + taps)) work, not O(pixels x size)).
    """
    _, hs, ws = src.shape
    h, w = rows[1] - rows[0], cols[1] - cols[0]
    wy, sy = banded_weights(h, rows[0], hs, origin_y, step_y, kind, dtype=src.dtype, device=src.device)
    wx, sx = banded_weights(w, cols[0], ws, origin_x, step_x, kind, dtype=src.dtype, device=src.device)
    x0, x1 = int(sx.min()), int(sx.max()) + wx.shape[2]  # source columns the row pass must produce
    tmp = _band_rows(src[:, :, x0:x1], wy, sy, h)  # [C, h, x1-x0]
    return _band_cols(tmp, wx, sx - x0, w)


def render_scaled(image: torch.Tensor, height: int, width: int, rect: Rect, kind: str = "bicubic",
                  rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Render channels-first ``image [C, Hs, Ws]`` stretched onto ``rect`` of an ``height x width`` frame.

    Only the output block ``rows x cols`` is computed (default: the whole frame) and returned as
    ``[C, h, w]``; pixels outside ``rect`` get clamped-edge values and are meant to be masked by
    :func:`rect_alpha`.
    """
    hs, ws = image.shape[1], image.shape[2]
    rows = rows or (0, height)
    cols = cols or (0, width)
    step_y, step_x = hs / rect.h, ws / rect.w
    return _resample_layer(image, rows, cols, -rect.y * step_y, -rect.x * step_x, step_y, step_x, kind)


def render_crop(image: torch.Tensor, crop: Rect, height: int, width: int, kind: str = "bicubic") -> torch.Tensor:
    """Resample the (fractional) ``crop`` of channels-first ``image [C, Hs, Ws]`` to ``[C, height, width]``."""
    step_y, step_x = crop.h / height, crop.w / width
    return _resample_layer(image, (0, height), (0, width), crop.y, crop.x, step_y, step_x, kind)


def _axis_alpha(n: int, start: int, lo: float, hi: float, feather: float, dtype, device) -> torch.Tensor:
    x = torch.arange(start, start + n, dtype=torch.float64, device=device) + 0.5
    d = torch.minimum(x - lo, hi - x)  # signed distance of the pixel centre to the nearer edge
    a = ((d + 0.5) / (feather + 1.0)).clamp(0.0, 1.0)  # feather 0: pixel coverage (antialiased edge)
    if feather > 0:
        a = a * a * (3.0 - 2.0 * a)  # smoothstep: no kink where the ramp meets the flat part
    return a.to(dtype)


def rect_alpha(height: int, width: int, rect: Rect, feather: float, rows=None, cols=None,
               dtype=torch.float32, device=None) -> torch.Tensor:
    """Opacity ``[h, w]`` of a paste onto ``rect``: 1 inside, ramping to 0 over ``feather`` px at its edge.

    With ``feather = 0`` it is the pixel coverage of the rectangle (an antialiased hard edge).
    """
    rows = rows or (0, height)
    cols = cols or (0, width)
    ay = _axis_alpha(rows[1] - rows[0], rows[0], rect.y, rect.y + rect.h, feather, dtype, device)
    ax = _axis_alpha(cols[1] - cols[0], cols[0], rect.x, rect.x + rect.w, feather, dtype, device)
    return ay[:, None] * ax[None, :]


def pixel_bbox(rect: Rect, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    rows = (max(int(math.floor(rect.y)), 0), min(int(math.ceil(rect.y + rect.h)), height))
    cols = (max(int(math.floor(rect.x)), 0), min(int(math.ceil(rect.x + rect.w)), width))
    return rows, cols
