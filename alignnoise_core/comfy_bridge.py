"""The one module of ``alignnoise_core`` that talks to ComfyUI internals.

Every ``comfy`` import happens lazily inside a function, so ``alignnoise_core`` imports (and its math
is tested) without ComfyUI. Node files call these helpers instead of reaching into ComfyUI themselves.

Sections: shared primitives (this block), then one section per feature, each marked with a banner.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

log = logging.getLogger("alignnoise")


# --------------------------------------------------------------------------------------------------
# Shared primitives
# --------------------------------------------------------------------------------------------------


class TensorNoise:
    """A ComfyUI ``NOISE`` that returns a precomputed tensor.

    ComfyUI's NOISE protocol is an object with an int ``seed`` and ``generate_noise(latent_dict)``
    returning a CPU tensor shaped like ``latent_dict["samples"]``. ``seed`` is forwarded to samplers
    that draw extra noise (ancestral/SDE).

    Args:
        noise: the unit-variance noise, shaped like the latent it will be used with.
        seed: the seed reported to the sampler.
        source: a short human-readable origin, shown in error messages.
    """

    def __init__(self, noise: torch.Tensor, seed: int, source: str = "alignnoise"):
        # Detached CPU float copy: holds no reference to autograd graphs or patched model state.
        self.noise = noise.detach().to("cpu", torch.float32).clone()
        self.seed = int(seed)
        self.source = source

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise ValueError(
                f"The {self.source} NOISE was made for a latent of shape {tuple(self.noise.shape)} but the "
                f"sampler got a latent of shape {tuple(samples.shape)}. Feed the sampler the same latent "
                f"(same size and batch) that was given to the node that made this noise."
            )
        return self.noise.clone().to(samples.dtype)


def random_noise(latent: dict, seed: int) -> torch.Tensor:
    """Exactly ComfyUI's ``RandomNoise(seed).generate_noise(latent)`` (CPU generator, batch_index aware)."""
    import comfy.sample

    return comfy.sample.prepare_noise(latent["samples"], seed, latent.get("batch_index"))


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """ComfyUI progress bar that also honours Cancel on every update."""

    def __init__(self, total: int):
        import comfy.utils

        self.total = int(total)
        self.bar = comfy.utils.ProgressBar(self.total)

    def update(self, n: int = 1) -> None:
        check_interrupt()
        self.bar.update(n)


def intermediate_device() -> torch.device:
    import comfy.model_management

    return comfy.model_management.intermediate_device()


def model_sampling(model) -> Any:
    """The (possibly object-patched) ``model_sampling`` of a ModelPatcher."""
    return model.get_model_object("model_sampling")


def latent_format(model) -> Any:
    return model.get_model_object("latent_format")


# Families whose UNet is ComfyUI's ``openaimodel.UNetModel`` with attn1 patch points we can capture.
_SUPPORTED_CONFIGS = {
    "SD15": "SD1.x",
    "SD20": "SD2.x",
    "SD21UnclipL": "SD2.x",
    "SD21UnclipH": "SD2.x",
    "SDXL": "SDXL",
    "SDXLRefiner": "SDXL",
    "SSD1B": "SDXL",
    "Segmind_Vega": "SDXL",
    "KOALA_700M": "SDXL",
    "KOALA_1B": "SDXL",
}


@dataclass(frozen=True)
class ModelInfo:
    """What the pack needs to know about a ComfyUI model.

    Attributes:
        config_name: ComfyUI's model config class name (``SD15``, ``SD20``, ``SDXL``, ...).
        family: ``"SD1.x"``, ``"SD2.x"`` or ``"SDXL"``.
        is_inpaint: True for 9-channel inpainting UNets (mask + masked image concatenated).
        in_channels: UNet input channels (4, or 9 for inpainting models).
        latent_channels: channels of the latent the sampler works on (4).
    """

    config_name: str
    family: str
    is_inpaint: bool
    in_channels: int
    latent_channels: int


def model_info(model, feature: str = "this node") -> ModelInfo:
    """Describe a ComfyUI MODEL, or raise a clear error if ``feature`` does not support it."""
    base = model.model
    config_name = type(base.model_config).__name__
    family = _SUPPORTED_CONFIGS.get(config_name)
    if family is None:
        raise ValueError(
            f"{feature} supports SD1.x, SD2.x and SDXL UNet models (and their inpainting variants), but "
            f"got a '{config_name}' model ({type(base).__name__}). Load an SD1.5/SD2/SDXL checkpoint."
        )
    unet_config = base.model_config.unet_config
    in_channels = int(unet_config.get("in_channels", 4))
    return ModelInfo(
        config_name=config_name,
        family=family,
        is_inpaint=len(getattr(base, "concat_keys", ())) > 0,
        in_channels=in_channels,
        latent_channels=int(latent_format(model).latent_channels),
    )


def differentiable_clone(model):
    """A ``model.clone()`` whose weights can be used under autograd inside ComfyUI.

    Nodes run under ``torch.inference_mode()``, so loaded weights are inference tensors that autograd
    cannot save. An identity weight wrapper on every ``comfy.ops`` layer makes ``cast_bias_weight``
    produce a fresh, normal copy of each weight per forward (the trick of ``nodes_train.py``). The
    returned clone must be released with :func:`release_model` when done.
    """
    m = model.clone()
    for name, module in m.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        if getattr(module, "weight", None) is not None:
            m.add_weight_wrapper(f"{name}.weight", _identity)
        if getattr(module, "bias", None) is not None:
            m.add_weight_wrapper(f"{name}.bias", _identity)
    return m


def _identity(w):
    return w


