"""Outpainting canvas: pad an image batch, fill the new area and build the inpainting mask.

Host-free (torch only). This is the math behind the ``OutpaintPad`` node and a drop-in, faster and
more complete replacement for ComfyUI core's ``ImagePadForOutpaint``:

* geometry: per-side pads or a target canvas with an anchor, rounded up to a multiple (8/16/64)
  without ever cropping the source;
* fill of the new area: ``edge`` (per-pixel replicate), ``reflect``, ``symmetric``, ``color``,
  ``grey`` (0.5, core's behaviour), ``blur`` (blurred edge extension) and ``noise`` (seeded);
* mask: exactly 1 on padded pixels, a feather ramp (``quadratic`` as core, ``linear``, ``smooth``)
  of ``feathering`` px into the source after ``overlap`` px of full strength, exactly 0 beyond;
  an incoming mask is padded with 1s and merged (max), so feathering still applies with it;
  ``soft`` output for ``InpaintModelConditioning`` or ``hard`` (binary) for ``VAEEncodeForInpaint``.

Everything is vectorised (gathers, cumulative-sum box blurs, broadcast distance maps) and runs on the
input's device and dtype. Images are ComfyUI IMAGE tensors ``[B, H, W, C]`` in 0..1 with C = 3 (RGB)
or 4 (RGBA: the alpha of the new area is 1.0, i.e. opaque, in every fill mode, because the area will
be generated as opaque pixels; the source alpha is kept exactly). Masks are ``[B, H, W]`` (1 = generate).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .fills import FILL_MODES, fill_canvas, parse_color  # noqa: F401  (public API of padding)
from .validation import mask_bhw, require_finite

log = logging.getLogger("alignnoise")

SIZE_MODES = ("per_side", "target")
ANCHORS = (
    "center",
    "top_left",
    "top",
    "top_right",
    "left",
    "right",
    "bottom_left",
    "bottom",
    "bottom_right",
)
FEATHER_CURVES = ("quadratic", "linear", "smooth")
MASK_MODES = ("soft", "hard")
MULTIPLES = (1, 8, 16, 32, 64)

# Fraction along each axis at which the source sits inside the free space, per anchor.
_ANCHOR_FRACTIONS = {
    "center": (0.5, 0.5),
    "top_left": (0.0, 0.0),
    "top": (0.5, 0.0),
    "top_right": (1.0, 0.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "bottom_left": (0.0, 1.0),
    "bottom": (0.5, 1.0),
    "bottom_right": (1.0, 1.0),
}


@dataclass(frozen=True)
class PadBox:
    """Pixels added on each side of the source; the source sits at ``[top:top+H, left:left+W]``."""

    left: int
    top: int
    right: int
    bottom: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.right, self.bottom)

    @property
    def is_zero(self) -> bool:
        return not any(self.as_tuple())

    def canvas_size(self, height: int, width: int) -> tuple[int, int]:
        """Return ``(canvas_height, canvas_width)`` for a ``height`` x ``width`` source."""
        return height + self.top + self.bottom, width + self.left + self.right


class OutpaintResult(NamedTuple):
    image: torch.Tensor  # [B, H', W', C]
    mask: torch.Tensor  # [B, H', W'], 1 = generate
    box: PadBox


# --------------------------------------------------------------------------------------------- geometry


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _check_multiple(multiple: int) -> int:
    if isinstance(multiple, str):
        multiple = int(multiple)
    if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive integer (1 = no rounding), got {multiple!r}.")
    return multiple


def _split_extra(extra: int, before: int, after: int) -> tuple[int, int]:
    """Distribute rounding pixels over one axis: onto the side(s) already padded, else after."""
    if extra == 0:
        return before, after
    if before > 0 and after > 0:
        return before + extra // 2, after + extra - extra // 2
    if before > 0:
        return before + extra, after
    return before, after + extra


def pad_box_per_side(
    height: int, width: int, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0, multiple: int = 8
) -> PadBox:
    """Pad box for explicit per-side pads, with the canvas rounded up to ``multiple``.

    Rounding only ever adds pixels (the source is never cropped); they go to the side(s) of that axis
    that are already padded (split evenly if both), or to the right/bottom if neither is. All-zero pads
    mean "no outpainting": the box stays zero and no rounding is applied (the node returns its input).

    Args:
        height, width: source size in pixels.
        left, top, right, bottom: requested pads in pixels (>= 0).
        multiple: canvas width and height are rounded up to a multiple of this (1 = off). Latent
            models need 8; some prefer 16 or 64.
    """
    multiple = _check_multiple(multiple)
    pads = {"left": left, "top": top, "right": right, "bottom": bottom}
    bad = {k: v for k, v in pads.items() if int(v) != v or v < 0}
    if bad:
        raise ValueError(f"Pads must be non-negative integers (pixels), got {bad}.")
    left, top, right, bottom = (int(pads[k]) for k in ("left", "top", "right", "bottom"))
    if left == top == right == bottom == 0:
        return PadBox(0, 0, 0, 0)
    canvas_h, canvas_w = height + top + bottom, width + left + right
    left, right = _split_extra(_round_up(canvas_w, multiple) - canvas_w, left, right)
    top, bottom = _split_extra(_round_up(canvas_h, multiple) - canvas_h, top, bottom)
    return PadBox(left, top, right, bottom)


def pad_box_target(
    height: int,
    width: int,
    target_width: int,
    target_height: int,
    anchor: str = "center",
    multiple: int = 8,
) -> PadBox:
    """Pad box that places the source inside a ``target_width`` x ``target_height`` canvas.

    The canvas is rounded up to ``multiple``; ``anchor`` says where the source sits (``center``,
    ``top_left`` ... ``bottom_right``); with ``center`` an odd remainder goes to the right/bottom.
    A target of 0 keeps the source size on that axis (e.g. widen only).

    Raises:
        ValueError: if the target is smaller than the source (that would crop it) or the anchor is unknown.
    """
    multiple = _check_multiple(multiple)
    if anchor not in _ANCHOR_FRACTIONS:
        raise ValueError(f"Unknown anchor {anchor!r}; choose one of {list(ANCHORS)}.")
    if any(int(v) != v or v < 0 for v in (target_width, target_height)):
        raise ValueError(
            f"target_width/target_height must be non-negative integers, got {target_width!r} x {target_height!r}."
        )
    tw = int(target_width) or width
    th = int(target_height) or height
    if tw < width or th < height:
        raise ValueError(
            f"Target canvas {tw}x{th} (WxH) is smaller than the source image {width}x{height}; outpainting never "
            f"crops. Use a target of at least {width}x{height}, or 0 to keep the source size on an axis."
        )
    canvas_w, canvas_h = _round_up(tw, multiple), _round_up(th, multiple)
    fx, fy = _ANCHOR_FRACTIONS[anchor]
    free_w, free_h = canvas_w - width, canvas_h - height
    left = math.floor(free_w * fx)
    top = math.floor(free_h * fy)
    return PadBox(left, top, free_w - left, free_h - top)


# -------------------------------------------------------------------------------------------- validation


def validate_image(image: torch.Tensor) -> None:
    """Raise a ValueError naming the problem if ``image`` is not a usable IMAGE batch."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor [B,H,W,C], got {type(image).__name__}.")
    if image.ndim != 4:
        raise ValueError(f"image must have shape [B,H,W,C] (ComfyUI IMAGE), got shape {tuple(image.shape)}.")
    b, h, w, c = image.shape
    if b == 0:
        raise ValueError(f"image batch is empty (shape {tuple(image.shape)}); nothing to pad.")
    if h == 0 or w == 0:
        raise ValueError(f"image has zero height or width (shape {tuple(image.shape)}).")
    if c not in (3, 4):
        raise ValueError(
            f"image must be RGB (C=3) or RGBA (C=4) in the last dim, got C={c} (shape {tuple(image.shape)}). "
            "Convert greyscale or multi-channel images to RGB first."
        )
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor in 0..1, got dtype {image.dtype}.")
    require_finite(image, "'image'")


