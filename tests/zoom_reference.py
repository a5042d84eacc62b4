"""Reference arithmetic of other zoom tools, for comparison tests only: A1111 infinite zoom's
interpolation borders (``v8hid/infinite-zoom-automatic1111-webui``) and per-frame log-zoom steps."""

from __future__ import annotations

import math

import torch

from alignnoise_core.zoom import outer_scale


def log_zoom_steps(zoom: float, frames_per_keyframe: int, schedule: str = "geometric") -> torch.Tensor:
    """Per-frame zoom in log space, ``ln s(t_j) - ln s(t_{j+1})``, over one segment (float64)."""
    t = torch.arange(frames_per_keyframe + 1, dtype=torch.float64) / frames_per_keyframe
    s = torch.as_tensor(outer_scale(t, zoom, schedule), dtype=torch.float64)
    return torch.log(s[:-1]) - torch.log(s[1:])


def a1111_interpolation_borders(width: int, mask_width: int, num_frames: int) -> list[tuple[int, int]]:
    """v8hid/A1111 integer borders ``(iw, iw2)`` of the interpolated frames j = 0..N-2.

    ``iw = ceil((1 - (1 - 2 mw/W)^(1 - (j+1)/N)) W/2)`` crops the next keyframe,
    ``iw2 = ceil((1 - (W - 2 mw)/(W - 2 iw))/2 W)`` places the re-pasted previous keyframe
    (``iz_helpers/run.py``). Kept as the reference our float geometry is tested against.
    """
    w, mw, n = width, mask_width, num_frames
    out = []
    for j in range(n - 1):
        iw = math.ceil((1 - (1 - 2 * mw / w) ** (1 - (j + 1) / n)) * w / 2)
        iw2 = math.ceil((1 - (w - 2 * mw) / (w - 2 * iw)) / 2 * w)
        out.append((iw, iw2))
    return out


def frame_borders(width: int, zoom: float, t: float, schedule: str = "geometric") -> tuple[float, float]:
    """Exact (float) per-side borders of our frame at ``t``, in the A1111 sense.

    Returns ``(crop, paste)``: ``crop`` px are cut from each side of the outer keyframe, and the inner
    keyframe is pasted ``paste`` px from each side of the output frame.
    """
    s = outer_scale(t, zoom, schedule)
    return (width - width / s) / 2.0, (width - width * s / zoom) / 2.0


def paste_border_for_crop(width: int, zoom: float, crop: float) -> float:
    """Where the inner keyframe goes (px per side) when ``crop`` px per side are cut from the outer one.

    Geometrically consistent with the crop: the inner keyframe covers the centred ``W/zoom`` of the
    outer keyframe, which the crop maps to ``W * (W/zoom) / (W - 2 crop)`` output px.
    """
    return (1.0 - (width / zoom) / (width - 2.0 * crop)) / 2.0 * width