def release_model(m) -> None:
    """Unload a patched clone and remove what ComfyUI's unpatching leaves on the shared UNet modules
    (our identity weight wrappers, restored method attributes), so the model is exactly as before."""
    import comfy.model_management as mm
    import comfy.utils

    for i in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[i]
        if loaded.model is m:
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
    # Unloading leaves weight wrappers in the modules' function lists until the next load: drop ours.
    for mod in m.model.modules():
        for attr in ("weight_function", "bias_function"):
            funcs = getattr(mod, attr, None)
            if funcs and any(f is _identity for f in funcs):
                setattr(mod, attr, [f for f in funcs if f is not _identity])
    # Unpatching an object patch of a method stores the original back as an instance attribute (a
    # bound method, i.e. a module <-> method reference cycle); drop it when it is just the class's.
    for key in m.object_patches:
        owner, _, attr = key.rpartition(".")
        mod = comfy.utils.get_attr(m.model, owner) if owner else m.model
        value = vars(mod).get(attr) if hasattr(mod, "__dict__") else None
        if getattr(value, "__self__", None) is mod and getattr(value, "__func__", None) is getattr(type(mod), attr, None):
            delattr(mod, attr)


@contextlib.contextmanager
def grad_enabled():
    """Leave ComfyUI's ``inference_mode`` and enable autograd for the enclosed block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def differentiable_attention_override(model_options: dict) -> dict:
    """Return model_options whose attention calls use a backend with a backward pass.

    Sage attention (``--use-sage-attention``) has no backward; route every ``optimized_attention``
    call through ``attention_pytorch`` while we differentiate. Copy-on-write: the input is untouched.
    """
    import comfy.ldm.modules.attention as attention
    import comfy.model_patcher

    mo = comfy.model_patcher.create_model_options_clone(model_options)
    to = dict(mo.get("transformer_options", {}))

    def override(func, *args, **kwargs):
        return attention.attention_pytorch(*args, **kwargs)

    to["optimized_attention_override"] = override
    mo["transformer_options"] = to
    return mo


@dataclass
class SamplerContext:
    """What a custom sampling function sees inside ComfyUI's guider plumbing (see :func:`run_sampler`).

    Attributes:
        guider: the CFGGuider (``guider(x, sigma * s_in, **extra_args)`` returns CFG x0).
        base_model: the ComfyUI ``BaseModel`` (``model_sampling``, ``process_latent_in`` ...).
        conds: processed conds by name (``"positive"``/``"negative"``) for ``calc_cond_batch``.
        model_options: the run's model_options (copy before changing).
        extra_args: the k-diffusion ``extra_args`` (``model_options``, ``seed``).
        sigmas: the schedule on the load device.
        noise: unit noise on the load device.
        latent_image: the input latent in model space (``process_latent_in`` applied unless all zero).
        denoise_mask: prepared mask (1 = regenerate) or None.
        callback: ComfyUI's preview callback or None.
    """

    guider: Any
    base_model: Any
    conds: dict
    model_options: dict
    extra_args: dict
    sigmas: torch.Tensor
    noise: torch.Tensor
    latent_image: torch.Tensor
    denoise_mask: torch.Tensor | None
    callback: Any

    def calc_cond_batch(self, names: list[str], x: torch.Tensor, sigma: torch.Tensor, model_options=None):
        """x0 predictions of the named conds (``None`` entries allowed), batched as ComfyUI does."""
        import comfy.samplers

        conds = [self.conds.get(n) if n is not None else None for n in names]
        return comfy.samplers.calc_cond_batch(
            self.base_model, conds, x, sigma, self.model_options if model_options is None else model_options
        )


def run_sampler(
    model,
    positive,
    negative,
    cfg: float,
    latent_image: torch.Tensor,
    sigmas: torch.Tensor,
    fn: Callable[[SamplerContext], torch.Tensor],
    noise: torch.Tensor | None = None,
    denoise_mask: torch.Tensor | None = None,
    seed: int = 0,
    guider=None,
    callback=None,
):
    """Run ``fn(ctx)`` as a sampler through ComfyUI's ``CFGGuider.sample``.

    The guider does the plumbing every sampler gets: GPU loading (lowvram aware), hooks, wrappers,
    cond processing (``c_crossattn``, the 9-channel ``c_concat`` of inpaint models), ``pre_run`` and
    ``cleanup``. ``fn`` returns a model-space latent; like any sampler's result, ComfyUI applies
    ``process_latent_out`` to it.

    Args:
        model: the ModelPatcher (clone it first if you patch it).
        positive, negative: CONDITIONING lists.
        cfg: classifier-free guidance scale used by ``ctx.guider``.
        latent_image: LATENT ``samples`` in latent-out space.
        sigmas: the schedule.
        fn: the sampling function.
        noise: unit noise (zeros if None).
        denoise_mask: LATENT ``noise_mask`` (1 = regenerate) or None.
        seed: forwarded to ``extra_args["seed"]``.
        guider: a prepared guider to use instead of a fresh ``CFGGuider``.
    """
    import comfy.sample
    import comfy.samplers

    class _FnSampler(comfy.samplers.Sampler):
        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            ctx = SamplerContext(
                guider=model_wrap,
                base_model=model_wrap.inner_model,
                conds=model_wrap.conds,
                model_options=extra_args["model_options"],
                extra_args=extra_args,
                sigmas=sigmas,
                noise=noise,
                latent_image=latent_image,
                denoise_mask=denoise_mask,
                callback=callback,
            )
            return fn(ctx)

    if guider is None:
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
    latent_image = comfy.sample.fix_empty_latent_channels(guider.model_patcher, latent_image)
    if noise is None:
        noise = torch.zeros_like(latent_image)
    return guider.sample(noise, latent_image, _FnSampler(), sigmas, denoise_mask=denoise_mask, callback=callback,
                         disable_pbar=True, seed=seed)


def calculate_sigmas(model, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas ``BasicScheduler`` would produce for this model (same denoise handling)."""
    import comfy.samplers

    total = steps if denoise >= 1.0 else int(steps / denoise)
    sigmas = comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, total).cpu()
    return sigmas[-(steps + 1):]


def scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.SCHEDULER_NAMES)


def sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.SAMPLER_NAMES)


# --------------------------------------------------------------------------------------------------
# Stage 2: FrequencyNoiseRefine (issue 4). Math in ``frequency.py``; this is the ComfyUI glue.
# --------------------------------------------------------------------------------------------------


