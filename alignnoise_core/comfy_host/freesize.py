"""ComfyUI glue of FreeSizeOutpaint (issue 14): one sampling pass of the given model per window.

The layout, orders and compositing are host-free (``alignnoise_core.freesize``); this module turns a
window crop into one ``comfy.sample.sample_custom`` call (what ``SamplerCustomAdvanced`` runs):
9-channel inpainting models get ``InpaintModelConditioning``'s concat conditioning, every model the
latent ``noise_mask``, so any SAMPLER that reads the mask (the pack's inpainting samplers too) plugs in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_base
import comfy.patcher_extension
import comfy.sample
import torch
import torch.nn.functional as F

from .. import freesize as fs
from ..validation import mask_bhw, require_image
from .common import (Progress, check_interrupt, decode_pixels, intermediate_device, is_inpaint_model, outpaint_inputs,
                     random_noise)

log = logging.getLogger("alignnoise")

_NATIVE = {"SD15": 512, "SDXL": 1024, "SDXLRefiner": 1024, "SSD1B": 1024, "Segmind_Vega": 1024,
           "KOALA_700M": 1024, "KOALA_1B": 1024, "SD3": 1024, "Flux": 1024, "AuraFlow": 1024}
_COUNTER_KEY = "alignnoise_freesize_unet_calls"


def native_window(model) -> tuple[int, str]:
    """The training resolution of the model family (px) and how it was found.

    SD1.x 512; SD2 768 for v-prediction (768-v) and 512 for eps models (512-base, 512-inpainting);
    SDXL-class 1024. Unknown families (newer ComfyUI model configs) fall back to 1024.
    """
    base = model.model
    name = type(base.model_config).__name__
    if name.startswith("SD2") or name.startswith("SD21"):
        v = getattr(base, "model_type", None) in (comfy.model_base.ModelType.V_PREDICTION,
                                                   getattr(comfy.model_base.ModelType, "V_PREDICTION_CONTINUOUS", None))
        return (768, f"{name} v-prediction") if v else (512, f"{name} eps")
    if name in _NATIVE:
        return _NATIVE[name], name
    return 1024, f"{name} (unknown family: 1024 assumed; set window explicitly)"


def _check_inputs(image: torch.Tensor, mask: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Validate before any model call; returns the mask as ``[H, W]`` float."""
    require_image(image, "image")
    if image.shape[0] != 1:
        raise ValueError(f"FreeSizeOutpaint takes ONE canvas image [1,H,W,C], got a batch of {image.shape[0]}; "
                         f"pick one with ImageFromBatch.")
    _, height, width, _ = image.shape
    m = mask_bhw(mask, 1, height, width, "mask")
    if not torch.is_tensor(sigmas) or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a schedule of at least 2 values (one step), got "
                         f"{tuple(sigmas.shape) if torch.is_tensor(sigmas) else type(sigmas).__name__}.")
    return m[0].to("cpu", torch.float32).clamp(0.0, 1.0)


@dataclass
class FreeSizeResult:
    image: torch.Tensor
    mask: torch.Tensor
    preview: torch.Tensor
    plan: list
    window: int
    unet_calls: int
    steps: int
    hierarchical: bool
    report: str = ""


def _seed(noise_seed: int, k: int) -> int:
    return (int(noise_seed) + k) % 2**64


def _count_calls(counter: list):
    def wrapper(executor, *args, **kwargs):
        counter[0] += 1
        return executor(*args, **kwargs)
    return wrapper


def _latent_mask(regenerate: torch.Tensor, shape, device, dtype) -> torch.Tensor:
    m = regenerate.reshape(1, 1, *regenerate.shape[-2:]).to(device, dtype)
    return F.interpolate(m, size=shape[-2:], mode="bilinear")


def _add_lowpass_constraint(model, state: dict) -> None:
    """Post-CFG hook (on the run's clone): while ``state["guide"]`` is set, the CFG x0 prediction keeps
    the ``state["factor"]``-cell block means of that latent in the region to generate (DDNM hierarchical)."""

    def post_cfg(args):
        x0 = args["denoised"]
        if state.get("guide") is None:
            return x0
        guide = state["guide"].to(x0.device, x0.dtype)
        return fs.lowpass_constraint(x0, guide, state["factor"],
                                     _latent_mask(state["regenerate"], x0.shape, x0.device, x0.dtype))

    model.set_model_sampler_post_cfg_function(post_cfg)


