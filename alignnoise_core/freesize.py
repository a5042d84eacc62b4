"""Free-size outpainting: native-size windows over a large canvas (host-free torch).

Three orders of windows, one contract (:func:`outpaint_windows`):

* ``raster``: DDNM's *Mask-Shift Restoration* (Wang et al., "Zero-Shot Image Restoration Using
  Denoising Diffusion Null-Space Model", ICLR 2023; ``wyhuai/DDNM`` hq_demo): windows of the native
  size with 50 % overlap in raster order, the last window of a row/column aligned to the border; the
  overlap with finished windows is treated as known.
* ``nearest_first``: greedily the window whose crop holds the most known pixels (source + finished).
* ``sides``: the sequential outpainting of the infinite-zoom blog (Hatesz, "Infinite zoom with Stable
  Diffusion", ``iamhatesz/fun-with-ml``): left, top, right, bottom, one side per generation, on a
  canvas that grows side by side. The blog's right/bottom masks miss one column/row (``>`` instead
  of ``>=``); here every stage regenerates exactly the masked pixels of its strip.

*Hierarchical Restoration* (DDNM, Sec. 3.4): the whole canvas is first outpainted at window size
(global layout), then every window's x0 prediction is projected so its ``k x k`` average-pooled
latent equals that of the upscaled global result (:func:`lowpass_constraint`, DDNM's range-null-space
step with A = average pooling, A^+ = nearest upsampling).

Images are ``[H, W, C]`` floats in 0..1, masks ``[H, W]`` with 1 = generate (ComfyUI's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import seamless

ORDERS = ("raster", "nearest_first", "sides")
SIDES = ("left", "top", "right", "bottom")
# How a window's result joins the pixels already there: the methods of SeamlessComposite.
BLENDS = ("alpha",) + tuple(m for m in seamless.METHODS if m != "alpha")


@dataclass(frozen=True)
class Window:
    """One sampling pass: a crop ``[top:top+height, left:left+width]`` of the canvas.

    Attributes:
        index: position in the processing order (0-based).
        stage: ``"all"`` or, for the ``sides`` order, the side being outpainted.
        pending: masked pixels this window generates (the rest of its crop is known).
    """

    index: int
    top: int
    left: int
    height: int
    width: int
    stage: str
    pending: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def as_dict(self) -> dict:
        return {"index": self.index, "top": self.top, "left": self.left, "height": self.height,
                "width": self.width, "stage": self.stage, "pending": self.pending}


def check_layout_args(height: int, width: int, window: int, overlap: float, align: int = 8) -> None:
    """Raise ``ValueError`` (before any model call) when windows cannot be laid out."""
    if window <= 0 or window % align:
        raise ValueError(f"window must be a positive multiple of {align} px (the VAE's factor), got {window}; "
                         f"try {max(align, round(window / align) * align)}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap is a fraction of the window and must be in [0, 1), got {overlap} "
                         f"(an overlap as large as the window never advances); DDNM uses 0.5.")
    if height % align or width % align:
        raise ValueError(f"The canvas is {width}x{height} px; windows need both sides to be multiples of {align}. "
                         f"Pad with OutpaintPad (multiple = {align}) or crop the image.")


def stride_of(size: int, overlap: float, align: int = 8) -> int:
    """Window step (px): ``size * (1 - overlap)`` rounded down to the alignment, at least one unit."""
    return max(align, int(size * (1.0 - overlap)) // align * align)


def axis_positions(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, the last one aligned to the border (DDNM)."""
    if length <= size:
        return [0]
    n = math.ceil((length - size) / stride) + 1
    return [min(i * stride, length - size) for i in range(n)]


def tile_rect(top: int, left: int, height: int, width: int, window: int, overlap: float,
              align: int = 8) -> list[tuple[int, int, int, int]]:
    """Raster-ordered windows ``(top, left, h, w)`` covering a rectangle; a side shorter than
    ``window`` gets one window of its own length."""
    h, w = min(window, height), min(window, width)
    ys = axis_positions(height, h, stride_of(h, overlap, align))
    xs = axis_positions(width, w, stride_of(w, overlap, align))
    return [(top + y, left + x, h, w) for y in ys for x in xs]


