"""Fills for the new area of an outpaint canvas (the OutpaintPad node's ``fill``): per-pixel edge
replicate, reflect, symmetric, a constant colour, blurred edge colours, seeded noise."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .padding import PadBox

FILL_MODES = ("edge", "reflect", "symmetric", "color", "grey", "blur", "noise")



def _source_index(n_out: int, start: int, n: int, mode: str, device: torch.device) -> torch.Tensor:
    """Index into a length-``n`` source axis for every canvas coordinate (any pad size, one gather)."""
    k = torch.arange(n_out, device=device) - start
    if mode == "edge" or n == 1:
        return k.clamp(0, n - 1)
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 ...   (edge pixel not repeated)
        period = 2 * (n - 1)
        m = torch.remainder(k, period)
        return torch.where(m < n, m, period - m)
    period = 2 * n  # symmetric: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
    m = torch.remainder(k, period)
    return torch.where(m < n, m, period - 1 - m)


def _extend(image: torch.Tensor, box: PadBox, mode: str) -> torch.Tensor:
    """Canvas filled by ``edge``/``reflect``/``symmetric`` extension; the source is copied, not gathered.

    Only the pad strips are gathered (side strips from the source, then full-width top/bottom strips
    from the finished middle band), so the cost scales with the new area, not the canvas.
    """
    b, h, w, c = image.shape
    ch, cw = box.canvas_size(h, w)
    l, t = box.left, box.top
    out = image.new_empty((b, ch, cw, c))
    mid = out[:, t : t + h]
    mid[:, :, l : l + w] = image
    ix = _source_index(cw, l, w, mode, image.device)
    if l:
        mid[:, :, :l] = image.index_select(2, ix[:l])
    if box.right:
        mid[:, :, l + w :] = image.index_select(2, ix[l + w :])
    iy = _source_index(ch, t, h, mode, image.device)
    if t:
        out[:, :t] = mid.index_select(1, iy[:t])
    if box.bottom:
        out[:, t + h :] = mid.index_select(1, iy[t + h :])
    return out


def _constant_canvas(image: torch.Tensor, box: PadBox, value: torch.Tensor) -> torch.Tensor:
    """Canvas whose pad strips are ``value`` (per channel) and whose middle is the source."""
    b, h, w, c = image.shape
    ch, cw = box.canvas_size(h, w)
    l, t = box.left, box.top
    out = image.new_empty((b, ch, cw, c))
    out[:, :t] = value
    out[:, t + h :] = value
    out[:, t : t + h, :l] = value
    out[:, t : t + h, l + w :] = value
    out[:, t : t + h, l : l + w] = image
    return out


def _box_blur_axis(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Mean over a ``2*radius+1`` window along ``dim`` (edge-replicated), O(N) via cumulative sums."""
    n = x.shape[dim]
    idx = torch.arange(-radius - 1, n + radius, device=x.device).clamp(0, n - 1)
    padded = x.index_select(dim, idx)
    cs = padded.cumsum(dim)
    width = 2 * radius + 1
    hi = cs.narrow(dim, width, n)
    lo = cs.narrow(dim, 0, n)
    return (hi - lo) / width


def box_blur(x: torch.Tensor, radius: int, passes: int = 3) -> torch.Tensor:
    """Approximate Gaussian blur (sigma ~ radius) of ``[B,H,W,C]`` by repeated separable box blurs."""
    if radius <= 0:
        return x
    acc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    for _ in range(passes):
        acc = _box_blur_axis(acc, radius, 1)
        acc = _box_blur_axis(acc, radius, 2)
    return acc.to(x.dtype)


