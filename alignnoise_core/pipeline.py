"""AlignNoise outpainting and infinite zoom on a diffusers ``StableDiffusionInpaintPipeline``.

This is the standalone (no ComfyUI) path behind ``python -m alignnoise_core``. It reuses the
host-free core: :mod:`.padding` (canvas and mask), :mod:`.diffusers_bridge` (stage 1, attention
balance), :mod:`.frequency` (stage 2, masked frequency refinement) and :mod:`.zoom` (keyframe
geometry and frame interpolation). Control flow (``WHUIR/AlignNoise`` ``pipeline_sd_alignnoise.py``)::

    z ~ N(0, I)                                   (seeded CPU generator: same picture on any device)
    ẑ = attention_balance(z)                      (stage 1; skipped with attention_balance=False)
    pass 0: sample from ẑ                         (the model's scheduler, fresh state)
    pass k>0: z_T' = refine(z0_prev, ẑ, σ_999)   (stage 2; only with frequency_refine=True)
              sample from z_T'                    (a fresh scheduler instance for every pass)
    decode, paste the source pixels back          (paste_back=True; off in the reference)

Differences from the reference pipeline, on purpose: every pass gets a fresh scheduler (the
reference keeps stale PNDM state into pass 2), the fresh noise of stage 2
comes from a seeded generator instead of the global RNG, and the source pixels are pasted back.
With both stages off, :func:`inpaint` equals ``pipe(...)`` with the same noise (tested).

Python API::

    from alignnoise_core.pipeline import AlignNoiseSettings, load_inpaint_pipeline, outpaint
    from alignnoise_core.media import load_image, save_image

    pipe = load_inpaint_pipeline("stabilityai/stable-diffusion-2-inpainting")  # or a local directory
    result = outpaint(pipe, load_image("photo.png"), left=128, right=128,
                      settings=AlignNoiseSettings(steps=50, seed=2226))
    save_image(result.image, "wide.png")
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
import torch.nn.functional as F

from . import frequency, options, padding, zoom
from .diffusers_models import DEFAULT_MODEL, load_inpaint_pipeline  # noqa: F401  (public API)
from .recipes import alignnoise_passes, zoom_keyframe_loop

logger = logging.getLogger("alignnoise")

MAX_CANVAS = 8192  # px per side; beyond this no SD UNet/VAE fits in memory anyway
MIN_CANVAS = 64  # px per side: 8 latent pixels, the smallest grid the UNet's 3 downsamples keep


# --------------------------------------------------------------------------------------------------
# Settings and results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignNoiseSettings:
    """Everything that shapes one AlignNoise inpainting run. Defaults are the reference's.

    Args:
        steps: denoising steps per pass (reference 50; PNDM then runs 51 timesteps).
        seed: seeds the initial noise ``z``, the VAE sample of the masked image and stage 2's fresh
            noise (reference 2226).
        prompt, negative_prompt: text; the paper uses ``" "`` and no negative prompt.
        guidance: classifier-free guidance scale; <= 1 means off (paper: 0, one UNet call per step).
        attention_balance: stage 1, optimise ``z`` so outpaint tokens attend to the source ("AAM").
        balance_iterations, balance_lr, balance_threshold, balance_tau: stage 1 constants (reference
            ``max_step`` 10, ``initno_lr`` 1e-2, stop when loss < 0.55, hinge tau 0.15).
        gradient_checkpointing: stage 1 recomputes UNet layers in the backward pass instead of
            storing their activations (less memory, slower, same result).
        frequency_refine: stage 2, re-noise the first pass and keep its low frequencies in the
            outpainted region (masked FreeInit), then sample again.
        passes: number of sampling passes when ``frequency_refine`` is on (reference ``num_iters`` 2).
        filter_type, cutoff, order: stage 2 low-pass filter (reference butterworth, d_s 0.25, n 4).
        fast_sampling: coarse-to-fine steps per pass, ``int(steps/passes*(k+1))`` (reference option,
            off by default).
        paste_back: paste the source pixels over the decoded result (feathered by the mask).
    """

    steps: int = 50
    seed: int = 2226
    prompt: str = " "
    negative_prompt: str = ""
    guidance: float = 0.0
    attention_balance: bool = True
    balance_iterations: int = options.BALANCE_ITERATIONS.default
    balance_lr: float = options.BALANCE_LR.default
    balance_threshold: float = options.BALANCE_THRESHOLD.default
    balance_tau: float = options.BALANCE_TAU.default
    gradient_checkpointing: bool = False
    frequency_refine: bool = True
    passes: int = options.PASSES.default
    filter_type: str = options.FILTER.default
    cutoff: float = options.CUTOFF.default
    order: int = options.FILTER_ORDER.default
    fast_sampling: bool = False
    paste_back: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the bad setting (called before any model work)."""
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}.")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ValueError(f"guidance must be >= 0 (0 or 1 = off), got {self.guidance}.")
        options.BALANCE_ITERATIONS.check(self.balance_iterations, "balance iterations")
        options.BALANCE_LR.check(self.balance_lr, "balance learning rate")
        options.BALANCE_THRESHOLD.check(self.balance_threshold, "balance threshold")
        options.BALANCE_TAU.check(self.balance_tau, "balance tau")
        options.PASSES.check(self.passes, "passes")
        options.FILTER.check(self.filter_type, "filter")
        options.CUTOFF.check(self.cutoff, "cutoff (d_s)")
        options.FILTER_ORDER.check(self.order, "filter order")
        if self.fast_sampling and min(self.pass_steps()) < 1:
            raise ValueError(f"fast sampling with {self.steps} steps over {self.n_passes} passes leaves a pass "
                             "with no step; use more steps or fewer passes.")

    @property
    def n_passes(self) -> int:
        return self.passes if self.frequency_refine else 1

    def pass_steps(self) -> list[int]:
        if self.fast_sampling and self.n_passes > 1:
            return frequency.fast_sampling_steps(self.steps, self.n_passes)
        return [self.steps] * self.n_passes