def known_box(mask: torch.Tensor, align: int = 8) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, x0, y1, x1)`` of the source (mask < 0.5), snapped inwards to the alignment
    (the grown canvas of each side stage is then a multiple of it), or None without a source."""
    keep = mask < 0.5
    if not bool(keep.any()):
        return None
    rows = torch.nonzero(keep.any(dim=1)).flatten()
    cols = torch.nonzero(keep.any(dim=0)).flatten()
    y0, x0 = int(rows[0]), int(cols[0])
    y1, x1 = int(rows[-1]) + 1, int(cols[-1]) + 1
    up = lambda v: -(-v // align) * align  # noqa: E731
    y0, x0 = up(y0), up(x0)
    y1, x1 = max(y0 + align, y1 // align * align), max(x0 + align, x1 // align * align)
    return y0, x0, min(y1, mask.shape[0]), min(x1, mask.shape[1])


def side_stages(mask: torch.Tensor, align: int = 8) -> list[tuple[str, tuple[int, int, int, int]]]:
    """The blog's four growing canvases ``(side, (top, left, h, w))``: source + left strip, + top,
    + right, + bottom (= the whole canvas). Without a source: one stage, the whole canvas."""
    height, width = mask.shape
    box = known_box(mask, align)
    if box is None:
        return [("all", (0, 0, height, width))]
    y0, x0, y1, x1 = box
    return [("left", (y0, 0, y1 - y0, x1)), ("top", (0, 0, y1, x1)),
            ("right", (0, 0, y1, width)), ("bottom", (0, 0, height, width))]


def plan_windows(mask: torch.Tensor, window: int, overlap: float = 0.5, order: str = "raster",
                 align: int = 8) -> list[Window]:
    """The processing order of the windows for an outpaint ``mask`` ``[H, W]`` (1 = generate).

    Every window is simulated: it generates the masked pixels of its crop not generated before
    (``pending``), and windows with nothing pending are dropped, so the plan covers every masked
    pixel exactly once.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got '{order}'.")
    height, width = mask.shape
    check_layout_args(height, width, window, overlap, align)
    todo = mask > 0
    if not bool(todo.any()):
        raise ValueError("The mask has nothing to outpaint (all zero): connect OutpaintPad's mask, whose "
                         "1 = the new area to generate.")
    plan: list[Window] = []

    def take(stage, rect):
        (t, l, h, w) = rect
        region = todo[t:t + h, l:l + w]
        count = int(region.sum())
        if count:
            plan.append(Window(len(plan), t, l, h, w, stage, count))
            region[...] = False
        return count

    if order == "sides":
        for side, rect in side_stages(mask, align):
            for r in tile_rect(*rect, window, overlap, align):
                take(side, r)
    elif order == "raster":
        for r in tile_rect(0, 0, height, width, window, overlap, align):
            take("all", r)
    else:  # nearest_first: the most known pixels (source + generated) in the crop first
        candidates = tile_rect(0, 0, height, width, window, overlap, align)
        cy, cx = _source_centre(mask)

        def rank(r):  # has work, most known pixels, then closest to the source (sides alternate), raster
            crop = todo[r[0]:r[0] + r[2], r[1]:r[1] + r[3]]
            dist = (r[0] + r[2] / 2 - cy) ** 2 + (r[1] + r[3] / 2 - cx) ** 2
            return int(crop.any()), int((~crop).sum()), -dist, -candidates.index(r)

        while bool(todo.any()):
            best = max(candidates, key=rank)
            take("all", best)
            candidates.remove(best)
    return plan


def _source_centre(mask: torch.Tensor) -> tuple[float, float]:
    """Centroid (y, x) of the source pixels (mask < 0.5), or the canvas centre without a source."""
    keep = (mask < 0.5).nonzero().float()
    if keep.numel() == 0:
        return mask.shape[0] / 2, mask.shape[1] / 2
    centre = keep.mean(0) + 0.5
    return float(centre[0]), float(centre[1])


def fits_one_window(height: int, width: int, window: int) -> bool:
    return height <= window and width <= window


def global_size(height: int, width: int, window: int, align: int = 8) -> tuple[int, int]:
    """Size of the hierarchical first pass: the canvas scaled to fit one window, aligned."""
    scale = min(window / height, window / width, 1.0)
    snap = lambda v: max(align, int(round(v * scale / align)) * align)  # noqa: E731
    return snap(height), snap(width)


