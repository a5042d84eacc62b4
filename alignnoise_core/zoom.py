"""Infinite zoom: zoom schedules, frame synthesis between keyframes, keyframe shrink/paste geometry.

Host-free (torch only). The math behind the ``ZoomInterpolate`` and ``ZoomOutpaintKeyframes`` nodes.

Keyframes ``K_0 .. K_{n-1}`` all have the same size ``H x W`` and ``K_{i+1}`` is ``K_i`` zoomed out by
a fixed ``zoom`` factor: ``K_i`` fills the centred ``W/zoom x H/zoom`` rectangle of ``K_{i+1}``
(A1111 infinite zoom: ``shrink_and_paste_on_blank`` with ``mask_width = W/4`` is ``zoom = 2``).

A frame at fraction ``t`` in ``[0, 1)`` between ``K_i`` and ``K_{i+1}`` shows the outer keyframe
``K_{i+1}`` at display scale ``s(t)`` (``s(0) = zoom``, ``s(1) = 1``), i.e. its centred crop of size
``W/s x H/s`` resampled to ``W x H``, and re-pastes the sharper inner keyframe ``K_i`` (which holds
``zoom``x more detail there) into the centred rectangle of size ``W*s/zoom x H*s/zoom`` with a
feathered edge (v8hid/A1111's "re-paste the previous, higher-resolution frame"). Schedules:

* ``geometric`` (default): ``s(t) = zoom**(1-t)``, constant zoom per frame in log space (A1111);
* ``linear``: ``s(t) = zoom - (zoom-1)*t``, linear in the displayed size (the blog's ``interp``;
  its per-frame log-zoom varies by 1.46x within a segment at ``zoom = 1.5``, 16 frames: it "pulses").

Resampling is an exact separable float resampler (any fractional rectangle, antialiased Keys
bicubic or triangle filter with weights normalised per output pixel, so flat colours are preserved
exactly), done as block-banded matrix products (a row pass and a column pass per layer). Frames are
rendered by a small thread pool straight into the preallocated output, so extra memory is O(1)
frames per worker; any frame range can be rendered on its own and equals the corresponding slice of
a full render (each frame depends only on its position).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from .resample import Rect, pixel_bbox, centered_rect, rect_alpha, render_crop, render_scaled

SCHEDULES = ("geometric", "linear")
DIRECTIONS = ("out", "in")
LOOPS = ("none", "ping-pong")
FILTERS = ("bicubic", "bilinear")


# --------------------------------------------------------------------------------------------------
# Schedules and geometry
# --------------------------------------------------------------------------------------------------


def zoom_from_pad(width: int, pad: float) -> float:
    """Zoom factor of a keyframe made by padding ``pad`` px on each side and resizing back.

    The blog method pads a ``W``-wide image by ``pad`` on every side and resizes the result to ``W``,
    so one step zooms out by ``(W + 2 pad) / W`` (1.5 for ``W = 512``, ``pad = 128``). For non-square
    images the factor is taken from the width (the vertical pad is then ``pad * H / W``).
    """
    if width <= 0 or pad <= 0:
        raise ValueError(f"zoom_from_pad needs a positive width and pad, got width={width}, pad={pad}.")
    return (width + 2.0 * pad) / width


def outer_scale(t, zoom: float, schedule: str = "geometric"):
    """Display scale ``s(t)`` of the outer keyframe at fraction ``t`` of a segment (float or tensor).

    ``s(0) = zoom`` (the view is the inner keyframe's area), ``s(1) = 1`` (the whole outer keyframe).
    """
    if schedule == "geometric":
        return zoom ** (1.0 - t)
    if schedule == "linear":
        return zoom - (zoom - 1.0) * t
    raise ValueError(f"Unknown zoom schedule '{schedule}'; use one of {SCHEDULES}.")


# --------------------------------------------------------------------------------------------------
# Frame plan: which (keyframe, fraction) every output frame shows
# --------------------------------------------------------------------------------------------------


def frame_plan(
    num_keyframes: int,
    frames_per_keyframe: int,
    direction: str = "out",
    start_hold: int = 0,
    end_hold: int = 0,
    loop: str = "none",
) -> torch.Tensor:
    """The position of every output frame as an int64 tensor ``[F, 2]`` of ``(i, j)``.

    A row ``(i, j)`` is the frame ``t = j / frames_per_keyframe`` between inner keyframe ``K_i`` and
    outer keyframe ``K_{i+1}``; ``j = 0`` is ``K_i`` itself (so ``(n-1, 0)`` is the last keyframe).
    Zoom out plays ``K_0 -> K_{n-1}`` (``(n-1) N + 1`` frames), zoom in plays it backwards. Holds
    repeat the first/last frame (A1111's start/last frame dupe); ``ping-pong`` appends the sequence
    backwards without repeating its ends, so the video loops seamlessly.
    """
    validate_plan_args(num_keyframes, frames_per_keyframe, direction, start_hold, end_hold, loop)
    n, fpk = num_keyframes, frames_per_keyframe
    k = torch.arange((n - 1) * fpk + 1, dtype=torch.int64)
    plan = torch.stack([k // fpk, k % fpk], dim=1)
    if direction == "in":
        plan = plan.flip(0)
    plan = torch.cat([plan[:1].expand(start_hold, 2), plan, plan[-1:].expand(end_hold, 2)], dim=0)
    if loop == "ping-pong" and plan.shape[0] > 2:
        plan = torch.cat([plan, plan.flip(0)[1:-1]], dim=0)
    return plan.contiguous()


def frame_count(num_keyframes: int, frames_per_keyframe: int, start_hold: int = 0, end_hold: int = 0,
                loop: str = "none") -> int:
    """Number of frames :func:`render_frames` produces for the whole video (see :func:`frame_plan`)."""
    validate_plan_args(num_keyframes, frames_per_keyframe, "out", start_hold, end_hold, loop)
    f = (num_keyframes - 1) * frames_per_keyframe + 1 + start_hold + end_hold
    if loop == "ping-pong" and f > 2:
        f = 2 * f - 2
    return f


def validate_plan_args(num_keyframes, frames_per_keyframe, direction, start_hold, end_hold, loop) -> None:
    if num_keyframes < 1:
        raise ValueError("ZoomInterpolate needs at least one keyframe (got an empty IMAGE batch).")
    if frames_per_keyframe < 1:
        raise ValueError(f"frames_per_keyframe must be >= 1, got {frames_per_keyframe}.")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'.")
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got '{loop}'.")
    if start_hold < 0 or end_hold < 0:
        raise ValueError(f"start_hold and end_hold must be >= 0, got {start_hold} and {end_hold}.")


# --------------------------------------------------------------------------------------------------
# Separable resampling
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Frame synthesis
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZoomSettings:
    """Settings of :func:`render_frames` (see the module docstring).

    Args:
        zoom: zoom factor between consecutive keyframes (> 1; 2 = A1111's default step).
        frames_per_keyframe: frames per keyframe segment (A1111: ``round(fps * zoom_speed)``).
        schedule: ``geometric`` (constant log-zoom) or ``linear`` (blog parity).
        repaste: re-paste the sharper inner keyframe into the centre (A1111); if False the frame is
            just the upscaled crop of the outer keyframe.
        feather: width in output px of the feathered edge of the re-pasted keyframe. It is limited to
            the gap between the pasted rectangle and the frame edge, so it grows from 0 at the
            keyframe itself (which is shown exactly).
        filter: ``bicubic`` (Keys, a = -0.5; clamped to 0..1) or ``bilinear`` (triangle); antialiased.
        direction, start_hold, end_hold, loop: see :func:`frame_plan`.
    """

    zoom: float = 2.0
    frames_per_keyframe: int = 30
    schedule: str = "geometric"
    repaste: bool = True
    feather: float = 8.0
    filter: str = "bicubic"
    direction: str = "out"
    start_hold: int = 0
    end_hold: int = 0
    loop: str = "none"

    def validate(self, num_keyframes: int) -> None:
        if not (self.zoom > 1.0) or not math.isfinite(self.zoom):
            raise ValueError(f"The zoom factor must be > 1 (2 = each keyframe is the previous one zoomed "
                             f"out 2x), got {self.zoom}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got '{self.schedule}'.")
        if self.filter not in FILTERS:
            raise ValueError(f"filter must be one of {FILTERS}, got '{self.filter}'.")
        if self.feather < 0:
            raise ValueError(f"feather must be >= 0 px, got {self.feather}.")
        validate_plan_args(num_keyframes, self.frames_per_keyframe, self.direction, self.start_hold,
                           self.end_hold, self.loop)

    def plan(self, num_keyframes: int) -> torch.Tensor:
        return frame_plan(num_keyframes, self.frames_per_keyframe, self.direction, self.start_hold,
                          self.end_hold, self.loop)


def synthesize_frame(inner: torch.Tensor, outer: torch.Tensor, t: float, settings: ZoomSettings,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """One frame at fraction ``t`` between ``inner`` (``K_i``) and ``outer`` (``K_{i+1}``).

    ``inner`` and ``outer`` are channels-first ``[C, H, W]``; the frame is channels-last ``[H, W, C]``
    (an IMAGE frame), written into ``out`` if given. ``t = 0`` returns ``inner`` exactly.
    """
    c, height, width = inner.shape
    if out is None:
        out = torch.empty((height, width, c), dtype=inner.dtype, device=inner.device)
    if t == 0.0:
        out.copy_(inner.permute(1, 2, 0))
        return out
    z = settings.zoom
    s = float(outer_scale(t, z, settings.schedule))
    frame = render_crop(outer, centered_rect(height, width, 1.0 / s), height, width, settings.filter)
    if settings.repaste:
        rect = centered_rect(height, width, s / z)
        feather = min(settings.feather, rect.x, rect.y)
        rows, cols = pixel_bbox(rect, height, width)
        layer = render_scaled(inner, height, width, rect, settings.filter, rows, cols)
        alpha = rect_alpha(height, width, rect, feather, rows, cols, frame.dtype, frame.device)
        block = frame[:, rows[0]:rows[1], cols[0]:cols[1]]
        block.copy_(torch.lerp(block, layer, alpha))  # lerp is exact where alpha is 0 or 1
    if settings.filter == "bicubic":
        frame.clamp_(0.0, 1.0)
    out.copy_(frame.permute(1, 2, 0))
    return out


_CHUNK = 4  # frames per task of the worker pool


@contextlib.contextmanager
def _single_threaded_ops():
    """Run torch ops single-threaded (restored afterwards).

    Per-frame ops are small; intra-op threading on them mostly adds synchronisation, and collapses
    when the CPU is shared. We parallelise over frames instead (and results do not depend on the
    number of workers).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def render_frames(
    keyframes: torch.Tensor,
    settings: ZoomSettings,
    frame_start: int = 0,
    frame_count_: int | None = None,
    on_frame: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Render the zoom video (or a frame range of it) from keyframes.

    Args:
        keyframes: IMAGE ``[n, H, W, C]`` in 0..1, ``K_{i+1}`` = ``K_i`` zoomed out by ``settings.zoom``.
        settings: :class:`ZoomSettings`.
        frame_start: first frame to render (negative counts from the end, like Python slices).
        frame_count_: number of frames to render (``None``: to the end). Rendering ``[a, a+c)`` gives
            exactly ``full[a:a+c]``: use it to render long zooms in parts.
        on_frame: called (in the calling thread, in order) after each frame with its index within the
            range; may raise to stop (progress / interrupt).
        workers: frames rendered in parallel (default: ``torch.get_num_threads()``). Each frame is
            computed single-threaded, so the result does not depend on it.

    Returns:
        IMAGE ``[F, H, W, C]`` (float32 unless the keyframes are float64), on the keyframes' device.
        Extra memory beyond it: about two converted keyframes and two frames per worker.
    """
    if keyframes.ndim != 4:
        raise ValueError(f"keyframes must be an IMAGE batch [n, H, W, C], got shape {tuple(keyframes.shape)}.")
    n = keyframes.shape[0]
    settings.validate(n)
    plan = settings.plan(n)
    total = plan.shape[0]
    start = frame_start + total if frame_start < 0 else frame_start
    if not 0 <= start < total:
        raise ValueError(f"frame_start {frame_start} is outside the video's {total} frames (0..{total - 1}).")
    stop = total if frame_count_ is None or frame_count_ <= 0 else min(total, start + frame_count_)
    plan = plan[start:stop].tolist()
    dtype = keyframes.dtype if keyframes.dtype in (torch.float32, torch.float64) else torch.float32
    out = torch.empty((len(plan),) + tuple(keyframes.shape[1:]), dtype=dtype, device=keyframes.device)
    fpk = settings.frames_per_keyframe
    local = threading.local()

    def key(i: int) -> torch.Tensor:  # per worker: at most the two keyframes of its current segment
        cache = local.__dict__.setdefault("cache", {})
        if i not in cache:
            if len(cache) >= 2:
                cache.pop(max(cache, key=lambda k: abs(k - i)))
            cache[i] = keyframes[i].to(dtype).permute(2, 0, 1).contiguous()
        return cache[i]

    # Inference and grad mode are thread-local: workers must run in the caller's (ComfyUI runs nodes
    # under inference_mode, and its tensors may only be updated in place there).
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def render(lo: int, hi: int) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            for f in range(lo, hi):
                i, j = plan[f]
                if j == 0:
                    out[f].copy_(keyframes[i])
                else:
                    synthesize_frame(key(i), key(i + 1), j / fpk, settings, out=out[f])

    chunks = [(lo, min(lo + _CHUNK, len(plan))) for lo in range(0, len(plan), _CHUNK)]
    workers = max(1, min(int(workers or torch.get_num_threads()), len(chunks)))
    with _single_threaded_ops():
        if workers == 1:
            for lo, hi in chunks:
                render(lo, hi)
                for f in range(lo, hi):
                    if on_frame is not None:
                        on_frame(f)
            return out
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="zoom") as pool:
            futures = [pool.submit(render, lo, hi) for lo, hi in chunks]
            try:
                for (lo, hi), fut in zip(chunks, futures):
                    fut.result()
                    for f in range(lo, hi):
                        if on_frame is not None:
                            on_frame(f)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    return out


# --------------------------------------------------------------------------------------------------
# Keyframe loop geometry (shrink the previous keyframe into the centre, outpaint, paste back)
# --------------------------------------------------------------------------------------------------


def shrink_to_center(image: torch.Tensor, zoom: float, fill: str = "reflect",
                     kind: str = "bicubic") -> tuple[torch.Tensor, Rect]:
    """Canvas ``[H, W, C]`` with ``image`` shrunk by ``zoom`` into the centre and the border filled.

    The centre is rendered with the same resampler :func:`synthesize_frame` uses, onto the exact
    (fractional) rectangle ``W/zoom x H/zoom``, so keyframes made with it line up with the
    interpolation to the sub-pixel. ``fill``: ``reflect`` (mirror the shrunk image; replicate where
    the border is wider than the image) or ``grey`` (0.5, as ComfyUI's outpaint padding).

    Returns:
        ``(canvas, rect)``.
    """
    height, width = image.shape[0], image.shape[1]
    rect = centered_rect(height, width, 1.0 / zoom)
    layer = render_scaled(image.permute(2, 0, 1).contiguous(), height, width, rect, kind).permute(1, 2, 0)
    if kind == "bicubic":
        layer = layer.clamp(0.0, 1.0)
    alpha = rect_alpha(height, width, rect, 0.0, dtype=layer.dtype, device=layer.device)[..., None]
    if fill == "grey":
        base = torch.full_like(layer, 0.5)
    elif fill == "reflect":
        base = _reflect_fill(layer, rect)
    else:
        raise ValueError(f"fill must be 'reflect' or 'grey', got '{fill}'.")
    return torch.lerp(base, layer, alpha), rect


def _reflect_fill(layer: torch.Tensor, rect: Rect) -> torch.Tensor:
    height, width = layer.shape[0], layer.shape[1]
    y0, y1 = int(math.ceil(rect.y)), int(math.floor(rect.y + rect.h))
    x0, x1 = int(math.ceil(rect.x)), int(math.floor(rect.x + rect.w))
    core = layer[y0:y1, x0:x1].permute(2, 0, 1)[None]
    pads = (x0, width - x1, y0, height - y1)
    if max(pads[0], pads[1]) < core.shape[-1] and max(pads[2], pads[3]) < core.shape[-2]:
        filled = torch.nn.functional.pad(core, pads, mode="reflect")
    else:
        filled = torch.nn.functional.pad(core, pads, mode="replicate")
    return filled[0].permute(1, 2, 0)


def outpaint_mask(height: int, width: int, zoom: float, overlap: float = 8.0, blur: float = 0.0,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """Mask ``[H, W]`` (1 = generate) of one keyframe step: the border plus ``overlap`` px of the centre.

    ``blur`` px soften the inner edge of the mask (a smooth ramp of that width centred on the edge
    of the overlap band), never reaching outside the shrunk image's rectangle.
    """
    rect = centered_rect(height, width, 1.0 / zoom)
    keep = Rect(rect.x + overlap, rect.y + overlap, rect.w - 2 * overlap, rect.h - 2 * overlap)
    if keep.w <= 0 or keep.h <= 0:
        raise ValueError(f"overlap {overlap} px is larger than half the shrunk image "
                         f"({rect.w:.0f}x{rect.h:.0f} px): lower it.")
    blur = min(blur, overlap * 2.0)
    inner = Rect(keep.x - blur / 2, keep.y - blur / 2, keep.w + blur, keep.h + blur)
    return 1.0 - rect_alpha(height, width, inner, blur, dtype=dtype, device=device)


def paste_back_alpha(height: int, width: int, zoom: float, overlap: float = 8.0,
                     dtype=torch.float32, device=None) -> torch.Tensor:
    """Opacity ``[H, W]`` of the known centre pasted back over a generated keyframe.

    1 on the shrunk image's rectangle minus ``overlap`` px, ramping to 0 at the rectangle's edge, so
    the generated overlap band blends into the known pixels, and the centre is kept exactly.
    """
    rect = centered_rect(height, width, 1.0 / zoom)
    return rect_alpha(height, width, rect, overlap, dtype=dtype, device=device)


def paste_back(generated: torch.Tensor, canvas: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``generated`` with the known centre of ``canvas`` pasted over it (``[H, W, C]``, alpha ``[H, W]``)."""
    a = alpha.to(generated.dtype)[..., None]
    return torch.lerp(generated, canvas.to(generated.dtype), a)  # exactly ``canvas`` where alpha == 1


def check_keyframe_args(height: int, width: int, zoom: float, steps: int, multiple: int = 8) -> None:
    """Errors of the keyframe loop, raised before any model work."""
    if height % multiple or width % multiple:
        raise ValueError(f"The start image is {width}x{height}; width and height must be multiples of "
                         f"{multiple} for the VAE. Resize or crop it first (e.g. ImageScale / ImageCrop).")
    if not (zoom > 1.0) or not math.isfinite(zoom):
        raise ValueError(f"The zoom factor must be > 1 (2 = shrink the previous keyframe to half and "
                         f"outpaint the border), got {zoom}.")
    if steps < 1:
        raise ValueError(f"The number of zoom steps K must be >= 1 (K = {steps} produces nothing to zoom).")
    if width / zoom < 8 or height / zoom < 8:
        raise ValueError(f"zoom {zoom} shrinks the {width}x{height} image below 8 px: use a smaller zoom.")