def _lerp_axis(x: torch.Tensor, u: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` at fractional positions ``u`` (clamped to the ends)."""
    n = x.shape[dim]
    u = u.clamp(0, n - 1)
    i0 = u.floor().long()
    i1 = (i0 + 1).clamp(max=n - 1)
    shape = [1] * x.ndim
    shape[dim] = -1
    wgt = (u - i0).view(shape).to(x.dtype)
    return torch.lerp(x.index_select(dim, i0), x.index_select(dim, i1), wgt)


def _blurred_extension(image: torch.Tensor, box: PadBox, radius: int) -> torch.Tensor:
    """Canvas = source + edge extension blurred with ``radius`` in the pads.

    Large radii work on an area-downsampled copy (only low frequencies survive such a blur): the
    source is downsampled by ``radius // 4``, edge-extended, blurred, and bilinearly resampled back
    only where pad pixels are, so the cost is one read of the source plus the new area.
    """
    b, h, w, c = image.shape
    scale = max(1, radius // 4)
    if scale == 1:
        out = box_blur(_extend(image, box, "edge"), radius)
        out[:, box.top : box.top + h, box.left : box.left + w] = image
        return out
    sh, sw = max(1, -(-h // scale)), max(1, -(-w // scale))
    small = torch.nn.functional.interpolate(image.movedim(-1, 1).float(), size=(sh, sw), mode="area").movedim(1, -1)
    sbox = type(box)(*(-(-p // scale) for p in box.as_tuple()))
    field = box_blur(_extend(small, sbox, "edge"), max(1, round(radius / scale)))  # [B, Hs', Ws', C]
    ch, cw = box.canvas_size(h, w)
    dev = image.device
    # canvas pixel centre -> small-grid coordinate (same mapping as bilinear align_corners=False)
    uy = (torch.arange(ch, device=dev, dtype=torch.float32) - box.top + 0.5) * (sh / h) - 0.5 + sbox.top
    ux = (torch.arange(cw, device=dev, dtype=torch.float32) - box.left + 0.5) * (sw / w) - 0.5 + sbox.left
    out = image.new_empty((b, ch, cw, c))
    out[:, box.top : box.top + h, box.left : box.left + w] = image
    for rows, cols in _pad_strips(box, h, w):
        ys, xs = uy[rows], ux[cols]
        if ys.numel() == 0 or xs.numel() == 0:
            continue
        out[:, rows, cols] = _lerp_axis(_lerp_axis(field, ys, 1), xs, 2).to(image.dtype)
    return out


def _pad_strips(box: PadBox, h: int, w: int) -> list[tuple[slice, slice]]:
    """(rows, cols) slices of the four pad strips: full-width top/bottom, source-height left/right."""
    t, l = box.top, box.left
    return [(slice(0, t), slice(None)), (slice(t + h, None), slice(None)),
            (slice(t, t + h), slice(0, l)), (slice(t, t + h), slice(l + w, None))]


def _add_noise(out: torch.Tensor, image: torch.Tensor, box: PadBox, seed: int) -> None:
    """Add seeded Gaussian noise with the source's per-channel std to the pad strips of ``out``, in place.

    Noise is drawn on the CPU strip by strip (top, bottom, left, right) so the same seed gives the same
    pixels on every device, and only new pixels cost anything. The std is estimated on a strided
    subsample of at most ~512x512 source pixels (exact for small images).
    """
    b, h, w, c = image.shape
    step = max(1, math.ceil(math.sqrt(h * w / 262144)))
    std = image[:, ::step, ::step].float().std(dim=(1, 2), keepdim=True, correction=0).to(out.dtype)  # [B,1,1,C]
    gen = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    for rows, cols in _pad_strips(box, h, w):
        region = out[:, rows, cols]
        if region.numel() == 0:
            continue
        noise = torch.randn(region.shape, generator=gen, dtype=torch.float32).to(out.device, out.dtype)
        region.addcmul_(noise, std).clamp_(0.0, 1.0)


def auto_blur_radius(box: PadBox) -> int:
    """Blur radius used by the ``blur``/``noise`` fills: a quarter of the largest pad, at least 4 px."""
    return max(4, max(box.as_tuple()) // 4)


def fill_canvas(
    image: torch.Tensor,
    box: PadBox,
    fill: str = "edge",
    color: str | Sequence[float] = "#808080",
    seed: int = 0,
    blur_radius: int | None = None,
) -> torch.Tensor:
    """Return the padded canvas ``[B, H', W', C]``; the source is copied bit-exactly into it.

    Args:
        image: ``[B, H, W, C]`` source batch (C = 3 or 4).
        box: pads per side.
        fill: ``edge`` replicates the nearest source pixel per row/column (never averaged);
            ``reflect`` mirrors without repeating the edge pixel, ``symmetric`` mirrors with it (both
            tile for pads larger than the source); ``color`` uses ``color``; ``grey`` is 0.5 like core;
            ``blur`` is the edge extension blurred with ``blur_radius`` (low-frequency colour, no
            streaks); ``noise`` is the blurred extension plus per-channel Gaussian noise with the
            source's standard deviation, seeded (CPU generator, identical on every device).
        color: colour for ``fill="color"`` (see :func:`parse_color`).
        seed: seed for ``fill="noise"``.
        blur_radius: radius for ``blur``/``noise`` (default :func:`auto_blur_radius`).
    """
    if fill not in FILL_MODES:
        raise ValueError(f"Unknown fill {fill!r}; choose one of {list(FILL_MODES)}.")
    b, h, w, c = image.shape
    if fill in ("color", "grey"):
        rgb = parse_color(color) if fill == "color" else (0.5, 0.5, 0.5)
        value = torch.tensor(rgb + (1.0,) * (c - 3), device=image.device, dtype=image.dtype)
        return _constant_canvas(image, box, value)  # alpha (if any) is already 1 in the pads
    if fill in ("edge", "reflect", "symmetric"):
        out = _extend(image, box, fill)
    else:  # blur / noise
        radius = auto_blur_radius(box) if blur_radius is None else int(blur_radius)
        out = _blurred_extension(image, box, radius)
        if fill == "noise":
            _add_noise(out, image, box, seed)
    if c == 4:
        for rows, cols in _pad_strips(box, h, w):
            out[:, rows, cols, 3] = 1.0  # new area is opaque (it will be generated); source alpha stays
    return out


def parse_color(color: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse ``"#RRGGBB"``, ``"#RGB"``, ``"R,G,B"`` (0-255 integers) or ``"0.2,0.4,1.0"`` (0-1 floats)."""
    if not isinstance(color, str):
        vals = [float(v) for v in color]
        if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
            raise ValueError(f"color must be three floats in 0..1, got {color!r}.")
        return tuple(vals)  # type: ignore[return-value]
    s = color.strip().lower()
    hexpart = s[1:] if s.startswith("#") else s
    if len(hexpart) in (3, 6) and all(ch in "0123456789abcdef" for ch in hexpart) and ("," not in s):
        if len(hexpart) == 3:
            hexpart = "".join(ch * 2 for ch in hexpart)
        return tuple(int(hexpart[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
    parts = [p.strip() for p in s.replace(" ", ",").split(",") if p.strip()]
    try:
        if len(parts) == 3 and any("." in p for p in parts):
            vals = [float(p) for p in parts]
            if all(0.0 <= v <= 1.0 for v in vals):
                return tuple(vals)  # type: ignore[return-value]
        elif len(parts) == 3:
            ints = [int(p) for p in parts]
            if all(0 <= v <= 255 for v in ints):
                return tuple(v / 255.0 for v in ints)  # type: ignore[return-value]
    except ValueError:
        pass
    raise ValueError(
        f"Cannot parse color {color!r}; use '#RRGGBB', '#RGB', 'R,G,B' with 0-255 integers or "
        "'0.5,0.5,0.5' with 0-1 floats."
    )