def pool_factor(height: int, width: int, window: int) -> int:
    """Latent cells per low-resolution cell of the global result: ceil(canvas / global scale)."""
    return max(1, math.ceil(max(height, width) / window))


def lowpass_constraint(x0: torch.Tensor, guide: torch.Tensor, factor: int,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """DDNM's range-null-space projection with A = ``factor x factor`` average pooling:
    ``x0 + A^+(A guide - A x0)`` (A^+ = nearest upsampling), i.e. keep the high frequencies of ``x0``
    and take the block means of ``guide``. ``mask`` (1 = constrain) broadcasts over ``x0 [B,C,H,W]``."""
    if factor <= 1:
        delta = guide - x0
    else:
        h, w = x0.shape[-2:]
        ph, pw = (-h) % factor, (-w) % factor
        diff = F.pad(guide - x0, (0, pw, 0, ph), mode="replicate")
        low = F.avg_pool2d(diff, factor)
        delta = low.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)[..., :h, :w]
    return x0 + (delta if mask is None else mask * delta)


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[H, W, C]`` (or ``[H, W]``) resized: area when shrinking, bilinear when enlarging."""
    x = image[..., None] if image.ndim == 2 else image
    t = x.permute(2, 0, 1)[None]
    mode = "area" if height <= x.shape[0] and width <= x.shape[1] else "bilinear"
    out = F.interpolate(t, size=(height, width), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    out = out[0].permute(1, 2, 0)
    return out[..., 0] if image.ndim == 2 else out


def blend_weight(pending: torch.Tensor, feather: int) -> torch.Tensor:
    """Alpha of a window's result in its crop: 1 on the pixels it generated, then a linear ramp over
    ``feather`` px into the already-known pixels (chessboard distance), so a window's VAE-decoded
    rendition of the known overlap fades into what is already there instead of a hard seam."""
    weight = pending.float()
    if feather <= 0:
        return weight
    grown = weight[None, None]
    out = weight.clone()
    for d in range(1, feather + 1):
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
        ring = (grown[0, 0] > 0) & (out == 0)
        out[ring] = 1.0 - d / (feather + 1)
    return out


RunWindow = Callable[[Window, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def join_window(current: torch.Tensor, result: torch.Tensor, pending: torch.Tensor, blend: str = "alpha",
                feather: int = 0) -> torch.Tensor:
    """A window's crop after its pass: ``result`` on the ``pending`` pixels, joined to ``current``.

    ``alpha``: the :func:`blend_weight` ramp over ``feather`` px into the known pixels. ``poisson`` /
    ``mixed`` / ``color_match``: SeamlessComposite (Pérez et al. 2003) with Ω = the pending pixels and
    the known pixels of the crop as the boundary, so the new pixels meet the old ones without a
    colour step; known pixels stay exact.
    """
    if blend == "alpha":
        a = blend_weight(pending, feather)[..., None].to(result.dtype)
        return current * (1 - a) + result * a
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got '{blend}'.")
    if bool(pending.all()):
        return torch.where(pending[..., None], result, current)  # no known pixel: nothing to match
    out, _, _ = seamless.seamless_composite(current[None], result[None], pending.float()[None], method=blend)
    return out[0].to(current.dtype)


def outpaint_windows(image: torch.Tensor, mask: torch.Tensor, plan: list[Window], run_window: RunWindow,
                     feather: int = 0, guide: torch.Tensor | None = None, blend: str = "alpha") -> torch.Tensor:
    """Run ``plan``: each window sees the source plus everything generated so far as known.

    Args:
        image: the canvas ``[H, W, C]`` (source + initial fill of the outpaint area).
        mask: ``[H, W]`` 1 = generate (soft values blend the source in the final composite).
        plan: from :func:`plan_windows`.
        run_window: ``run_window(window, pixels, regenerate, guide_crop) -> pixels``: one sampling
            pass on the crop; ``regenerate`` ``[h, w]`` is the mask of the pixels to generate (the
            source mask's values there, 0 on everything known).
        feather: px of the ``alpha`` blend ramp into already generated pixels.
        guide: optional ``[H, W, C]`` global result (hierarchical restoration), cropped per window.
        blend: how each window joins the known pixels (:func:`join_window`).

    Returns:
        ``[H, W, C]``: ``image * (1 - mask) + generated * mask``, the source exact where mask = 0.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got '{blend}'.")
    m = mask.to(image.dtype)[..., None]
    generated = image.clone()
    done = mask <= 0  # known: the source, then every finished window
    written = torch.zeros_like(done)  # generated by a finished window
    for win in plan:
        ys, xs = win.slices
        composite = image[ys, xs] * (1 - m[ys, xs]) + generated[ys, xs] * m[ys, xs]
        view = torch.where(written[ys, xs, None], composite, image[ys, xs])  # untouched pixels stay bit-exact
        pending = ~done[ys, xs]
        regenerate = torch.where(pending, mask[ys, xs], torch.zeros_like(mask[ys, xs]))
        out = run_window(win, view, regenerate, None if guide is None else guide[ys, xs])
        if tuple(out.shape) != tuple(view.shape):
            raise ValueError(f"window {win.index} returned shape {tuple(out.shape)} for a crop {tuple(view.shape)}.")
        if blend == "alpha":
            generated[ys, xs] = join_window(generated[ys, xs], out, pending, "alpha", feather)
        else:  # the solver matches the new pixels to what the crop shows (source + finished windows)
            joined = join_window(view, out, pending, blend)
            generated[ys, xs] = torch.where(pending[..., None], joined, generated[ys, xs])
        done[ys, xs] = True
        written[ys, xs] |= pending
    return image * (1 - m) + generated * m


# 3x5 bitmap digits (rows top to bottom, 3 bits each): no font files needed.
_DIGITS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
}
_PALETTE = torch.tensor([[0.95, 0.25, 0.2], [0.2, 0.8, 0.3], [0.25, 0.5, 1.0], [1.0, 0.8, 0.1],
                         [0.8, 0.3, 0.9], [0.1, 0.85, 0.85]])


