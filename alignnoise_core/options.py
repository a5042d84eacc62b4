"""Every tunable default and option list of the pack, defined once.

The nodes build their widgets from these (``nodes/_widgets.py``), the command line its flags and
``AlignNoiseSettings`` its defaults and range checks, so a default or a range cannot drift between
the two hosts. Paper values: AlignNoise (``WHUIR/AlignNoise``), FreeInit (``TianxingWu/FreeInit``),
the A1111 infinite-zoom extension (``v8hid/infinite-zoom-automatic1111-webui``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from . import frequency, zoom

Num = Union[int, float]


@dataclass(frozen=True)
class Number:
    """A numeric setting: its default, its allowed range and a one-line meaning (CLI help)."""

    default: Num
    min: Num
    max: Num
    step: Num = 1
    meaning: str = ""

    def check(self, value: Num, what: str) -> Num:
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not self.min <= value <= self.max:
            raise ValueError(f"{what} must be a number in [{self.min}, {self.max}], got {value!r}.")
        if isinstance(self.default, int) and int(value) != value:
            raise ValueError(f"{what} must be a whole number, got {value!r}.")
        return value


@dataclass(frozen=True)
class Choice:
    """A setting with a fixed list of options."""

    default: str
    options: tuple
    meaning: str = ""

    def check(self, value: str, what: str) -> str:
        if value not in self.options:
            raise ValueError(f"{what} must be one of {self.options}, got {value!r}.")
        return value


# AlignNoise stage 1: attention balance (the reference's max_step, initno_lr, threshold, hinge tau).
BALANCE_ITERATIONS = Number(10, 0, 200, 1, "maximum optimiser iterations (paper 10)")
BALANCE_LR = Number(0.01, 0.0, 1.0, 0.001, "Adam learning rate (paper 0.01)")
BALANCE_THRESHOLD = Number(0.55, 0.0, 100.0, 0.01, "stop when the loss is below this (paper 0.55)")
BALANCE_TAU = Number(0.15, 0.0, 1.0, 0.01, "hinge level tau of the loss (paper 0.15)")

# AlignNoise stage 2: the low-pass filter of the masked FreeInit step.
FILTER = Choice("butterworth", frequency.FILTER_TYPES, "low-pass filter that keeps the first pass's layout")
CUTOFF = Number(0.25, 0.0, 1.5, 0.01, "spatial stop frequency d_s, a fraction of Nyquist (paper 0.25)")
FILTER_ORDER = Number(4, 1, 16, 1, "butterworth order n (paper 4)")
TEMPORAL_CUTOFF = Number(0.25, 0.0, 1.5, 0.01, "temporal stop frequency d_t for video latents (FreeInit 0.25)")
PASSES = Number(2, 1, 8, 1, "sampling passes with stage 2 (the paper's num_iters 2)")

# Infinite zoom keyframes.
ZOOM_FACTOR = Number(2.0, 1.0, 64.0, 0.01, "zoom factor per keyframe (2 = shrink to half, A1111)")
ZOOM_OVERLAP = Number(8, 0, 512, 1, "px of the shrunk keyframe's edge that are regenerated")
ZOOM_MASK_BLUR = Number(8, 0, 512, 1, "px of softening of the mask's inner edge")
ZOOM_FEATHER = Number(8.0, 0.0, 512.0, 0.5, "px of feathering of the re-pasted sharper keyframe")
ZOOM_FILL = Choice("reflect", ("reflect", "grey"), "initial content of the new border")
ZOOM_ALIGNNOISE = Choice("off", ("off", "stage 1", "stage 2", "stages 1+2"),
                         "AlignNoise stages used for every outpaint of the zoom")
ZOOM_SCHEDULE = Choice("geometric", zoom.SCHEDULES, "geometric = constant zoom speed; linear = the blog's")
ZOOM_DIRECTION = Choice("out", zoom.DIRECTIONS, "zoom out or in")
ZOOM_LOOP = Choice("none", zoom.LOOPS, "ping-pong = play forth and back")