@dataclass
class InpaintResult:
    """Output of :func:`inpaint`.

    Attributes:
        image: ``[H, W, 3]`` float32 in 0..1 on the CPU, after paste-back (if enabled).
        generated: ``[H, W, 3]`` the decoded model output before paste-back.
        balance: stage 1 :class:`~alignnoise_core.balance.BalanceResult` (None if stage 1 was off).
        unet_calls: UNet forward calls (stage 1 forwards + sampling steps of all passes).
        backward_calls: stage 1 backward passes.
        seconds: wall time per phase (``encode``, ``balance``, ``pass0``, ``pass1``, ..., ``decode``).
        nsfw: the model's safety checker flagged the image (it is then black), None without one.
    """

    image: torch.Tensor
    generated: torch.Tensor
    balance: object = None
    unet_calls: int = 0
    backward_calls: int = 0
    seconds: dict = field(default_factory=dict)
    nsfw: Optional[bool] = None


# --------------------------------------------------------------------------------------------------
# Model loading
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Two-pass AlignNoise inpainting
# --------------------------------------------------------------------------------------------------


def derive_seed(seed: int, tag: str, index: int = 0) -> int:
    """A stable 63-bit seed for a sub-stream (e.g. stage 2's fresh noise of pass ``index``)."""
    h = hashlib.sha256(f"{int(seed)}:{tag}:{int(index)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def initial_noise(shape, seed: int) -> torch.Tensor:
    """``z ~ N(0, I)`` from a CPU generator seeded with ``seed`` (identical on every device)."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _check_canvas(height: int, width: int) -> None:
    if height < MIN_CANVAS or width < MIN_CANVAS:
        raise ValueError(f"The canvas is {width}x{height} px; it must be at least {MIN_CANVAS}x{MIN_CANVAS} "
                         "(8 latent pixels per side). Use a larger image or larger pads.")
    if height > MAX_CANVAS or width > MAX_CANVAS:
        raise ValueError(f"The canvas is {width}x{height} px; more than {MAX_CANVAS} px per side cannot fit in "
                         "memory. Use smaller pads or downscale the image first.")
    if height % 8 or width % 8:
        raise ValueError(f"The canvas is {width}x{height} px; width and height must be multiples of 8 for the VAE.")


@torch.no_grad()
def _sample(pipe, start, mask_lat, masked_lat, embeds, cfg_scale, steps, seed, desc, progress):
    """One standard 9-channel SD-inpaint sampling pass on a fresh scheduler instance.

    ``start`` is the unit-variance (VP) starting noise; it is scaled by the scheduler's
    ``init_noise_sigma`` (1 for PNDM/DDIM, ``sqrt(sigma_max^2+1)`` for Euler-type schedulers).
    """
    import inspect

    device, dtype = pipe.unet.device, pipe.unet.dtype
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=device)
    latents = (start.float() * float(sched.init_noise_sigma)).to(device=device, dtype=dtype)
    kwargs = {}
    params = inspect.signature(sched.step).parameters
    if "generator" in params:  # ancestral/DDPM schedulers: seeded per pass
        kwargs["generator"] = torch.Generator("cpu").manual_seed(derive_seed(seed, "step", 0))
    if "eta" in params:
        kwargs["eta"] = 0.0
    cfg = cfg_scale > 1.0
    bar = _progress(len(sched.timesteps), desc, progress)
    try:
        for t in sched.timesteps:
            x = torch.cat([latents] * 2) if cfg else latents
            x = sched.scale_model_input(x, t)
            x = torch.cat([x, mask_lat, masked_lat], dim=1)
            eps = pipe.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
            if cfg:
                e_u, e_c = eps.chunk(2)
                eps = e_u + cfg_scale * (e_c - e_u)
            latents = sched.step(eps, t, latents, **kwargs, return_dict=False)[0]
            bar.update(1)
    finally:
        bar.close()
    return latents, len(sched.timesteps), sched


class _DiffusersPasses:
    """One canvas as a host of :func:`alignnoise_core.recipes.alignnoise_passes`: stage 1 on the
    pipeline's UNet (reference ``fn_AAM``, at ``timesteps[0]`` of the full schedule, also with fast
    sampling), passes on fresh scheduler instances, stage 2 re-noising at ``t = 999``."""

    def __init__(self, pipe, settings, cond, embeds, mask_lat, masked_lat, progress, seconds):
        self.pipe, self.settings, self.cond, self.embeds = pipe, settings, cond, embeds
        self.mask_lat, self.masked_lat, self.progress, self.seconds = mask_lat, masked_lat, progress, seconds
        self.unet_calls, self.backward_calls = 0, 0

    def optimize_noise(self, z):
        from .diffusers_bridge import optimize_pipeline_noise

        s = self.settings
        t0 = time.perf_counter()
        bar = _progress(s.balance_iterations, "attention balance", self.progress)

        def on_iter(k, info):
            bar.set_postfix(loss=f"{info['losses'][0]:.3f}")
            bar.update(1)

        try:
            balance = optimize_pipeline_noise(
                self.pipe, z.to(self.pipe.unet.device), self.mask_lat[:1], self.masked_lat[:1], self.cond,
                num_inference_steps=s.steps, iterations=s.balance_iterations, lr=s.balance_lr,
                loss_threshold=s.balance_threshold, tau=s.balance_tau, callback=on_iter,
                gradient_checkpointing=s.gradient_checkpointing)
        finally:
            bar.close()
        self.unet_calls += balance.forwards
        self.backward_calls += balance.backwards
        logger.info("attention balance: %s", balance.status[0])
        self.seconds["balance"] = time.perf_counter() - t0
        return balance.noise.float().cpu(), balance

    def refine(self, latents, noise, pass_index):
        s = self.settings
        ac = self.pipe.scheduler.alphas_cumprod[-1].item()  # t = num_train_timesteps - 1 (999)
        return frequency.refine(latents.float().cpu(), noise, math.sqrt((1.0 - ac) / ac),
                                mask=self.mask_lat[:1].float().cpu(), filter_type=s.filter_type, d_s=s.cutoff,
                                order=s.order, seed=derive_seed(s.seed, "frequency", pass_index))

    def sample(self, start, steps, pass_index):
        t0 = time.perf_counter()
        total = len(self.settings.pass_steps())
        desc = f"sampling pass {pass_index + 1}/{total}" if total > 1 else "sampling"
        latents, n_calls, _ = _sample(self.pipe, start, self.mask_lat, self.masked_lat, self.embeds,
                                      self.settings.guidance, steps, derive_seed(self.settings.seed, "pass", pass_index),
                                      desc, self.progress)
        self.unet_calls += n_calls
        self.seconds[f"pass{pass_index}"] = time.perf_counter() - t0
        return latents


def inpaint(pipe, image: torch.Tensor, mask: torch.Tensor, settings: AlignNoiseSettings = AlignNoiseSettings(),
            progress: bool = True, noise: Optional[torch.Tensor] = None) -> InpaintResult:
    """Run AlignNoise (or, with both stages off, plain diffusers inpainting) on one canvas.

    Args:
        pipe: a loaded ``StableDiffusionInpaintPipeline`` (9-channel UNet).
        image: ``[H, W, 3]`` canvas in 0..1 (H, W multiples of 8). Pixels under the mask are not seen
            by the model (diffusers zeroes them), so the fill does not matter.
        mask: ``[H, W]`` in 0..1, 1 = generate. The model sees it binarised at 0.5 (as diffusers);
            paste-back uses the soft values (a feathered seam).
        settings: :class:`AlignNoiseSettings`.
        progress: show tqdm progress bars.
        noise: optional explicit initial noise ``z`` (1, 4, H/8, W/8); default from ``settings.seed``.

    Returns:
        :class:`InpaintResult`.
    """
    settings.validate()
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] in 0..1, got shape {tuple(image.shape)}.")
    h, w = image.shape[:2]
    if tuple(mask.shape) != (h, w):
        raise ValueError(f"mask must be [H, W] = {(h, w)} like the image, got {tuple(mask.shape)}.")
    _check_canvas(h, w)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    seconds: dict = {}
    t_start = time.perf_counter()
    cfg = settings.guidance > 1.0

    # Text and pre-processing as StableDiffusionInpaintPipeline (diffusers ``StableDiffusionInpaintPipeline.__call__``).
    # No autograd graph through the text encoder or VAE: stage 1 differentiates w.r.t. the noise only.
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(settings.prompt, device, 1, cfg, settings.negative_prompt or None)
        embeds = torch.cat([uncond, cond]) if cfg else cond
        init = image.permute(2, 0, 1)[None].float() * 2.0 - 1.0
        mask_cond = (mask >= 0.5).float()[None, None]
        masked_image = init * (mask_cond < 0.5)
        vae_gen = torch.Generator("cpu").manual_seed(int(settings.seed))
        mask_lat, masked_lat = pipe.prepare_mask_latents(mask_cond, masked_image, 1, h, w, dtype, device, vae_gen,
                                                         cfg)
    lat_shape = (1, pipe.vae.config.latent_channels, h // pipe.vae_scale_factor, w // pipe.vae_scale_factor)
    z = initial_noise(lat_shape, settings.seed) if noise is None else noise.detach().float().cpu()
    if tuple(z.shape) != lat_shape:
        raise ValueError(f"noise must have shape {lat_shape}, got {tuple(z.shape)}.")
    seconds["encode"] = time.perf_counter() - t_start
    host = _DiffusersPasses(pipe, settings, cond, embeds, mask_lat, masked_lat, progress, seconds)
    latents, _, balance = alignnoise_passes(host, z, settings.pass_steps(),
                                            attention_balance=settings.attention_balance and
                                            settings.balance_iterations > 0)
    unet_calls, backward_calls = host.unet_calls, host.backward_calls

    t0 = time.perf_counter()
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        decoded, nsfw = pipe.run_safety_checker(decoded, device, embeds.dtype)
    nsfw_flag = None if nsfw is None else bool(nsfw[0])
    if nsfw_flag:
        logger.warning("The model's safety checker flagged the result; it was replaced by a black image.")
        decoded = torch.full_like(decoded, -1.0)
    generated = (decoded[0].float().cpu() / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).contiguous()
    out = generated
    if settings.paste_back:
        # lerp(src, gen, m): exactly the source where m == 0, the generation where m == 1.
        out = torch.lerp(image.float().cpu(), generated, mask.float().cpu().clamp(0, 1)[..., None])
    seconds["decode"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    return InpaintResult(out, generated, balance, unet_calls, backward_calls, seconds, nsfw_flag)


# --------------------------------------------------------------------------------------------------
# Outpainting
# --------------------------------------------------------------------------------------------------


@dataclass
class OutpaintResult:
    """Output of :func:`outpaint`: the final ``image`` [H', W', 3], the ``canvas`` the model was
    given, the ``mask`` (1 = generated), the pad ``box`` and the :class:`InpaintResult`."""

    image: torch.Tensor
    canvas: torch.Tensor
    mask: torch.Tensor
    box: padding.PadBox
    result: InpaintResult


def outpaint_box(height: int, width: int, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0,
                 target_width: int = 0, target_height: int = 0, anchor: str = "center") -> padding.PadBox:
    """The pad box (canvas rounded up to a multiple of 8) from per-side pads or a target size.

    Raises:
        ValueError: both kinds given, nothing to outpaint, a target smaller than the source, or a
            canvas that cannot work (smaller than 64 or larger than 8192 px per side).
    """
    per_side = any((left, top, right, bottom))
    target = any((target_width, target_height))
    if per_side and target:
        raise ValueError("Give either per-side pads (--left/--top/--right/--bottom) or a target size "
                         "(--width/--height), not both.")
    if target:
        box = padding.pad_box_target(height, width, target_width, target_height, anchor, multiple=8)
    else:
        box = padding.pad_box_per_side(height, width, left, top, right, bottom, multiple=8)
    if box.is_zero:
        raise ValueError(f"Nothing to outpaint: the {width}x{height} image already fills the canvas. Give pads "
                         "(e.g. --left 128 --right 128) or a larger target size (e.g. --width 768).")
    ch, cw = box.canvas_size(height, width)
    _check_canvas(ch, cw)
    return box


def outpaint(pipe, image: torch.Tensor, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0,
             target_width: int = 0, target_height: int = 0, anchor: str = "center",
             settings: AlignNoiseSettings = AlignNoiseSettings(), fill: str = "edge", color: str = "#808080",
             feathering: int = 16,
             overlap: int = 0, progress: bool = True) -> OutpaintResult:
    """Extend ``image`` ([H, W, 3] in 0..1) outwards with AlignNoise.

    Pads as :func:`alignnoise_core.padding.outpaint_pad` (the ``OutpaintPad`` node): per side or a
    target canvas with an ``anchor``, rounded up to a multiple of 8; ``fill`` of the new area (the
    9-channel model does not see it: it only matters without paste-back where the mask is soft);
    ``feathering``/``overlap`` px of the source are also regenerated and blended back smoothly.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] in 0..1, got shape {tuple(image.shape)}.")
    settings.validate()
    h, w = image.shape[:2]
    box = outpaint_box(h, w, left, top, right, bottom, target_width, target_height, anchor)
    padded = padding.outpaint_pad(image[None].float(), box, fill=fill, color=color, seed=settings.seed,
                                  feathering=feathering, overlap=overlap, mask_mode="soft")
    canvas, mask = padded.image[0], padded.mask[0]
    logger.info("Outpainting %dx%d -> %dx%d (pads left %d, top %d, right %d, bottom %d)", w, h, canvas.shape[1],
                canvas.shape[0], *box.as_tuple())
    res = inpaint(pipe, canvas, mask, settings, progress=progress)
    return OutpaintResult(res.image, canvas, mask, box, res)