def free_size_outpaint(model, positive, negative, vae, image: torch.Tensor, mask: torch.Tensor, sampler,
                       sigmas: torch.Tensor, noise_seed: int, cfg: float, window: int = 0, overlap: float = 0.5,
                       order: str = "raster", hierarchical: bool = False, blend: str = "alpha") -> FreeSizeResult:
    """Outpaint ``image`` where ``mask`` = 1 with native-size windows (see ``alignnoise_core.freesize``).

    Window k is sampled with ``noise_seed + k`` (a canvas that fits in one window is therefore exactly
    ``SamplerCustomAdvanced`` with ``RandomNoise(noise_seed)``); the hierarchical first pass uses
    ``noise_seed + number of windows``.
    """
    if blend not in fs.BLENDS:
        raise ValueError(f"blend must be one of {fs.BLENDS}, got '{blend}'.")
    mask2 = _check_inputs(image, mask, sigmas)
    _, height, width, channels = image.shape
    native, why = native_window(model)
    auto = int(window) == 0
    window = native if auto else int(window)
    plan = fs.plan_windows(mask2, window, overlap, order)  # every layout error before any model call
    use_global = bool(hierarchical) and not fs.fits_one_window(height, width, window)
    steps = int(sigmas.numel()) - 1
    passes = len(plan) + int(use_global)
    progress = Progress(passes * steps)
    counter = [0]
    work = model.clone()
    wrappers = getattr(comfy.patcher_extension, "WrappersMP", None)
    if wrappers is not None and hasattr(work, "add_wrapper_with_key"):  # feature-detect (ComfyUI >= 0.3.x)
        work.add_wrapper_with_key(wrappers.APPLY_MODEL, _COUNTER_KEY, _count_calls(counter))
    else:
        counter[0] = -1
    constraint: dict = {}
    if use_global:
        _add_lowpass_constraint(work, constraint)
    is_inpaint = is_inpaint_model(model)
    src = image[0].detach().to("cpu", torch.float32)
    stride_px = fs.stride_of(min(window, width), overlap)
    feather = max(0, min(32, (min(window, width) - stride_px) // 4))
    log.info("FreeSizeOutpaint: %dx%d canvas, window %d px (%s), %s order: %d windows x %d steps%s, %s model",
             width, height, window, ("auto: " + why) if auto else "set", order, len(plan), steps,
             " + hierarchical pass" if use_global else "", "9-channel inpaint" if is_inpaint else "4-channel")

    def on_step(step, x0, x, total):
        progress.update(1)

    def sample_crop(pixels, regenerate, seed, guide=None, factor=1):
        check_interrupt()
        pos, neg, latent = outpaint_inputs(positive, negative, vae, pixels[None], regenerate, is_inpaint)
        if guide is not None:
            constraint.update(guide=work.model.process_latent_in(vae.encode(guide[None, ..., :3])),
                              regenerate=regenerate, factor=factor)
        noise = random_noise(latent, seed)
        samples = comfy.sample.sample_custom(work, noise, cfg, sampler, sigmas, pos, neg, latent["samples"],
                                             noise_mask=latent["noise_mask"], callback=on_step, disable_pbar=True,
                                             seed=seed)
        return decode_pixels(vae, samples, pixels.shape[0], pixels.shape[1], channels, "window")

    guide = None
    factor = fs.pool_factor(height, width, window)
    if use_global:
        gh, gw = fs.global_size(height, width, window)
        small = sample_crop(fs.resize(src, gh, gw), fs.resize(mask2, gh, gw), _seed(noise_seed, len(plan)))
        m = mask2[..., None]
        guide = src * (1 - m) + fs.resize(small, height, width).clamp(0, 1) * m
        log.info("FreeSizeOutpaint: hierarchical pass at %dx%d; windows keep %dx%d-cell latent block means",
                 gw, gh, factor, factor)

    def run_window(win, pixels, regenerate, guide_crop):
        log.info("FreeSizeOutpaint: window %d/%d at (%d, %d) %dx%d, %s, %d px to generate", win.index + 1,
                 len(plan), win.left, win.top, win.width, win.height, win.stage, win.pending)
        return sample_crop(pixels, regenerate, _seed(noise_seed, win.index), guide_crop, factor)

    out = fs.outpaint_windows(src, mask2, plan, run_window, feather=feather, guide=guide, blend=blend)
    preview = fs.draw_layout(plan, mask2, src)
    result = FreeSizeResult(image=out[None].to(intermediate_device()), mask=mask2[None].to(intermediate_device()),
                            preview=preview[None].to(intermediate_device()), plan=plan, window=window,
                            unet_calls=counter[0], steps=steps, hierarchical=use_global)
    result.report = report(result, order)
    log.info("%s", result.report.splitlines()[0])
    return result


def report(r: FreeSizeResult, order: str) -> str:
    n = len(r.plan)
    head = (f"FreeSizeOutpaint: {n} window{'s' if n != 1 else ''} of <= {r.window} px ({order})"
            f"{' + 1 hierarchical pass' if r.hierarchical else ''}, {r.steps} steps each; "
            f"UNet evaluations {r.unet_calls} (passes x steps = {(len(r.plan) + int(r.hierarchical)) * r.steps})")
    rows = [f"{w.index + 1}: x={w.left} y={w.top} {w.width}x{w.height} {w.stage} ({w.pending} px)" for w in r.plan]
    return "\n".join([head, *rows])
