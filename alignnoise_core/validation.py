"""Input checks shared by every node and the command line.

Each check raises ``ValueError`` with a message that names the input, says what was wrong and how to
fix it, before any model work starts. Nodes and the CLI call these instead of writing their own.
"""

from __future__ import annotations

from typing import Optional

import torch


def require_finite(x: Optional[torch.Tensor], what: str) -> None:
    """Refuse NaN or Inf values in ``x`` (an IMAGE, LATENT samples, MASK or noise tensor).

    Args:
        x: the tensor, or None (nothing to check).
        what: how the user knows the input, e.g. ``"the 'samples' LATENT"``.
    """
    if x is None or not torch.is_tensor(x) or not x.is_floating_point() or x.device.type == "meta":
        return  # (meta tensors carry no values)
    if getattr(x, "is_nested", False):
        for part in x.unbind():
            require_finite(part, what)
        return
    # One summing pass first (NaN/Inf propagate into the sum; no bool copy of a large image); the
    # element-wise check only when the sum is not finite (a value, or an overflow of the sum itself).
    if bool(torch.isfinite(x.sum())):
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {bad} NaN or Inf value(s). An upstream node produced invalid numbers "
                         f"(e.g. a VAE or sampler overflow in float16): fix that node or re-run it in float32.")


def require_latent(latent, what: str = "the LATENT") -> torch.Tensor:
    """The ``samples`` tensor of a LATENT dict, checked for presence and finiteness (noise_mask too)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"{what} must be a LATENT (a dict with 'samples'), got {type(latent).__name__}.")
    samples = latent["samples"]
    require_finite(samples, what)
    require_finite(latent.get("noise_mask"), f"the noise_mask of {what}")
    return samples


def require_image(image: torch.Tensor, what: str = "image", min_batch: int = 1) -> torch.Tensor:
    """An IMAGE ``[B, H, W, C]`` with C in 1..4, at least ``min_batch`` items, finite values."""
    if not torch.is_tensor(image) or image.ndim != 4 or not 1 <= image.shape[-1] <= 4:
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(f"'{what}' must be an IMAGE [B,H,W,C] with 1-4 channels, got {shape}.")
    require_count(image.shape[0], min_batch, f"'{what}'", "image(s)")
    require_finite(image, f"'{what}'")
    return image


def require_count(count: int, minimum: int, what: str, unit: str) -> None:
    """Refuse fewer than ``minimum`` items (frames, keyframes, batch entries)."""
    if count < minimum:
        raise ValueError(f"{what} has {count} {unit} but at least {minimum} are needed.")


def mask_bhw(mask: torch.Tensor, batch: Optional[int] = None, height: Optional[int] = None,
             width: Optional[int] = None, what: str = "mask") -> torch.Tensor:
    """Normalise a MASK or ``noise_mask`` to float ``[B, H, W]``: the one mask normaliser of the pack.

    Accepts ``[H, W]``, ``[B, H, W]`` and ``[B, 1, H, W]``. A single mask is broadcast to ``batch``.
    ``height``/``width`` (when given) must match exactly; resizing is the caller's decision.

    Raises:
        ValueError: wrong rank or channel count, batch or size mismatch, NaN/Inf values.
    """
    if not torch.is_tensor(mask):
        raise ValueError(f"'{what}' must be a MASK tensor, got {type(mask).__name__}.")
    m = mask.detach()
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"'{what}' has shape {tuple(mask.shape)}; a 4-D mask must be [B,1,H,W].")
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"'{what}' must be a MASK [B,H,W] (or [H,W], [B,1,H,W]), got shape {tuple(mask.shape)}.")
    require_finite(m.float(), f"'{what}'")
    if batch is not None and m.shape[0] != batch:
        if m.shape[0] != 1:
            raise ValueError(f"'{what}' has batch {m.shape[0]} but the image/latent has batch {batch}; give one mask "
                             f"or one per item.")
        m = m.expand(batch, -1, -1)
    if (height is not None and m.shape[1] != height) or (width is not None and m.shape[2] != width):
        raise ValueError(f"'{what}' is {m.shape[2]}x{m.shape[1]} but the image is {width}x{height}; give a mask of "
                         f"the image's size.")
    return m.float()
