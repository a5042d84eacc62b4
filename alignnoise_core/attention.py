"""Explicit self-attention probabilities and a recorder for the AlignNoise target level.

Host-free. Both hosts (diffusers, ComfyUI) compute attention explicitly only on the blocks of the
target level (the 1/32-pixel level: 16x16 tokens at 512x512) and hand the probabilities to an
:class:`AttentionRecorder`, which averages them over layers, heads and CFG chunks exactly like the
reference ``aggregate_attention`` (mean over all stored maps).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.utils.checkpoint

from .autograd_safety import frozen_constants_call

from .balance import AttentionCapture


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def target_grid(latent_hw, downsamples: int = 2) -> tuple[int, int]:
    """Token grid of the target attention level for a latent of size ``latent_hw``.

    SD UNets downsample with stride-2 convs (padding 1), so odd sizes round up at every level.
    The target is the 1/32-pixel level = two downsamples below the 1/8 latent.

    Args:
        latent_hw: latent (h, w).
        downsamples: number of stride-2 downsamples from the latent to the target level.

    Returns:
        (h, w) of the token grid, e.g. (16, 16) for a 64x64 latent, (12, 20) for 48x80.
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    for _ in range(downsamples):
        h, w = _cdiv(h, 2), _cdiv(w, 2)
    return h, w


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: Optional[float] = None):
    """Attention with explicit float32 probabilities (``softmax(q k^T * scale)``), like the
    reference ``AttendExciteAttnProcessor``.

    Args:
        q, k, v: (B, N, heads*dim) projected queries/keys/values (any dtype).
        heads: number of heads.
        scale: softmax scale, default ``dim ** -0.5``.

    Returns:
        ``(out, probs)``: out (B, N, heads*dim) in the input dtype, probs (B, heads, N, M) float32.
    """
    b, n, inner = q.shape
    d = inner // heads
    scale = d ** -0.5 if scale is None else scale
    qh, kh, vh = (t.float().reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    probs = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)
    out = (probs @ vh).transpose(1, 2).reshape(b, n, inner).to(q.dtype)
    return out, probs


class EarlyStop(Exception):
    """Raised by a bridge after the last target-level block has been recorded (private)."""