def sampling_parameterization(model, feature: str = "FrequencyNoiseRefine") -> str:
    """``"eps"`` for models whose sampler state is ``x0 + σ·ε`` (EPS, v-pred, EDM, x0), ``"flow"``
    for rectified-flow (CONST) models; a clear error for anything else."""
    import comfy.model_sampling as cms

    ms = model_sampling(model)
    if isinstance(ms, cms.CONST):
        return "flow"
    if isinstance(ms, cms.EPS):
        return "eps"
    raise ValueError(
        f"{feature} does not know how the '{type(ms).__name__}' model sampling adds noise; it supports "
        f"eps/v-prediction models (SD1.x, SD2.x, SDXL) and rectified-flow models (SD3, Flux)."
    )


class RefinedNoise:
    """A ComfyUI ``NOISE`` that makes the sampler start exactly from a refined latent.

    ``SamplerCustomAdvanced`` starts from ``x = noise_scaling(σ0, noise, latent_in)`` (``latent_in``
    = ``process_latent_in(latent)``, or zeros for an all-zero latent). ``generate_noise`` inverts that
    for whatever latent the sampler is given, so the second pass may be fed an empty latent, the
    first pass's output, or the inpaint latent: its first state is ``x = sampler_start(z', σ0)`` in
    every case, as long as its sigmas start at ``σ0`` (the model's sigma_max unless ``sigmas`` was
    given to the node).

    Args:
        refined: ``z'``, the refined latent in normalised (VP) form, CPU float32.
        sigma: ``σ0``, the first sigma of the second pass.
        max_denoise: whether ``σ0`` is the model's sigma_max (the sampler then scales noise by
            ``√(1+σ²)``), decided exactly as ``comfy.samplers.Sampler.max_denoise``.
        parameterization: ``"eps"`` or ``"flow"``.
        process_in: the model's ``latent_format.process_in``.
        seed: reported to the sampler (ancestral/SDE samplers draw their extra noise from it).
    """

    def __init__(self, refined: torch.Tensor, sigma: float, max_denoise: bool, parameterization: str,
                 process_in: Callable[[torch.Tensor], torch.Tensor], seed: int):
        self.refined = refined.detach().to("cpu", torch.float32).clone()
        self.sigma = float(sigma)
        self.max_denoise = bool(max_denoise)
        self.parameterization = parameterization
        self.process_in = process_in
        self.seed = int(seed)

    def start_state(self) -> torch.Tensor:
        """The model-space state the sampler will start from (``x = z'·√(1+σ²)`` for eps models)."""
        from . import frequency

        return frequency.sampler_start(self.refined.double(), self.sigma, self.parameterization).float()

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        from . import frequency

        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.refined.shape):
            raise ValueError(
                f"FrequencyNoiseRefine made its NOISE for a latent of shape {tuple(self.refined.shape)}, but the "
                f"second sampler got {tuple(samples.shape)}. Give the second SamplerCustomAdvanced a latent of the "
                f"same size and batch as the first pass (e.g. the first pass's output)."
            )
        latent = samples.detach().to("cpu", torch.float64)
        # Mirror CFGGuider.inner_sample: an all-zero latent is not shifted by process_latent_in.
        latent_in = self.process_in(latent) if torch.count_nonzero(latent) > 0 else torch.zeros_like(latent)
        x_start = frequency.sampler_start(self.refined.double(), self.sigma, self.parameterization)
        noise = frequency.noise_for_start(x_start, latent_in.double(), self.sigma, self.parameterization,
                                          self.max_denoise)
        return noise.to(torch.float32)


def frequency_refine(model, samples: dict, noise, mask: torch.Tensor | None = None, filter_type: str = "butterworth",
                     d_s: float = 0.25, order: int = 4, d_t: float = 0.25, seed: int = 0,
                     sigmas: torch.Tensor | None = None) -> tuple[RefinedNoise, dict]:
    """AlignNoise stage 2 in ComfyUI: re-noise the first pass with its initial NOISE, mix frequencies
    in the outpainted region, and return a NOISE for the second pass plus a small info dict.

    Args:
        model: the MODEL (its model_sampling gives sigma_max and the parameterisation, its latent
            format ``process_latent_in``).
        samples: the first pass's LATENT (``output`` or ``denoised_output`` of the first sampler).
        noise: the first pass's NOISE; ``noise.generate_noise(samples)`` must give its initial noise.
        mask: 1 = outpainted (MASK, any resolution); falls back to ``samples["noise_mask"]``; with
            neither, the whole latent is refined (plain FreeInit).
        sigmas: optional schedule of the second pass; its first sigma is the re-noising level.
    """
    import math

    from . import frequency

    kind = sampling_parameterization(model)
    ms = model_sampling(model)
    sigma_max = float(ms.sigma_max)
    if sigmas is not None and len(sigmas) > 0:
        sigma0 = float(sigmas[0])
        if sigma0 <= 0:
            raise ValueError("The sigmas given to FrequencyNoiseRefine start at 0: nothing to re-noise.")
    else:
        sigma0 = sigma_max
    max_denoise = math.isclose(sigma_max, sigma0, rel_tol=1e-05) or sigma0 > sigma_max  # as Sampler.max_denoise
    if kind == "flow":
        sigma0 = min(sigma0, 1.0)
    lat = samples["samples"]
    if getattr(lat, "is_nested", False):
        raise ValueError("FrequencyNoiseRefine does not support nested (multi-part) latents.")
    if lat.ndim not in (4, 5):
        raise ValueError(f"FrequencyNoiseRefine needs a 4-D or 5-D LATENT, got shape {tuple(lat.shape)}.")
    initial = noise.generate_noise(samples)
    if tuple(initial.shape) != tuple(lat.shape):
        raise ValueError(
            f"The NOISE gives shape {tuple(initial.shape)} for this latent of shape {tuple(lat.shape)}; connect the "
            f"NOISE that drove the first pass."
        )
    if mask is None:
        mask = samples.get("noise_mask")
    lf = latent_format(model)
    x0 = lf.process_in(lat.detach().to("cpu", torch.float64))
    refined = frequency.refine(
        x0, initial.detach().to("cpu", torch.float64), sigma0, mask=mask, filter_type=filter_type, d_s=d_s,
        order=order, d_t=d_t, seed=seed, parameterization=kind,
    )
    info = {"sigma": sigma0, "max_denoise": max_denoise, "parameterization": kind, "masked": mask is not None}
    return RefinedNoise(refined, sigma0, max_denoise, kind, lf.process_in, seed), info


