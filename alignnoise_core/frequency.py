"""AlignNoise stage 2: frequency refinement of a first-pass result (masked FreeInit).

The second stage of AlignNoise (``WHUIR/AlignNoise:pipeline_sd_alignnoise.py::__call__`` with
``utils/fi_utils.py``) re-noises the first-pass latent ``z0`` to the first sigma with the *initial*
noise ``ẑ`` of the first pass, keeps the low spatial frequencies of that re-noised latent, replaces
its high frequencies with fresh noise, and does so only inside the outpainted region::

    z_T   = √ᾱ_T·z0 + √(1−ᾱ_T)·ẑ                         (re-noise, "add_noise" at t = 999)
    mixed = IFFT( FFT(z_T)·LPF + FFT(r)·(1−LPF) )          (r ~ N(0, I), fresh, seeded)
    z_T'  = z_T·(1−m) + mixed·m                            (m = 1 in the outpainted region)

and samples again from ``z_T'``. FreeInit (``TianxingWu/FreeInit``) is the same without the mask and
with a 3-D (T, H, W) FFT for video latents.

Everything here is host-free torch. Sigma-parameterised helpers (:func:`renoise`,
:func:`sampler_start`, :func:`noise_for_start`) express the re-noising in the model's own
parameterisation, so ComfyUI (``comfy_bridge``) and diffusers callers share them:

* ``"eps"`` (EPS, v-prediction, EDM and x0 models; SD1.x/SD2.x/SDXL): the sampler state is
  variance-exploding, ``x = x0 + σ·ε``; its variance-preserving equivalent is ``z = x/√(1+σ²)``,
  which equals ``√ᾱ·x0 + √(1−ᾱ)·ε`` with ``ᾱ = 1/(1+σ²)``: exactly the reference's ``add_noise``.
* ``"flow"`` (rectified flow, CONST; SD3/Flux): ``x = (1−σ)·x0 + σ·ε`` is already normalised.

Fixes to the reference, all documented in ``web/docs/FrequencyNoiseRefine.md``:

* ``ideal`` uses ``d² ≤ d_s²``; the reference (and FreeInit, and diffusers' ``FreeInitMixin``) compare
  with ``d_s*2``, a typo that widens the passband from radius 0.25 to 0.707.
* The filter is built for the actual latent shape (the reference hard-codes 512² images), vectorised
  (the reference is a Python triple loop) and cached per shape, parameters and device.
* Frequency coordinates are centred on the ``fftshift`` DC bin ``n//2``. For even sizes this is the
  reference's ``2h/H − 1`` exactly (so the §2.1 anchors hold); for odd sizes (and a single video
  frame) it removes the reference's half-bin offset, which keeps the filter Hermitian-symmetric.
* ``box`` uses the W size for the W half-width (the reference uses H for both axes); for square
  latents they agree.
* The fresh noise comes from the caller's seeded generator, not the global RNG.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .validation import mask_bhw

FILTER_TYPES = ("butterworth", "gaussian", "ideal", "box")
PARAMETERIZATIONS = ("eps", "flow")


# --------------------------------------------------------------------------------------------------
# Low-pass filters
# --------------------------------------------------------------------------------------------------


def _centred_coords(n: int) -> torch.Tensor:
    """Normalised frequency coordinate per ``fftshift``-ed index: ``2·(i − n//2)/n`` (float64).

    Equal to the reference's ``2i/n − 1`` for even ``n``; 0 exactly at the DC bin for any ``n``.
    """
    return (torch.arange(n, dtype=torch.float64) - (n // 2)) * (2.0 / n)


def _squared_radius(spatial: Sequence[int], d_s: float, d_t: Optional[float]) -> torch.Tensor:
    """``d²`` over an ``fftshift``-ed (H, W) or (T, H, W) grid, float64.

    2-D: ``(2h/H−1)² + (2w/W−1)²`` (AlignNoise ``fi_utils``).
    3-D: FreeInit's ``((d_s/d_t)·(2t/T−1))² + (2h/H−1)² + (2w/W−1)²``.
    """
    coords = [_centred_coords(n) for n in spatial]
    if len(spatial) == 3:
        coords[0] = coords[0] * (d_s / d_t)
    grids = torch.meshgrid(*coords, indexing="ij")
    return sum(g * g for g in grids)


def _box_window(n: int, frac: float) -> slice:
    # Reference window [n//2 − thr, n//2 + thr) with thr = round((n//2)·frac); for tiny sizes where
    # thr rounds to 0 (the reference then keeps nothing) we keep the DC bin.
    thr = round(int(n // 2) * frac)
    return slice(n // 2 - thr, n // 2 + thr) if thr > 0 else slice(n // 2, n // 2 + 1)


def _box_filter(spatial: Sequence[int], d_s: float, d_t: Optional[float]) -> torch.Tensor:
    out = torch.zeros(tuple(spatial), dtype=torch.float64)
    slices = [_box_window(spatial[0], d_t)] if len(spatial) == 3 else []
    slices += [_box_window(n, d_s) for n in spatial[-2:]]
    out[tuple(slices)] = 1.0
    return out


@functools.lru_cache(maxsize=64)
def _cached_filter(
    filter_type: str, spatial: tuple, d_s: float, order: int, d_t: Optional[float], device: str, shifted: bool
) -> torch.Tensor:
    if d_s == 0 or (len(spatial) == 3 and d_t == 0):
        lpf = torch.zeros(spatial, dtype=torch.float64)  # reference: a zero filter = pure noise replacement
    elif filter_type == "box":
        lpf = _box_filter(spatial, d_s, d_t)
    else:
        d2 = _squared_radius(spatial, d_s, d_t)
        if filter_type == "butterworth":
            lpf = 1.0 / (1.0 + (d2 / d_s**2) ** order)
        elif filter_type == "gaussian":
            lpf = torch.exp(-d2 / (2.0 * d_s**2))
        else:  # ideal, with the documented fix d² ≤ d_s² (reference: d² ≤ d_s*2)
            lpf = (d2 <= d_s**2).to(torch.float64)
    lpf = lpf.to(torch.float32)
    if not shifted:
        # Unshifted (DC at index 0) layout: multiplying the raw FFT by this equals
        # fftshift -> multiply by the shifted filter -> ifftshift, without shifting the data.
        lpf = torch.fft.ifftshift(lpf)
    return lpf.to(device)


def low_pass_filter(
    spatial_shape: Sequence[int],
    filter_type: str = "butterworth",
    d_s: float = 0.25,
    order: int = 4,
    d_t: Optional[float] = 0.25,
    device: torch.device | str = "cpu",
    shifted: bool = True,
) -> torch.Tensor:
    """Build (or fetch from the cache) a frequency low-pass filter.

    Args:
        spatial_shape: ``(H, W)`` for image latents or ``(T, H, W)`` for video latents.
        filter_type: ``"butterworth"`` ``1/(1+(d/d_s)^(2·order))``, ``"gaussian"``
            ``exp(−d²/(2·d_s²))``, ``"ideal"`` ``d ≤ d_s``, or ``"box"`` (a centred square window of
            half-width ``round((n//2)·d_s)`` bins, as FreeInit's "approximated ideal" filter).
        d_s: normalised spatial stop frequency (0..1 of Nyquist); 0 gives an all-zero filter.
        order: Butterworth order ``n`` (ignored by the other filters).
        d_t: normalised temporal stop frequency for 3-D filters (FreeInit's ``d_t``); ignored in 2-D.
        device: where the filter lives; filters are cached per shape, parameters and device.
        shifted: True for the ``fftshift`` layout (DC in the centre, as the reference builds it);
            False for the raw FFT layout (DC at index 0), used by :func:`freq_mix`.

    Returns:
        A float32 tensor of shape ``spatial_shape``. It is shared by the cache: do not modify it.
    """
    spatial = tuple(int(s) for s in spatial_shape)
    if filter_type not in FILTER_TYPES:
        raise ValueError(f"Unknown filter '{filter_type}'. Use one of {', '.join(FILTER_TYPES)}.")
    if len(spatial) not in (2, 3) or min(spatial) < 1:
        raise ValueError(f"The filter needs a (H, W) or (T, H, W) shape of positive sizes, got {spatial}.")
    if d_s < 0:
        raise ValueError(f"d_s must be >= 0 (a fraction of the Nyquist frequency), got {d_s}.")
    if len(spatial) == 3:
        if d_t is None or d_t < 0:
            raise ValueError(f"A 3-D (video) filter needs d_t >= 0, got {d_t}.")
        d_t = float(d_t)
    else:
        d_t = None
    if filter_type == "butterworth" and int(order) < 1:
        raise ValueError(f"The Butterworth order must be >= 1, got {order}.")
    return _cached_filter(filter_type, spatial, float(d_s), int(order), d_t, str(torch.device(device)), bool(shifted))


def filter_dims(ndim: int) -> tuple:
    """FFT dims of a latent: (H, W) per channel for 4-D ``[B,C,H,W]``, (T, H, W) for 5-D ``[B,C,T,H,W]``."""
    if ndim == 4:
        return (-2, -1)
    if ndim == 5:
        return (-3, -2, -1)
    raise ValueError(f"Expected a 4-D [B,C,H,W] or 5-D [B,C,T,H,W] latent, got {ndim} dims.")


def freq_mix(x: torch.Tensor, noise: torch.Tensor, lpf: torch.Tensor, shifted: bool = True) -> torch.Tensor:
    """Low frequencies of ``x``, high frequencies of ``noise`` (``freq_mix_2D`` / FreeInit ``freq_mix_3d``).

    ``IFFT(FFT(x)·LPF + FFT(noise)·(1−LPF)).real``, the FFT over (H, W) per channel for 4-D latents
    and over (T, H, W) for 5-D. Computed in float64 (float32 on MPS, which lacks it) and returned in
    ``x``'s dtype.

    Args:
        x: the latent whose low frequencies are kept, ``[B,C,H,W]`` or ``[B,C,T,H,W]``.
        noise: the source of the high frequencies, same shape.
        lpf: the low-pass filter over the FFT dims (from :func:`low_pass_filter`).
        shifted: whether ``lpf`` is in the ``fftshift`` layout (True) or the raw FFT layout.
    """
    dims = filter_dims(x.ndim)
    if noise.shape != x.shape:
        raise ValueError(f"freq_mix: noise shape {tuple(noise.shape)} differs from the latent's {tuple(x.shape)}.")
    if tuple(lpf.shape) != tuple(x.shape[d] for d in dims):
        raise ValueError(f"freq_mix: filter shape {tuple(lpf.shape)} does not match the latent {tuple(x.shape)}.")
    # float64 FFTs: latent-sized, so cheap next to a UNet step, and LPF ≡ 1 / ≡ 0 reproduce the
    # inputs to ~1e-15 instead of float32's ~1e-6.
    work = torch.float64 if x.device.type != "mps" else torch.float32
    lpf = lpf.to(x.device, work)
    if shifted:
        lpf = torch.fft.ifftshift(lpf)
    # Unshifted form: fftshift/ifftshift of the data cancel once the filter is moved to DC-at-0.
    # x·L + n·(1−L) = n + (x − n)·L: one FFT instead of two.
    diff = torch.fft.fftn((x - noise).to(work), dim=dims)
    out = noise.to(work) + torch.fft.ifftn(diff * lpf, dim=dims).real
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


def mask_to_latent(mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """Resize a mask (1 = outpainted/regenerate) to a latent, broadcastable to it.

    Accepts ``[H,W]``, ``[B,H,W]``, ``[B,1,H,W]`` (ComfyUI MASK / ``noise_mask``) and, for 5-D
    latents, ``[B,1,T,H,W]``. Resized bilinearly like ComfyUI's ``reshape_mask`` (an exactly binary
    mask on the 8-px grid stays binary); values are clamped to [0, 1]. The batch is repeated to
    the latent's when the mask has a single item.

    Returns:
        ``[B,1,H,W]`` (4-D latents) or ``[B,1,T,H,W]`` (5-D) float tensor on the latent's device.
    """
    if mask.ndim == 5:
        if latent.ndim != 5 or mask.shape[1] != 1:
            raise ValueError(f"A 5-D mask must be [B,1,T,H,W] for a 5-D latent, got {tuple(mask.shape)}.")
        m = mask.detach().to(latent.device, torch.float32)
    else:
        m = mask_bhw(mask)[:, None].to(latent.device, torch.float32)
    target = tuple(latent.shape[2:])
    if m.ndim == 5:
        if tuple(m.shape[2:]) != target:
            m = F.interpolate(m, size=target, mode="trilinear", align_corners=False)
    else:
        if tuple(m.shape[-2:]) != target[-2:]:
            m = F.interpolate(m, size=target[-2:], mode="bilinear", align_corners=False)
        if latent.ndim == 5:
            m = m[:, :, None].expand(-1, -1, target[0], -1, -1)
    b = latent.shape[0]
    if m.shape[0] == 1 and b > 1:
        m = m.expand(b, *m.shape[1:])
    elif m.shape[0] != b:
        raise ValueError(f"The mask has {m.shape[0]} items but the latent has a batch of {b}; use 1 or {b}.")
    return m.clamp(0.0, 1.0)


def blend(z_t: torch.Tensor, mixed: torch.Tensor, mask_lat: Optional[torch.Tensor]) -> torch.Tensor:
    """``z_T·(1−m) + mixed·m`` via ``lerp``: where ``m == 0`` the result is ``z_T`` bit for bit."""
    if mask_lat is None:
        return mixed
    return torch.lerp(z_t, mixed, mask_lat.to(z_t.dtype))


# --------------------------------------------------------------------------------------------------
# Re-noising, parameterised by sigma
# --------------------------------------------------------------------------------------------------


def _check_kind(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"Unknown parameterization '{parameterization}'; use one of {PARAMETERIZATIONS}.")


def _sigma(sigma, ref: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=ref.dtype if ref.is_floating_point() else torch.float32, device=ref.device)
    if s.numel() != 1:
        raise ValueError("sigma must be a single value")
    if float(s) <= 0:
        raise ValueError(f"sigma must be > 0, got {float(s)}.")
    return s.reshape(())


def vp_scale(sigma: float, parameterization: str = "eps") -> float:
    """Factor from the sampler state ``x`` to its normalised (variance-preserving) form ``z``.

    ``"eps"``: ``1/√(1+σ²)`` (``= √ᾱ``); ``"flow"``: 1.
    """
    _check_kind(parameterization)
    return 1.0 / math.sqrt(1.0 + float(sigma) ** 2) if parameterization == "eps" else 1.0


def alpha_bar(sigma: float) -> float:
    """``ᾱ = 1/(1+σ²)`` of an eps-model sigma (ComfyUI stores sigmas, not ``alphas_cumprod``)."""
    return 1.0 / (1.0 + float(sigma) ** 2)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma, parameterization: str = "eps") -> torch.Tensor:
    """Diffuse a clean latent to ``sigma`` with the given noise, in normalised (VP) form.

    ``"eps"``: ``(x0 + σ·ε)/√(1+σ²) = √ᾱ·x0 + √(1−ᾱ)·ε`` (the reference's ``add_noise``).
    ``"flow"``: ``(1−σ)·x0 + σ·ε``.

    Args:
        x0: clean latent in model space (ComfyUI: after ``process_latent_in``).
        noise: unit Gaussian noise of the same shape (the first pass's initial noise).
        sigma: the target sigma (the model's ``sigma_max`` for AlignNoise).
    """
    _check_kind(parameterization)
    s = _sigma(sigma, x0)
    noise = noise.to(x0.device, x0.dtype)
    if parameterization == "eps":
        return (x0 + s * noise) / torch.sqrt(1.0 + s * s)
    return (1.0 - s) * x0 + s * noise


def sampler_start(z: torch.Tensor, sigma, parameterization: str = "eps") -> torch.Tensor:
    """The sampler state ``x`` whose normalised form is ``z`` (``x = z·√(1+σ²)`` for eps models)."""
    _check_kind(parameterization)
    s = _sigma(sigma, z)
    return z * torch.sqrt(1.0 + s * s) if parameterization == "eps" else z.clone()


def noise_scaling(sigma, noise: torch.Tensor, latent: torch.Tensor, parameterization: str = "eps",
                  max_denoise: bool = True) -> torch.Tensor:
    """How a sampler turns (noise, latent) into its first state; mirrors ComfyUI's ``noise_scaling``.

    ``"eps"``: ``latent + noise·√(1+σ²)`` if ``max_denoise`` (first sigma ≥ sigma_max) else
    ``latent + noise·σ``. ``"flow"``: ``σ·noise + (1−σ)·latent``.
    """
    _check_kind(parameterization)
    s = _sigma(sigma, noise)
    if parameterization == "eps":
        return latent + noise * (torch.sqrt(1.0 + s * s) if max_denoise else s)
    return s * noise + (1.0 - s) * latent


def noise_for_start(x_start: torch.Tensor, latent: torch.Tensor, sigma, parameterization: str = "eps",
                    max_denoise: bool = True) -> torch.Tensor:
    """The NOISE a sampler needs so that it starts exactly from ``x_start``: inverse of :func:`noise_scaling`.

    Args:
        x_start: the wanted first sampler state (model space).
        latent: the latent the sampler is given, in model space (``process_latent_in`` applied,
            zeros for an empty latent).
        sigma: the first sigma of the sampler's schedule.
        max_denoise: whether that sigma is the model's sigma_max (the sampler then scales the noise
            by ``√(1+σ²)`` instead of ``σ``).
    """
    _check_kind(parameterization)
    s = _sigma(sigma, x_start)
    latent = latent.to(x_start.device, x_start.dtype)
    if parameterization == "eps":
        return (x_start - latent) / (torch.sqrt(1.0 + s * s) if max_denoise else s)
    return (x_start - (1.0 - s) * latent) / s


# --------------------------------------------------------------------------------------------------
# The whole refinement
# --------------------------------------------------------------------------------------------------


def fresh_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """Seeded unit noise from a private CPU generator (float32), independent of the global RNG."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32, device="cpu")


def refine(
    x0: torch.Tensor,
    initial_noise: torch.Tensor,
    sigma,
    mask: Optional[torch.Tensor] = None,
    filter_type: str = "butterworth",
    d_s: float = 0.25,
    order: int = 4,
    d_t: Optional[float] = 0.25,
    seed: int = 0,
    fresh: Optional[torch.Tensor] = None,
    parameterization: str = "eps",
) -> torch.Tensor:
    """AlignNoise stage 2: the refined starting latent of the second pass, in normalised (VP) form.

    Steps: ``z_T = renoise(x0, ẑ, σ)``; ``mixed = freq_mix(z_T, r, LPF)``; blend so the source
    region (``mask == 0``) keeps ``z_T`` exactly and the outpainted region gets ``mixed``.
    Use :func:`sampler_start` to get the model-space state (``x = z·√(1+σ²)`` for eps models).

    Args:
        x0: the first-pass result in model space, ``[B,C,H,W]`` or ``[B,C,T,H,W]``, any channel count
            and size (odd sizes included).
        initial_noise: the first pass's initial noise ``ẑ`` (unit variance), same shape.
        sigma: the re-noising sigma, the first sigma of the second pass (the model's sigma_max).
        mask: 1 = outpainted (gets the mix), 0 = source (keeps ``z_T``); any shape accepted by
            :func:`mask_to_latent`. ``None`` refines the whole latent (plain FreeInit).
        filter_type, d_s, order, d_t: the low-pass filter (see :func:`low_pass_filter`).
        seed: seed of the fresh high-frequency noise ``r`` (private CPU generator).
        fresh: optional explicit ``r`` (overrides ``seed``), e.g. for tests.
        parameterization: ``"eps"`` or ``"flow"``.

    Returns:
        ``z_T'`` with ``x0``'s shape, float32 (float64 if ``x0`` is float64), on ``x0``'s device.
    """
    if x0.ndim not in (4, 5):
        raise ValueError(f"Expected a 4-D [B,C,H,W] or 5-D [B,C,T,H,W] latent, got shape {tuple(x0.shape)}.")
    if tuple(initial_noise.shape) != tuple(x0.shape):
        raise ValueError(
            f"The initial noise has shape {tuple(initial_noise.shape)} but the latent has {tuple(x0.shape)}: "
            "pass the NOISE (and latent size) that the first sampler used."
        )
    work = torch.float64 if x0.dtype == torch.float64 else torch.float32
    x0 = x0.to(work)
    z_t = renoise(x0, initial_noise.to(x0.device, work), sigma, parameterization)
    mask_lat = mask_to_latent(mask, x0) if mask is not None else None
    if mask_lat is not None and not bool(mask_lat.any()):
        return z_t  # nothing outpainted: the mix would be discarded anyway
    if fresh is None:
        fresh = fresh_noise(x0.shape, seed)
    elif tuple(fresh.shape) != tuple(x0.shape):
        raise ValueError(f"fresh noise shape {tuple(fresh.shape)} differs from the latent's {tuple(x0.shape)}.")
    fresh = fresh.to(x0.device, work)
    dims = filter_dims(x0.ndim)
    lpf = low_pass_filter([x0.shape[d] for d in dims], filter_type, d_s, order, d_t, x0.device, shifted=False)
    mixed = freq_mix(z_t, fresh, lpf, shifted=False)
    return blend(z_t, mixed, mask_lat)


def fast_sampling_steps(total_steps: int, num_iters: int = 2) -> list[int]:
    """Coarse-to-fine step counts of the reference's ``use_fast_sampling``: ``int(N/iters·(it+1))``.

    For 50 steps and 2 passes: ``[25, 50]``.
    """
    return [int(total_steps / num_iters * (it + 1)) for it in range(num_iters)]