def text_bitmap(text: str) -> torch.Tensor:
    """``[5, 4 * len(text) - 1]`` bool bitmap of a decimal number in the 3x5 font."""
    cols = []
    for i, ch in enumerate(text):
        rows = _DIGITS[ch]
        glyph = torch.tensor([[(r >> (2 - c)) & 1 for c in range(3)] for r in rows], dtype=torch.bool)
        cols.append(glyph if i == 0 else torch.cat([torch.zeros(5, 1, dtype=torch.bool), glyph], dim=1))
    return torch.cat(cols, dim=1)


def draw_layout(plan: list[Window], mask: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
    """Preview ``[H, W, 3]`` of the window layout: the canvas (outpaint area darkened), each window's
    outline in its colour and its order number (1-based) in the middle of its crop."""
    height, width = mask.shape
    base = image[..., :3].float().clone() if image is not None else torch.full((height, width, 3), 0.5)
    out = base * (1 - 0.5 * mask.float()[..., None].clamp(0, 1))
    line = max(1, min(height, width) // 128)
    for win in plan:
        color = _PALETTE[win.index % len(_PALETTE)]
        ys, xs = win.slices
        inset = (win.index % 4) * line  # overlapping outlines stay distinguishable
        t, l = win.top + inset, win.left + inset
        b, r = win.top + win.height - inset, win.left + win.width - inset
        for sl in ((slice(t, t + line), slice(l, r)), (slice(b - line, b), slice(l, r)),
                   (slice(t, b), slice(l, l + line)), (slice(t, b), slice(r - line, r))):
            out[sl] = color
        glyphs = text_bitmap(str(win.index + 1))
        scale = max(1, min(win.height // 4 // 7, win.width // 3 // (glyphs.shape[1] + 2)))
        big = glyphs.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        gh, gw = big.shape
        cy, cx = win.top + win.height // 2, win.left + win.width // 2
        y0, x0 = max(0, cy - gh // 2), max(0, cx - gw // 2)
        y1, x1 = min(height, y0 + gh), min(width, x0 + gw)
        pad = scale
        box = out[max(0, y0 - pad):min(height, y1 + pad), max(0, x0 - pad):min(width, x1 + pad)]
        box.mul_(0.25)
        cell = out[y0:y1, x0:x1]
        cell[big[:y1 - y0, :x1 - x0]] = color
    return out.clamp(0, 1)