# --------------------------------------------------------------------------------------------------
# Stage 1: AttentionBalanceNoiseOptimize (issue 3). Math in ``balance.py``/``attention.py``.
# --------------------------------------------------------------------------------------------------


def attention_levels(model) -> dict:
    """Self-attention (attn1) patch keys of an openaimodel UNet grouped by resolution level.

    Level 0 is the latent (1/8 px), level 2 the 1/32-pixel level AlignNoise uses. Found by walking
    the UNet in execution order (Downsample after an input block, Upsample at the end of an output
    block), so it works for SD1.x, SD2.x, SDXL and pruned variants alike.

    Returns:
        ``{level: [(block_name, number, transformer_index), ...]}`` in execution order.
    """
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, UNetModel, Upsample

    dm = model.model.diffusion_model
    if not isinstance(dm, UNetModel):
        raise ValueError(f"AttentionBalanceNoiseOptimize needs an SD1.x/SD2.x/SDXL UNet, got {type(dm).__name__}")
    levels: dict = {}
    level = 0

    def add(block, layers):
        nonlocal level
        for layer in layers:
            if isinstance(layer, SpatialTransformer):
                for j in range(len(layer.transformer_blocks)):
                    levels.setdefault(level, []).append((block[0], block[1], j))
            elif isinstance(layer, Downsample):
                level += 1
            elif isinstance(layer, Upsample):
                level -= 1

    for i, blk in enumerate(dm.input_blocks):
        add(("input", i), blk)
    add(("middle", 0), dm.middle_block)
    for i, blk in enumerate(dm.output_blocks):
        add(("output", i), blk)
    return levels