def checkpointed_call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under non-reentrant activation checkpointing while autograd records.

    Gradient checkpointing for stage 1: the layer keeps only its inputs during the forward and is
    recomputed in the backward pass. ``dict`` arguments (ComfyUI's ``transformer_options``, which
    the UNet mutates block by block) are snapshot, so the recomputation sees what the forward saw.
    Never used on the target-level attention layers: they record probabilities as a side effect.
    """
    if not torch.is_grad_enabled():
        return fn(*args, **kwargs)
    args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
    kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
    return torch.utils.checkpoint.checkpoint(frozen_constants_call, fn, *args, use_reentrant=False, **kwargs)


class AttentionRecorder:
    """Accumulates target-level self-attention probabilities of one UNet evaluation.

    Keyed by token grid: only calls whose grid equals ``grid`` are recorded; the set and order of
    block keys that hit the target grid is learnt during the first evaluation (``target_keys``),
    so the hosts can restrict explicit attention to them and stop the forward after the last.

    Args:
        grid: (h, w) target token grid.
        batch: number of latent items B (rows of the UNet batch are ``chunks * B``).
    """

    def __init__(self, grid: tuple[int, int], batch: int):
        self.grid = tuple(int(x) for x in grid)
        self.batch = int(batch)
        self.target_keys: list = []  # execution order, learnt in the first evaluation
        self.discovered = False
        self.expected_rows: Optional[int] = None  # rows (chunks*B) per key in one evaluation
        self.reset()

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def reset(self):
        """Start a new evaluation."""
        self._sum = None
        self._count = 0
        self._rows_at_last = 0
        self._seen: list = []

    def is_target(self, grid) -> bool:
        return tuple(int(x) for x in grid) == self.grid

    def record(self, key, probs: torch.Tensor) -> bool:
        """Add one block's probabilities.

        Args:
            key: hashable block id (e.g. ComfyUI ``("output", 4, 0)`` or a diffusers module name).
            probs: (chunks*B, heads, N, N) float32, rows ordered chunk-major as in ComfyUI batches.

        Returns:
            True when the evaluation is complete (the last target key recorded all expected rows),
            i.e. the bridge may stop the forward pass now.
        """
        rows, heads = probs.shape[0], probs.shape[1]
        chunks = rows // self.batch
        per_item = probs.reshape(chunks, self.batch, heads, *probs.shape[-2:]).sum(dim=(0, 2))
        self._sum = per_item if self._sum is None else self._sum + per_item
        self._count += chunks * heads
        if not self.discovered:
            if key not in self.target_keys:
                self.target_keys.append(key)
            return False
        if key == self.target_keys[-1]:
            self._rows_at_last += rows
            return self.expected_rows is not None and self._rows_at_last >= self.expected_rows
        return False

    def finish_discovery(self):
        """Freeze the target keys after the first evaluation."""
        if not self.target_keys:
            raise RuntimeError(
                f"no self-attention layer runs at the {self.grid[0]}x{self.grid[1]} token grid "
                "(the 1/32-pixel level); this model architecture is not supported"
            )
        self.discovered = True

    def capture(self) -> AttentionCapture:
        """Mean over all recorded maps (layers x heads x CFG chunks), per batch item."""
        if self._sum is None:
            raise RuntimeError(
                f"no self-attention was recorded at the {self.grid[0]}x{self.grid[1]} token grid"
            )
        return AttentionCapture(self._sum / self._count, self.grid)


_HEAT_STOPS = torch.tensor(  # black -> purple -> red -> orange -> pale yellow (inferno-like)
    [[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04], [0.99, 1.0, 0.64]]
)


def heat_colors(x: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1] to RGB (..., 3) with a fixed inferno-like ramp."""
    x = x.float().clamp(0, 1) * (len(_HEAT_STOPS) - 1)
    lo = x.floor().long().clamp(max=len(_HEAT_STOPS) - 2)
    t = (x - lo.float())[..., None]
    stops = _HEAT_STOPS.to(x.device)
    return stops[lo] * (1 - t) + stops[lo + 1] * t


def attention_preview(maps_before: Optional[torch.Tensor], maps_after: Optional[torch.Tensor],
                      token_mask: Optional[torch.Tensor], size: tuple[int, int], gap: int = 4) -> torch.Tensor:
    """ComfyUI IMAGE showing where outpainted queries attend, before | after optimisation.

    Args:
        maps_before, maps_after: (B, h, w) combined maps ``C_hat`` in [0, 1] (None: black panels).
        token_mask: (B, h*w) bool, 1 = outpaint; its border is drawn in white.
        size: (H, W) of each panel in pixels (the image size).
        gap: pixels between the panels.

    Returns:
        (B, H, 2*W + gap, 3) float32 in [0, 1].
    """
    H, W = size
    ref = maps_before if maps_before is not None else maps_after
    b = 1 if ref is None else ref.shape[0]
    panels = []
    for maps in (maps_before, maps_after):
        if maps is None:
            panels.append(torch.zeros(b, H, W, 3))
            continue
        up = torch.nn.functional.interpolate(maps.float()[:, None].cpu(), size=(H, W), mode="nearest")[:, 0]
        img = heat_colors(up)
        if token_mask is not None:
            tm = token_mask.reshape(b, 1, *maps.shape[-2:]).float().cpu()
            tm = torch.nn.functional.interpolate(tm, size=(H, W), mode="nearest")[:, 0]
            edge = torch.zeros_like(tm, dtype=torch.bool)
            edge[:, 1:, :] |= tm[:, 1:, :] != tm[:, :-1, :]
            edge[:, :, 1:] |= tm[:, :, 1:] != tm[:, :, :-1]
            img[edge] = 1.0
        panels.append(img)
    sep = torch.full((b, H, gap, 3), 0.5)
    return torch.cat([panels[0], sep, panels[1]], dim=2).clamp(0, 1)