# --------------------------------------------------------------------------------------------------
# Infinite zoom
# --------------------------------------------------------------------------------------------------


def fit_to_multiple(image: torch.Tensor, width: int = 0, height: int = 0, multiple: int = 8) -> torch.Tensor:
    """Resize ``[H, W, 3]`` to ``width`` x ``height`` (0 = the image's size rounded down to ``multiple``)."""
    h, w = image.shape[:2]
    tw = width or (w // multiple) * multiple
    th = height or (h // multiple) * multiple
    if tw < MIN_CANVAS or th < MIN_CANVAS:
        raise ValueError(f"Zoom frames of {tw}x{th} px are too small; use at least {MIN_CANVAS}x{MIN_CANVAS}.")
    if tw % multiple or th % multiple:
        raise ValueError(f"The zoom size {tw}x{th} must be a multiple of {multiple} on both sides.")
    if tw > MAX_CANVAS or th > MAX_CANVAS:
        raise ValueError(f"The zoom size {tw}x{th} is larger than {MAX_CANVAS} px per side.")
    if (th, tw) == (h, w):
        return image.float()
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1).contiguous()


@dataclass
class ZoomResult:
    """``keyframes`` [K+1, H, W, 3] (K_0 = the start image), ``frames`` [F, H, W, 3], per-step results."""

    keyframes: torch.Tensor
    frames: torch.Tensor
    results: list


def zoom_keyframes(pipe, image: torch.Tensor, steps_out: int, zoom_factor: float = 2.0,
                   settings: AlignNoiseSettings = AlignNoiseSettings(), overlap: float = 8.0, mask_blur: float = 8.0,
                   fill: str = "reflect", progress: bool = True) -> tuple[torch.Tensor, list]:
    """The keyframe loop: shrink the previous keyframe into the centre, outpaint the border, paste back.

    Keyframe ``K_{i+1}`` is ``K_i`` zoomed out by ``zoom_factor``; step ``i`` uses seed ``seed + i``.
    Geometry from :mod:`alignnoise_core.zoom` (``shrink_to_center``, ``outpaint_mask``,
    ``paste_back_alpha``), so the keyframes line up with :func:`alignnoise_core.zoom.render_frames`.

    Returns:
        ``(keyframes [K+1, H, W, 3], [InpaintResult per step])``.
    """
    h, w = image.shape[:2]
    zoom.check_keyframe_args(h, w, zoom_factor, steps_out)
    _check_canvas(h, w)
    settings.validate()
    results = []
    bar = _progress(steps_out, "zoom keyframes", progress)

    def outpaint(canvas, mask, k):
        res = inpaint(pipe, canvas, mask, replace(settings, seed=settings.seed + k, paste_back=False), progress=progress)
        results.append(res)
        bar.update(1)
        return res.generated

    try:
        keys = zoom_keyframe_loop(image.float().cpu(), steps_out, zoom_factor, outpaint, overlap=overlap,
                                  mask_blur=mask_blur, fill=fill, paste_back=settings.paste_back)
    finally:
        bar.close()
    return torch.stack(keys), results


def zoom_video(pipe, image: torch.Tensor, steps_out: int, zoom_factor: float = 2.0,
               settings: AlignNoiseSettings = AlignNoiseSettings(), frames_per_step: int = 30,
               schedule: str = "geometric", direction: str = "out", overlap: float = 8.0, mask_blur: float = 8.0,
               feather: float = 8.0, fill: str = "reflect", start_hold: int = 0, end_hold: int = 0,
               loop: str = "none", progress: bool = True) -> ZoomResult:
    """Keyframes (:func:`zoom_keyframes`) + interpolated frames (:func:`alignnoise_core.zoom.render_frames`)."""
    zs = zoom.ZoomSettings(zoom=zoom_factor, frames_per_keyframe=frames_per_step, schedule=schedule,
                           repaste=True, feather=feather, direction=direction, start_hold=start_hold,
                           end_hold=end_hold, loop=loop)
    zs.validate(steps_out + 1)  # fail before any model work
    keys, results = zoom_keyframes(pipe, image, steps_out, zoom_factor, settings, overlap, mask_blur, fill, progress)
    total = zoom.frame_count(keys.shape[0], frames_per_step, start_hold, end_hold, loop)
    bar = _progress(total, "zoom frames", progress)
    try:
        frames = zoom.render_frames(keys, zs, on_frame=lambda _f: bar.update(1))
    finally:
        bar.close()
    return ZoomResult(keys, frames, results)