def _checkpoint_patches(m, keys: list, early_stop: bool) -> int:
    """Gradient checkpointing on the clone ``m``: object patches (undone when ``m`` is unpatched) that
    run every ResBlock and SpatialTransformer on the gradient path under activation checkpointing,
    except the target-level transformers (their capture records probabilities as a side effect).
    Layers after the last target block are skipped when the forward stops there. Returns the count."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock

    from .attention import checkpointed_call

    dm = m.model.diffusion_model
    target_blocks = {(k[0], k[1]) for k in keys}
    last_out = max((k[1] for k in keys if k[0] == "output"), default=-1) if early_stop else len(dm.output_blocks) - 1
    blocks = [("input", i, f"input_blocks.{i}", b) for i, b in enumerate(dm.input_blocks)]
    if dm.middle_block is not None:
        blocks.append(("middle", 0, "middle_block", dm.middle_block))
    blocks += [("output", i, f"output_blocks.{i}", b) for i, b in enumerate(dm.output_blocks) if i <= last_out]
    count = 0
    for kind, index, path, block in blocks:
        for j, layer in enumerate(block):
            if isinstance(layer, SpatialTransformer) and (kind, index) in target_blocks:
                continue
            if isinstance(layer, (TimestepBlock, SpatialTransformer)):
                forward = layer.forward
                m.add_object_patch(f"diffusion_model.{path}.{j}.forward",
                                   functools.partial(checkpointed_call, forward))
                count += 1
    return count


@dataclass
class BalanceRun:
    """Result of :func:`attention_balance` (noise on CPU, plus what the node reports)."""

    noise: torch.Tensor
    result: Any  # balance.BalanceResult
    level: int
    keys: list
    family: str
    notes: list


def _attention_mask_input(latent: dict, mask):
    samples = latent["samples"]
    if mask is None:
        mask = latent.get("noise_mask")
        if mask is None:
            raise ValueError(
                "AttentionBalanceNoiseOptimize needs to know which region is outpainted: connect the 'mask' input "
                "(1 = outpainted, e.g. from OutpaintPad) or give a latent with a noise_mask."
            )
    m = mask.detach().float()
    if m.ndim == 4:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"the mask must be [B,H,W] (MASK) or [B,1,H,W], got shape {tuple(mask.shape)}")
    b = samples.shape[0]
    if m.shape[0] not in (1, b):
        raise ValueError(f"the mask has batch {m.shape[0]} but the latent has batch {b}; use 1 mask or one per image")
    if m.shape[0] == 1 and b > 1:
        m = m.expand(b, -1, -1)
    full = ((m >= 0.5).reshape(b, -1).all(1)).tolist()
    if any(full):
        raise ValueError(
            "the outpaint mask covers the whole image (all ones) for item(s) "
            f"{[i for i, f in enumerate(full) if f]}: there is no source region for the outpainted area to attend "
            "to. Use a mask with a kept (0) region, e.g. from OutpaintPad."
        )
    return m


def attention_balance(model, positive, negative, latent: dict, sigmas: torch.Tensor, noise_seed: int,
                      mask=None, cfg: float = 1.0, iterations: int = 10, lr: float = 0.01,
                      loss_threshold: float = 0.55, tau: float = 0.15, smooth: bool = True,
                      early_stop: bool = True, gradient_checkpointing: bool = False) -> BalanceRun:
    """AlignNoise stage 1 inside ComfyUI: optimise ``RandomNoise(noise_seed)`` for this latent.

    Recipe (comfyui.md §2.4/2.5): a clone with identity weight wrappers (fresh weight copies per
    forward, so autograd works on weights loaded under inference mode), attn1 replace patches on the
    target-level blocks only (explicit float32 softmax, recorded), ``optimized_attention_override`` to
    ``attention_pytorch`` elsewhere (sage attention has no backward), a custom Sampler run through
    ``CFGGuider.sample`` for the plumbing, ``inference_mode(False)`` + ``enable_grad`` inside, the
    forward stopped after the last target-level block, and the clone released afterwards.

    One UNet evaluation per iteration at ``sigmas[0]``, with the exact first model input the user's
    ``SamplerCustomAdvanced`` will build from this NOISE and this latent (``noise_scaling`` with
    max-denoise at sigma_max, plus the ``noise_mask`` blend of 4-channel inpainting).

    ``gradient_checkpointing`` recomputes the non-target layers in the backward pass instead of
    keeping their activations (object patches on the clone, undone when it is released).
    """
    from . import balance
    from .attention import AttentionRecorder, EarlyStop, explicit_attention, target_grid

    info = model_info(model, "AttentionBalanceNoiseOptimize")
    samples = latent["samples"]
    if getattr(samples, "is_nested", False) or samples.ndim != 4:
        raise ValueError(f"AttentionBalanceNoiseOptimize needs an image LATENT [B,4,h,w], got {tuple(samples.shape)}")
    if sigmas is None or len(sigmas) < 1 or float(sigmas[0]) <= 0:
        raise ValueError("the sigmas are empty or start at 0: connect the SIGMAS of the sampler that will use this noise")
    z = random_noise(latent, noise_seed)
    notes: list = []
    if iterations <= 0:
        res = balance.optimize_noise(lambda zh: None, z, torch.ones(1, 1, 1), iterations=0)
        return BalanceRun(z, res, -1, [], info.family, ["iterations = 0: the noise is RandomNoise(noise_seed)"])
    m_in = _attention_mask_input(latent, mask)
    if not bool((m_in >= 0.5).any()):
        res = balance.optimize_noise(lambda zh: None, z, m_in, iterations=iterations)
        return BalanceRun(z, res, -1, [], info.family, ["empty mask: nothing is outpainted, noise not optimised"])

    levels = attention_levels(model)
    level = 2 if 2 in levels else max(levels)
    if level != 2:
        notes.append(f"this UNet has no self-attention at the 1/32-pixel level; used level 1/{8 * 2 ** level}")
        log.warning("AttentionBalanceNoiseOptimize: %s", notes[-1])
    keys = list(levels[level])
    b = samples.shape[0]
    grid = target_grid(samples.shape[-2:], level)
    recorder = AttentionRecorder(grid, b)
    recorder.target_keys = keys
    recorder.discovered = True
    state = {"stop": False}

    def capture(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        shape = extra_options.get("activations_shape")
        if shape is None or not recorder.is_target(shape[-2:]):
            # e.g. an area-restricted cond: no explicit probabilities, differentiable backend
            import comfy.ldm.modules.attention as attention
            return attention.attention_pytorch(q, k, v, heads)
        out, probs = explicit_attention(q, k, v, heads)
        blk = extra_options["block"]
        if recorder.record((blk[0], blk[1], extra_options.get("block_index", 0)), probs) and state["stop"]:
            raise EarlyStop()
        return out

    m = differentiable_clone(model)
    for key in keys:
        m.set_model_attn1_replace(capture, key[0], key[1], key[2])
    m.model_options = differentiable_attention_override(m.model_options)
    if gradient_checkpointing:
        _checkpoint_patches(m, keys, early_stop)
    names = ["positive"] if float(cfg) == 1.0 else ["positive", "negative"]
    progress = Progress(iterations)
    out: dict = {}

    def fn(ctx: SamplerContext):
        import comfy.samplers

        ms = ctx.base_model.model_sampling
        max_denoise = comfy.samplers.Sampler().max_denoise(ctx.guider, ctx.sigmas)
        recorder.expected_rows = b * sum(len(ctx.conds.get(n) or []) for n in names)
        with grad_enabled():
            ctx.base_model.requires_grad_(False)  # never compute gradients for model weights
            z0 = ctx.noise.detach().clone().float()
            sigma = ctx.sigmas[:1].detach().clone().expand(b)
            lat = ctx.latent_image.detach().clone()
            dmask = None if ctx.denoise_mask is None else ctx.denoise_mask.detach().clone()
            tmask = m_in.detach().clone().to(z0.device)

            def evaluate(z_hat):
                check_interrupt()
                x = ms.noise_scaling(sigma, z_hat, lat, max_denoise)
                if dmask is not None:  # KSamplerX0Inpaint's blend at the first step, as sampling does
                    dm = dmask
                    if "denoise_mask_function" in ctx.model_options:
                        dm = ctx.model_options["denoise_mask_function"](
                            sigma, dm, extra_options={"model": ctx.guider, "sigmas": ctx.sigmas})
                    x = x * dm + ctx.base_model.scale_latent_inpaint(
                        x=x, sigma=sigma, noise=z_hat, latent_image=lat) * (1.0 - dm)
                recorder.reset()
                state["stop"] = early_stop
                try:
                    ctx.calc_cond_batch(names, x, sigma)
                except EarlyStop:
                    pass
                finally:
                    state["stop"] = False
                return recorder.capture()

            def on_iteration(k, it):
                progress.update(1)

            out["result"] = balance.optimize_noise(
                evaluate, z0, tmask, iterations=iterations, lr=lr, loss_threshold=loss_threshold, tau=tau,
                smooth=smooth, final_eval=True, callback=on_iteration)
        return ctx.latent_image

    try:
        run_sampler(m, positive, negative, cfg, samples, sigmas, fn, noise=z, denoise_mask=latent.get("noise_mask"),
                    seed=noise_seed)
    finally:
        release_model(m)
        del m
    res = out["result"]
    noise = res.noise.detach().to("cpu", torch.float32).clone()
    res.noise = noise
    return BalanceRun(noise, res, level, keys, info.family, notes)


# --------------------------------------------------------------------------------------------------
# Infinite zoom: ZoomOutpaintKeyframes (issue 6). Geometry in ``zoom.py``; this is the sampling loop.
# --------------------------------------------------------------------------------------------------

ZOOM_ALIGNNOISE_MODES = ("off", "stage 1", "stage 2", "stages 1+2")


def inpaint_conditioning(positive, negative, vae, pixels: torch.Tensor, mask: torch.Tensor):
    """What core ``InpaintModelConditioning`` (``noise_mask=True``) returns, for ``pixels [1,H,W,C]``.

    The masked pixels (mask rounded, 1 = generate) are set to 0.5 grey and encoded as
    ``concat_latent_image``; ``concat_mask`` is the mask. 9-channel inpainting UNets read both through
    ``BaseModel.concat_cond``; 4-channel models ignore them and use the latent's ``noise_mask``.
    """
    import node_helpers

    m = mask.reshape(1, 1, mask.shape[-2], mask.shape[-1]).to(pixels.dtype)
    keep = (1.0 - m.round()).squeeze(1)[..., None]
    grey = (pixels - 0.5) * keep + 0.5
    concat_latent = vae.encode(grey[..., :3])
    latent = {"samples": vae.encode(pixels[..., :3]), "noise_mask": m}
    out = [node_helpers.conditioning_set_values(c, {"concat_latent_image": concat_latent, "concat_mask": m})
           for c in (positive, negative)]
    return out[0], out[1], latent


def zoom_outpaint_keyframes(model, positive, negative, vae, image: torch.Tensor, zoom_steps: int, zoom: float,
                            seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                            denoise: float = 1.0, overlap: float = 8.0, mask_blur: float = 8.0,
                            fill: str = "reflect", alignnoise: str = "off", balance_iterations: int = 10,
                            ) -> torch.Tensor:
    """Infinite-zoom keyframes: shrink the previous keyframe into the centre, outpaint the border, paste back.

    Each of the ``zoom_steps`` steps renders the previous keyframe at ``1/zoom`` into the centre of
    the canvas (the same resampler ``ZoomInterpolate`` uses, so the two line up to the sub-pixel),
    fills the border (``reflect`` or ``grey``), and inpaints the border plus ``overlap`` px with
    ComfyUI's own sampling (``comfy.sample.sample_custom``, i.e. ``SamplerCustom``): 9-channel
    inpainting models get ``InpaintModelConditioning``'s concat conditioning, all models the latent
    ``noise_mask``. The decoded result gets the known centre pasted back (exactly, inside the
    ``overlap`` band; feathered across it), so colours cannot drift from keyframe to keyframe.

    Args:
        alignnoise: ``off``, or AlignNoise for every outpaint: ``stage 1`` optimises the initial noise
            (attention balance), ``stage 2`` samples twice with frequency-refined noise, ``stages 1+2``.
        balance_iterations: stage-1 optimisation steps.

    Returns:
        IMAGE ``[zoom_steps + 1, H, W, C]``: the start image then each zoomed-out keyframe.
    """
    import comfy.sample
    import comfy.samplers

    from . import zoom as zoom_core

    if alignnoise not in ZOOM_ALIGNNOISE_MODES:
        raise ValueError(f"alignnoise must be one of {ZOOM_ALIGNNOISE_MODES}, got '{alignnoise}'.")
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"ZoomOutpaintKeyframes takes ONE start image [1,H,W,C], got shape {tuple(image.shape)}; "
                         f"pick one with ImageFromBatch.")
    _, height, width, channels = image.shape
    zoom_core.check_keyframe_args(height, width, zoom, zoom_steps)
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}.")
    if alignnoise != "off":
        model_info(model, "ZoomOutpaintKeyframes with AlignNoise stages")  # clear error for unsupported models
    is_inpaint = len(getattr(model.model, "concat_keys", ())) > 0
    use_stage1 = alignnoise in ("stage 1", "stages 1+2")
    use_stage2 = alignnoise in ("stage 2", "stages 1+2")
    passes = 2 if use_stage2 else 1
    progress = Progress(zoom_steps * steps * passes)  # stage 1 reports its own iterations
    sigmas = calculate_sigmas(model, scheduler, steps, denoise)
    sampler = comfy.samplers.sampler_object(sampler_name)
    mask = zoom_core.outpaint_mask(height, width, zoom, overlap, mask_blur)
    alpha = zoom_core.paste_back_alpha(height, width, zoom, overlap)
    keyframes = [image[0].detach().to("cpu", torch.float32).clone()]
    log.info("ZoomOutpaintKeyframes: %d steps of %.3gx on %dx%d (%s model, alignnoise %s)", zoom_steps, zoom,
             width, height, "9-channel inpaint" if is_inpaint else "4-channel + noise_mask", alignnoise)

    def on_step(step, x0, x, total):
        progress.update(1)

    for k in range(zoom_steps):
        check_interrupt()
        canvas, _ = zoom_core.shrink_to_center(keyframes[-1], zoom, fill)
        pixels = canvas[None]
        if is_inpaint:
            pos, neg, latent = inpaint_conditioning(positive, negative, vae, pixels, mask)
        else:
            pos, neg = positive, negative
            latent = {"samples": vae.encode(pixels[..., :3]), "noise_mask": mask[None, None]}
        step_seed = int(seed) + k
        if use_stage1:
            noise = attention_balance(model, pos, neg, latent, sigmas, step_seed, mask=mask[None], cfg=cfg,
                                      iterations=balance_iterations).noise
        else:
            noise = random_noise(latent, step_seed)
        samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, pos, neg, latent["samples"],
                                             noise_mask=latent["noise_mask"], callback=on_step, disable_pbar=True,
                                             seed=step_seed)
        if use_stage2:
            refined, _ = frequency_refine(model, {"samples": samples, "noise_mask": latent["noise_mask"]},
                                          TensorNoise(noise, step_seed, "ZoomOutpaintKeyframes"), mask=mask[None],
                                          seed=step_seed, sigmas=sigmas)
            samples = comfy.sample.sample_custom(model, refined.generate_noise(latent), cfg, sampler, sigmas, pos,
                                                 neg, latent["samples"], noise_mask=latent["noise_mask"],
                                                 callback=on_step, disable_pbar=True, seed=step_seed)
        decoded = vae.decode(samples)
        decoded = decoded.reshape(-1, *decoded.shape[-3:])[0].to("cpu", torch.float32).clamp(0.0, 1.0)
        if tuple(decoded.shape[:2]) != (height, width):
            raise ValueError(f"The VAE decoded a {decoded.shape[1]}x{decoded.shape[0]} image for a {width}x{height} "
                             f"canvas; use the VAE that matches the model.")
        if channels > decoded.shape[-1]:  # RGBA start image: the outpainted area is opaque
            decoded = torch.cat([decoded, torch.ones_like(decoded[..., :channels - decoded.shape[-1]])], dim=-1)
        keyframes.append(zoom_core.paste_back(decoded[..., :channels], canvas, alpha))
    return torch.stack(keyframes).to(intermediate_device())


# --------------------------------------------------------------------------------------------------
# Noise Map Guidance: NMGInvert + NMGGuidance (issue 5). Math in ``nmg.py``; this is the ComfyUI glue.
# --------------------------------------------------------------------------------------------------


def _nmg_check_model(model, feature: str) -> ModelInfo:
    """SD1.x/SD2.x/SDXL with a VE-type sampler state (x = x0 + sigma * eps: eps and v-prediction)."""
    import comfy.model_sampling as cms

    info = model_info(model, feature)
    ms = model_sampling(model)
    if not isinstance(ms, cms.EPS) or isinstance(ms, cms.CONST):
        raise ValueError(f"{feature} needs an eps- or v-prediction model (SD1.x/SD2.x/SDXL); this model samples with "
                         f"'{type(ms).__name__}', which the DDIM inversion formulas do not cover.")
    return info


def _nmg_latent_space(model) -> str:
    return type(latent_format(model)).__name__


def nmg_invert(model, positive, latent: dict, sigmas: torch.Tensor):
    """DDIM inversion of ``latent`` with the source prompt: Euler over the ascending ``sigmas``.

    Runs as a custom Sampler through ``CFGGuider.sample`` (GPU loading, cond processing, hooks,
    wrappers), cfg 1 (the reference inverts without CFG), one UNet call per step with a ComfyUI
    progress bar and Cancel. At sigma 0 the model is evaluated at its smallest training sigma.

    Returns:
        ``(maps, latent_out)``: the :class:`~.nmg.NoiseMaps` (model space, CPU) and a LATENT holding the
        inverted latent (the sampler's start when fed with ``DisableNoise`` and the same sigmas).
    """
    from . import nmg

    info = _nmg_check_model(model, "NMGInvert")
    samples = latent["samples"]
    if getattr(samples, "is_nested", False) or samples.ndim != 4:
        raise ValueError(f"NMGInvert needs an image LATENT [B,C,h,w], got shape {tuple(samples.shape)}.")
    if latent.get("noise_mask") is not None:
        raise ValueError("NMGInvert inverts the whole latent; this LATENT has a noise_mask. Use the plain VAEEncode "
                         "output (no SetLatentNoiseMask / VAEEncodeForInpaint).")
    s = nmg.validate_schedule(sigmas)
    if float(s[-1]) != 0.0:
        raise ValueError("NMGInvert needs SIGMAS that end at 0 (the clean image), e.g. from BasicScheduler; got a "
                         f"schedule ending at {float(s[-1]):.4g} (a SplitSigmas high part?).")
    steps = len(s) - 1
    progress = Progress(steps)
    out: dict = {}

    def fn(ctx: SamplerContext):
        b = ctx.latent_image.shape[0]

        def predict_eps(x, sigma):
            ts = torch.full((b,), float(sigma), device=x.device, dtype=torch.float32)
            (den,) = ctx.calc_cond_batch(["positive"], x, ts)
            return (x - den.float()) / float(sigma)

        maps = nmg.ddim_invert(
            ctx.latent_image.float(), s, predict_eps, sigma_floor=float(ctx.base_model.model_sampling.sigma_min),
            callback=lambda i, n: progress.update(1))
        out["maps"] = maps
        return maps.latents[0]

    inverted = run_sampler(model, positive, positive, 1.0, samples, s, fn)
    raw = out["maps"]
    meta = {"family": info.family, "latent_space": _nmg_latent_space(model), "shape": tuple(samples.shape)}
    maps = nmg.NoiseMaps(sigmas=raw.sigmas, latents=tuple(t.detach().to("cpu", torch.float32) for t in raw.latents),
                         meta=meta)
    latent_out = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
    latent_out["samples"] = inverted.to(intermediate_device())
    return maps, latent_out


_NMG_DETERMINISTIC = ("euler", "ddim")


def _nmg_check_sampler(sampler) -> None:
    """Only plain Euler (= DDIM, eta 0) keeps NMG's transition intact: one model call per maps sigma."""
    import comfy.k_diffusion.sampling as kds
    import comfy.samplers

    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", type(sampler).__name__).removeprefix("sample_")
    extra = getattr(sampler, "extra_options", {}) or {}
    if isinstance(sampler, comfy.samplers.KSAMPLER) and fn is kds.sample_euler and float(extra.get("s_churn", 0)) == 0:
        return
    if any(k in name for k in ("ancestral", "sde", "ddpm", "lcm", "er_sde", "sa_solver")) or extra.get("s_churn"):
        why = "it injects fresh noise at every step, which destroys the deterministic inversion trajectory"
    else:
        why = "it is not a single first-order step per sigma (NMG replaces each step with its own DDIM double step)"
    raise ValueError(f"NMGGuidance needs the deterministic DDIM sampler: pick 'euler' or 'ddim' in KSamplerSelect. "
                     f"The sampler '{name}' cannot be used because {why}.")


def _nmg_guider_class():
    """``NMGGuider(CFGGuider)``, defined lazily so this module imports without ComfyUI."""
    cached = globals().get("_NMG_GUIDER_CLASS")
    if cached is not None:
        return cached
    import comfy.samplers

    from . import nmg

    class NMGGuider(comfy.samplers.CFGGuider):
        """A GUIDER whose every step is NMG's Step A (noise map guidance) + Step B (text CFG).

        ``predict_noise`` returns the x0 that makes the sampler's Euler step land exactly on the NMG
        result (see :func:`~.nmg.effective_x0`); outside the guidance window it is a plain CFG step.
        """

        def __init__(self, model_patcher, maps, grad_scale, noise_map_scale, loss, start, end):
            super().__init__(model_patcher)
            self.maps = maps
            self.nmg = dict(grad_scale=float(grad_scale), noise_map_scale=float(noise_map_scale), loss=loss)
            self.window = (float(start), float(end))
            self.run = None

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None):
            _nmg_check_sampler(sampler)
            if getattr(latent_image, "is_nested", False) or tuple(latent_image.shape) != self.maps.shape:
                raise ValueError(f"NMGGuidance: the latent has shape {tuple(latent_image.shape)} but the noise maps "
                                 f"were inverted from a latent of shape {self.maps.shape}. Sample NMGInvert's "
                                 f"'latent' output (same image size and batch).")
            if denoise_mask is not None:
                raise ValueError("NMGGuidance: the latent has a noise_mask; NMG edits the whole latent. Use "
                                 "NMGInvert's latent output directly.")
            if noise is not None and torch.count_nonzero(noise) > 0:
                raise ValueError("NMGGuidance starts from the inverted latent and must not get extra noise: connect "
                                 "DisableNoise to SamplerCustomAdvanced's noise input.")
            self.maps.check_schedule(sigmas)
            # Step A sets requires_grad_(False) on the shared weights; put the flags back afterwards.
            flags = [(p, p.requires_grad) for p in self.model_patcher.model.parameters()]
            self.run = {"grad_ready": False, "start_checked": False}
            try:
                return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
                                      seed)
            finally:
                self.run = None
                release_model(self.model_patcher)  # drop the identity weight wrappers from the shared UNet
                with torch.inference_mode():  # (allowed on inference tensors only inside inference mode)
                    for p, flag in flags:
                        if p.requires_grad != flag:
                            p.requires_grad_(flag)

        def _cfg_x0(self, x, timestep, model_options, seed):
            return comfy.samplers.CFGGuider.predict_noise(self, x, timestep, model_options, seed)

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            if self.run is None:
                raise ValueError("NMGGuidance's GUIDER only works through its own sample() (SamplerCustomAdvanced).")
            check_interrupt()
            maps = self.maps
            sigma = float(timestep.flatten()[0])
            i = maps.require_index(sigma)
            if i + 1 >= len(maps.sigmas):
                raise ValueError(f"NMGGuidance: sigma {sigma:.4g} is the last of the noise maps' schedule; there is "
                                 f"no step after it. Use the same SIGMAS for NMGInvert and the sampler.")
            sigma_next = float(maps.sigmas[i + 1])
            if not self.run["start_checked"]:
                self.run["start_checked"] = True
                ref = maps.latents[i].to(x.device, torch.float32)
                if float((x.float() - ref).abs().mean()) > 1e-3 * (float(ref.abs().mean()) + 1e-6):
                    log.warning("NMGGuidance: the sampler does not start from the inverted latent of these noise "
                                "maps; connect NMGInvert's latent output and DisableNoise.")
            if not nmg.guidance_active(i, maps.steps, *self.window):
                return self._cfg_x0(x, timestep, model_options, seed)
            base = self.inner_model
            negative = self.conds.get("negative")
            mo_grad = differentiable_attention_override(model_options)
            run = self.run

            def eps_uncond(xv, s):
                # Called by the core inside inference_mode(False) + enable_grad.
                if not run["grad_ready"]:
                    base.requires_grad_(False)  # gradients w.r.t. the latent only, never the weights
                    run["grad_ready"] = True
                ts = timestep.detach().clone()
                (den,) = comfy.samplers.calc_cond_batch(base, [negative], xv, ts, mo_grad)
                if xv.requires_grad and den.grad_fn is None:  # x0 must depend on the latent via the UNet
                    raise ValueError(nmg._NOT_DIFFERENTIABLE)
                return (xv - den.float()) / sigma

            def eps_text(xv, s):
                return (xv - self._cfg_x0(xv.to(x.dtype), timestep, model_options, seed).float()) / sigma

            target = maps.latents[i + 1].to(x.device, torch.float32)
            res = nmg.nmg_step(x.float(), sigma, sigma_next, target, eps_uncond, eps_text, **self.nmg)
            return nmg.effective_x0(x.float(), res.x_next, sigma, sigma_next).to(x.dtype)

    globals()["_NMG_GUIDER_CLASS"] = NMGGuider
    return NMGGuider