def prepare_mask(mask: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor | None:
    """Normalise an incoming mask to ``[Bm, H, W]`` (Bm = 1 or B) on the image's device/dtype.

    Accepts ``[H, W]``, ``[Bm, H, W]`` or ``[Bm, 1, H, W]``; one mask may serve a whole batch. An
    all-zero mask of another size (``LoadImage``'s placeholder for images without alpha) is ignored.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor [B,H,W], got {type(mask).__name__}.")
    b, h, w, _ = image.shape
    m = mask_bhw(mask, what="mask")
    if tuple(m.shape[-2:]) != (h, w):
        if m.shape[0] in (1, b) and not bool(m.any()):
            # ComfyUI's LoadImage returns a 64x64 all-zero placeholder mask for images without alpha;
            # an all-zero mask adds nothing to the merge, so its size does not matter.
            log.info("OutpaintPad: ignoring an all-zero %s mask (image %s)", tuple(mask.shape), tuple(image.shape))
            return None
        raise ValueError(
            f"mask size {tuple(m.shape[-2:])} (HxW, mask shape {tuple(mask.shape)}) does not match the image size "
            f"{(h, w)} (image shape {tuple(image.shape)}). The incoming mask must cover the source image."
        )
    if m.shape[0] not in (1, b):
        raise ValueError(
            f"mask batch {m.shape[0]} (mask shape {tuple(mask.shape)}) does not match the image batch {b} "
            f"(image shape {tuple(image.shape)}); pass one mask for the whole batch or one per image."
        )
    return m.to(device=image.device, dtype=image.dtype)


# ----------------------------------------------------------------------------------------------- colour


# ------------------------------------------------------------------------------------------------- fill


# ------------------------------------------------------------------------------------------------- mask


def _axis_distance(n_out: int, start: int, n: int, pad_before: int, pad_after: int, device, dtype) -> torch.Tensor:
    """Per canvas coordinate: distance (px, 0 = the edge pixel) to the nearest *padded* side; inf if none."""
    k = torch.arange(n_out, device=device, dtype=dtype) - start
    d = torch.full((n_out,), math.inf, device=device, dtype=dtype)
    if pad_before > 0:
        d = torch.minimum(d, k)
    if pad_after > 0:
        d = torch.minimum(d, (n - 1) - k)
    return d


def _ramp(d: torch.Tensor, feathering: int, overlap: int, curve: str) -> torch.Tensor:
    """Mask value for distance ``d`` (see :func:`feather_mask`)."""
    if feathering <= 0:
        return (d < overlap).to(d.dtype)
    t = ((overlap + feathering - d) / feathering).clamp(0.0, 1.0)
    if curve == "quadratic":
        t = t * t
    elif curve == "smooth":
        t = t * t * (3.0 - 2.0 * t)
    return torch.where(d < overlap, torch.ones_like(t), t)


def feather_mask(
    height: int,
    width: int,
    box: PadBox,
    feathering: int = 40,
    overlap: int = 0,
    curve: str = "quadratic",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Canvas mask ``[H', W']``: 1 on pads, ramp into the source, 0 beyond ``overlap + feathering``.

    For a source pixel at distance ``d`` px from the nearest padded side (``d = 0`` on the edge row):
    ``1`` if ``d < overlap``; ``curve(t)`` with ``t = (overlap + feathering - d) / feathering`` if
    ``d < overlap + feathering``; else exactly ``0``. ``quadratic`` is ``t**2`` (ComfyUI core's
    ``ImagePadForOutpaint``; identical to core on left/top edges, core's right/bottom ramp starts one
    pixel later because it counts those distances from 1), ``linear`` is ``t``, ``smooth`` is the
    smoothstep ``t*t*(3-2t)``. Unlike core, feathering is never silently skipped for small images.
    """
    if curve not in FEATHER_CURVES:
        raise ValueError(f"Unknown feather curve {curve!r}; choose one of {list(FEATHER_CURVES)}.")
    if feathering < 0 or overlap < 0:
        raise ValueError(f"feathering and overlap must be >= 0 px, got feathering={feathering}, overlap={overlap}.")
    ch, cw = box.canvas_size(height, width)
    # The ramp is monotone in d, so ramp(min(dy, dx)) == max(ramp(dy), ramp(dx)): compute two 1-D ramps
    # (float64 reproduces core's Python-float values bit-exactly after the cast; MPS has no float64)
    # and combine them with one broadcast maximum.
    work = torch.float32 if torch.device(device).type == "mps" else torch.float64
    ry = _ramp(_axis_distance(ch, box.top, height, box.top, box.bottom, device, work), feathering, overlap, curve)
    rx = _ramp(_axis_distance(cw, box.left, width, box.left, box.right, device, work), feathering, overlap, curve)
    m = torch.maximum(ry.to(dtype)[:, None], rx.to(dtype)[None, :])
    # Pads are exactly 1 (their distance is negative, so the ramp is already 1; explicit for clarity).
    m[: box.top] = 1.0
    m[box.top + height :] = 1.0
    m[:, : box.left] = 1.0
    m[:, box.left + width :] = 1.0
    return m


# ------------------------------------------------------------------------------------------------ entry


def outpaint_pad(
    image: torch.Tensor,
    box: PadBox,
    mask: torch.Tensor | None = None,
    fill: str = "edge",
    color: str | Sequence[float] = "#808080",
    seed: int = 0,
    feathering: int = 40,
    feather_curve: str = "quadratic",
    overlap: int = 0,
    mask_mode: str = "soft",
    blur_radius: int | None = None,
) -> OutpaintResult:
    """Pad ``image`` by ``box``, fill the new area and return ``(image, mask [B,H',W'], box)``.

    The incoming ``mask`` (1 = regenerate, over the source; one may serve the batch) is padded with
    1s and merged with the feather mask by maximum, so feathering and overlap still apply with it.
    ``mask_mode="hard"`` binarises the merged mask to 1 wherever it is non-zero (pads + overlap +
    feather band + incoming mask), as ``VAEEncodeForInpaint`` expects; ``soft`` keeps the ramp for
    ``InpaintModelConditioning`` / differential diffusion. All-zero pads return ``image`` itself.
    Inputs are never modified; outputs live on the image's device with its dtype.

    Raises:
        ValueError: for any invalid input, before any work (message names the offending shapes).
    """
    validate_image(image)
    m_in = prepare_mask(mask, image)
    if fill not in FILL_MODES:
        raise ValueError(f"Unknown fill {fill!r}; choose one of {list(FILL_MODES)}.")
    if feather_curve not in FEATHER_CURVES:
        raise ValueError(f"Unknown feather_curve {feather_curve!r}; choose one of {list(FEATHER_CURVES)}.")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"Unknown mask_mode {mask_mode!r}; choose one of {list(MASK_MODES)}.")
    if feathering < 0 or overlap < 0:
        raise ValueError(f"feathering and overlap must be >= 0 px, got feathering={feathering}, overlap={overlap}.")
    if min(box.as_tuple()) < 0:
        raise ValueError(f"Pads must be non-negative, got {box}.")
    if fill == "color":
        parse_color(color)  # fail early on a bad colour string
    b, h, w, _ = image.shape

    if box.is_zero:
        out_image = image
    else:
        out_image = fill_canvas(image, box, fill, color, seed, blur_radius)
    ch, cw = box.canvas_size(h, w)
    m = feather_mask(h, w, box, feathering, overlap, feather_curve, image.device, image.dtype)
    m = m.unsqueeze(0)  # [1, H', W']
    if m_in is not None:
        padded = torch.ones((m_in.shape[0], ch, cw), device=image.device, dtype=image.dtype)
        padded[:, box.top : box.top + h, box.left : box.left + w] = m_in.clamp(0.0, 1.0)
        m = torch.maximum(m, padded)
    if mask_mode == "hard":
        m = (m > 0).to(image.dtype)
    out_mask = m.expand(b, ch, cw).contiguous() if m.shape[0] != b else m.contiguous()
    return OutpaintResult(out_image, out_mask, box)
