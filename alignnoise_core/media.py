"""Image and video files for the standalone CLI (Pillow; PyAV for .mp4).

Images are handled as IMAGE-style tensors ``[H, W, 3]`` (or batches ``[N, H, W, 3]``) in 0..1, the
same layout the rest of ``alignnoise_core`` uses. Video formats:

* ``.gif`` / ``.webp``: animated, written by Pillow (already a dependency of diffusers);
* ``.mp4``: H.264 (``libx264``, ``yuv420p``, CRF 18) written by PyAV (``av``), the FFmpeg binding
  ComfyUI itself requires for its video nodes; its wheels bundle FFmpeg, so no ``ffmpeg`` binary is
  needed. Install with ``pip install "alignnoise[diffusers]"`` or ``pip install av``;
* a directory (a path ending in ``/`` or without a suffix): numbered PNG frames.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webp", ".gif")


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as ``[H, W, 3]`` float32 in 0..1 (EXIF rotation applied, alpha dropped,
    palette/grey converted).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an image Pillow can read (message names the file).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Input image not found: {p}")
    if p.is_dir():
        raise ValueError(f"Input image {p} is a directory; pass an image file (PNG, JPEG, WebP ...).")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")  # camera photos: apply the EXIF rotation
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"Cannot read {p} as an image ({exc}). Pass a PNG, JPEG or WebP file.") from exc
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).float() / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[..., H, W, 3]`` 0..1 float tensor -> uint8 numpy array (rounded, clamped)."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray(to_uint8(image))


def check_image_output(path: str | os.PathLike) -> Path:
    """Validate an output image path before any heavy work (known suffix)."""
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"Output {p}: unknown image type {p.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}.")
    if p.exists() and p.is_dir():
        raise ValueError(f"Output {p} is a directory; pass a file name such as out.png.")
    return p


def save_image(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``[H, W, 3]`` to ``path`` (format from the suffix; parent directories are created)."""
    p = check_image_output(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    im = to_pil(image)
    if p.suffix.lower() in (".jpg", ".jpeg"):
        im.save(p, quality=95)
    elif p.suffix.lower() == ".webp":
        im.save(p, lossless=True)
    else:
        im.save(p)
    return p


def video_kind(path: str | os.PathLike) -> str:
    """``mp4``, ``webp``, ``gif`` or ``frames`` (a directory) for a zoom output path."""
    s = str(path)
    p = Path(s)
    if s.endswith(("/", os.sep)) or p.is_dir() or p.suffix == "":
        return "frames"
    suffix = p.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"Output {p}: unknown video type {p.suffix!r}; use .mp4, .webp, .gif, or a directory (ends with /) "
            "for PNG frames."
        )
    return suffix[1:]


def check_video_output(path: str | os.PathLike) -> str:
    """Validate a zoom output path before any heavy work; returns its :func:`video_kind`."""
    kind = video_kind(path)
    if kind == "mp4":
        try:
            import av  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                "Writing .mp4 needs PyAV: pip install av (or pip install 'alignnoise[diffusers]'); "
                "or write .webp, .gif or a frames directory instead."
            ) from exc
    return kind


def write_video(frames: torch.Tensor, path: str | os.PathLike, fps: float = 30.0) -> Path:
    """Write ``[F, H, W, 3]`` frames (0..1) as .mp4 / .webp / .gif or PNG files in a directory.

    Returns the path written (for frames: the directory, files ``frame_00000.png`` ...).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty [F, H, W, 3] batch, got {tuple(frames.shape)}.")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}.")
    kind = check_video_output(path)
    p = Path(path)
    if kind == "frames":
        p.mkdir(parents=True, exist_ok=True)
        for i in range(frames.shape[0]):
            to_pil(frames[i]).save(p / f"frame_{i:05d}.png")
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "mp4":
        _write_mp4(frames, p, fps)
        return p
    images = [to_pil(frames[i]) for i in range(frames.shape[0])]
    duration = max(1, round(1000.0 / fps))
    extra = {"lossless": False, "quality": 90} if kind == "webp" else {"disposal": 1}
    images[0].save(p, save_all=True, append_images=images[1:], duration=duration, loop=0, **extra)
    return p


def _write_mp4(frames: torch.Tensor, path: Path, fps: float) -> None:
    import fractions

    import av

    h, w = frames.shape[1], frames.shape[2]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 needs an even frame size, got {w}x{h}; use .webp/.gif or frames.")
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for i in range(frames.shape[0]):
            frame = av.VideoFrame.from_ndarray(to_uint8(frames[i]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