def nmg_guider(model, positive, negative, maps, cfg: float = 10.0, grad_scale: float = 5000.0,
               noise_map_scale: float = 10.0, loss: str = "l1", start: float = 0.0, end: float = 1.0):
    """Build the NMG GUIDER for ``SamplerCustomAdvanced`` (DisableNoise, euler/ddim, the maps' sigmas).

    The model is cloned with identity weight wrappers (autograd through weights loaded under
    inference mode; the input MODEL is untouched, its patches are kept); the clone is released after
    each sampling run.
    """
    from . import nmg

    if not all(hasattr(maps, a) for a in ("sigmas", "latents", "check_schedule")):  # duck-typed: the pack's
        raise ValueError(f"noise_maps must come from NMGInvert, got {type(maps).__name__}.")  # core may load twice
    nmg.validate_params(grad_scale, noise_map_scale, cfg, loss, start, end)
    _nmg_check_model(model, "NMGGuidance")
    space = _nmg_latent_space(model)
    if maps.meta.get("latent_space", space) != space:
        raise ValueError(f"These noise maps were inverted with a {maps.meta.get('family')} model "
                         f"({maps.meta.get('latent_space')} latents) but NMGGuidance got a model with {space} latents. "
                         f"Use the same model family for NMGInvert and NMGGuidance.")
    guider = _nmg_guider_class()(differentiable_clone(model), maps, grad_scale, noise_map_scale, loss, start, end)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider
