"""AlignNoise stage 1 (AttentionBalanceNoiseOptimize) in ComfyUI: the ComfyUI host of
:func:`alignnoise_core.recipes.attention_balance_session`."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, TimestepBlock, UNetModel, Upsample

from .. import balance, validation
from ..attention import EarlyStop, checkpointed_call, explicit_attention
from ..recipes import attention_balance_session
from .common import (SamplerContext, check_interrupt, gradient_session, model_info, Progress, random_noise,
                     release_model, run_sampler, set_differentiable_attention)

log = logging.getLogger("alignnoise")


def attention_levels(model) -> dict:
    """Self-attention (attn1) patch keys of an openaimodel UNet grouped by resolution level.

    Level 0 is the latent (1/8 px), level 2 the 1/32-pixel level AlignNoise uses. Found by walking
    the UNet in execution order (Downsample after an input block, Upsample at the end of an output
    block), so it works for SD1.x, SD2.x, SDXL and pruned variants alike.

    Returns:
        ``{level: [(block_name, number, transformer_index), ...]}`` in execution order.
    """
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
                m.add_object_patch(f"diffusion_model.{path}.{j}.forward",
                                   functools.partial(checkpointed_call, layer.forward))
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


class _ComfyAttentionHost:
    """The stage-1 session's host: one CFGGuider evaluation at ``sigmas[0]`` per iteration, with the
    exact first model input the user's SamplerCustomAdvanced builds from this noise and latent
    (``noise_scaling`` with max-denoise at sigma_max, plus the noise_mask blend of 4-channel models)."""

    def __init__(self, model, positive, negative, cfg, samples, noise_mask, sigmas, z, seed):
        self.model, self.positive, self.negative, self.cfg = model, positive, negative, cfg
        self.samples, self.noise_mask, self.sigmas, self.z, self.seed = samples, noise_mask, sigmas, z, seed
        self.names = ["positive"] if float(cfg) == 1.0 else ["positive", "negative"]

    def attention_levels(self) -> dict:
        return attention_levels(self.model)

    def narrow(self, keys):  # ComfyUI UNets always have a known layout: nothing is discovered
        pass

    def run(self, recorder, keys, early_stop, checkpointing, body):
        state = {"stop": False}
        batch = self.samples.shape[0]

        def capture(q, k, v, extra_options):
            shape = extra_options.get("activations_shape")
            if shape is None or not recorder.is_target(shape[-2:]):
                # e.g. an area-restricted cond: no explicit probabilities, differentiable backend
                return comfy_attention.attention_pytorch(q, k, v, extra_options["n_heads"])
            out, probs = explicit_attention(q, k, v, extra_options["n_heads"])
            blk = extra_options["block"]
            if recorder.record((blk[0], blk[1], extra_options.get("block_index", 0)), probs) and state["stop"]:
                raise EarlyStop()
            return out

        m = self.model.clone()
        for key in keys:
            m.set_model_attn1_replace(capture, key[0], key[1], key[2])
        set_differentiable_attention(m)
        if checkpointing:
            _checkpoint_patches(m, keys, early_stop)
        out: dict = {}

        def fn(ctx: SamplerContext):
            ms = ctx.base_model.model_sampling
            max_denoise = comfy.samplers.Sampler().max_denoise(ctx.guider, ctx.sigmas)
            recorder.expected_rows = batch * sum(len(ctx.conds.get(n) or []) for n in self.names)
            with gradient_session(ctx.base_model):
                sigma = ctx.sigmas[:1].detach().clone().expand(batch)
                lat = ctx.latent_image.detach().clone()
                dmask = None if ctx.denoise_mask is None else ctx.denoise_mask.detach().clone()

                def forward(z_hat):
                    check_interrupt()
                    x = ms.noise_scaling(sigma, z_hat, lat, max_denoise)
                    if dmask is not None:  # KSamplerX0Inpaint's blend at the first step, as sampling does
                        dm = dmask
                        if "denoise_mask_function" in ctx.model_options:
                            dm = ctx.model_options["denoise_mask_function"](
                                sigma, dm, extra_options={"model": ctx.guider, "sigmas": ctx.sigmas})
                        x = x * dm + ctx.base_model.scale_latent_inpaint(
                            x=x, sigma=sigma, noise=z_hat, latent_image=lat) * (1.0 - dm)
                    state["stop"] = early_stop
                    try:
                        ctx.calc_cond_batch(self.names, x, sigma)
                    finally:
                        state["stop"] = False

                out["result"] = body(forward)
            return ctx.latent_image

        try:
            run_sampler(m, self.positive, self.negative, self.cfg, self.samples, self.sigmas, fn, noise=self.z,
                        denoise_mask=self.noise_mask, seed=self.seed)
        finally:
            release_model(m)
        return out["result"]


def _outpaint_mask(latent: dict, mask):
    samples = latent["samples"]
    if mask is None:
        mask = latent.get("noise_mask")
        if mask is None:
            raise ValueError(
                "AttentionBalanceNoiseOptimize needs to know which region is outpainted: connect the 'mask' input "
                "(1 = outpainted, e.g. from OutpaintPad) or give a latent with a noise_mask.")
    m = validation.mask_bhw(mask, batch=samples.shape[0], what="mask")
    full = ((m >= 0.5).reshape(m.shape[0], -1).all(1)).tolist()
    if any(full):
        raise ValueError(
            "the outpaint mask covers the whole image (all ones) for item(s) "
            f"{[i for i, f in enumerate(full) if f]}: there is no source region for the outpainted area to attend "
            "to. Use a mask with a kept (0) region, e.g. from OutpaintPad.")
    return m


def attention_balance(model, positive, negative, latent: dict, sigmas: torch.Tensor, noise_seed: int,
                      mask=None, cfg: float = 1.0, iterations: int = 10, lr: float = 0.01,
                      loss_threshold: float = 0.55, tau: float = 0.15, smooth: bool = True,
                      early_stop: bool = True, gradient_checkpointing: bool = False) -> BalanceRun:
    """AlignNoise stage 1 inside ComfyUI: optimise ``RandomNoise(noise_seed)`` for this latent.

    A clone with attn1 replace patches on the target-level blocks only (explicit float32 softmax,
    recorded), a differentiable attention backend elsewhere (sage attention has no backward), a
    custom Sampler run through ``CFGGuider.sample`` for the plumbing, the gradient session inside,
    the forward stopped after the last target-level block, and the clone released afterwards.
    ``gradient_checkpointing`` recomputes the non-target layers in the backward pass.
    """
    info = model_info(model, "AttentionBalanceNoiseOptimize")
    samples = validation.require_latent(latent, "the 'latent_image' LATENT")
    if getattr(samples, "is_nested", False) or samples.ndim != 4:
        raise ValueError(f"AttentionBalanceNoiseOptimize needs an image LATENT [B,4,h,w], got {tuple(samples.shape)}")
    if sigmas is None or len(sigmas) < 1 or float(sigmas[0]) <= 0:
        raise ValueError("the sigmas are empty or start at 0: connect the SIGMAS of the sampler that will use this noise")
    validation.require_finite(sigmas, "the 'sigmas'")
    z = random_noise(latent, noise_seed)
    if iterations <= 0:
        res = balance.optimize_noise(lambda zh: None, z, torch.ones(1, 1, 1), iterations=0)
        return BalanceRun(z, res, -1, [], info.family, ["iterations = 0: the noise is RandomNoise(noise_seed)"])
    m_in = _outpaint_mask(latent, mask)
    if not bool((m_in >= 0.5).any()):
        res = balance.optimize_noise(lambda zh: None, z, m_in, iterations=iterations)
        return BalanceRun(z, res, -1, [], info.family, ["empty mask: nothing is outpainted, noise not optimised"])
    host = _ComfyAttentionHost(model, positive, negative, cfg, samples, latent.get("noise_mask"), sigmas, z,
                               noise_seed)
    progress = Progress(iterations)
    session = attention_balance_session(
        host, z.to(model.load_device), m_in.to(model.load_device), early_stop=early_stop,
        gradient_checkpointing=gradient_checkpointing, iterations=iterations, lr=lr, loss_threshold=loss_threshold,
        tau=tau, smooth=smooth, final_eval=True, callback=lambda k, it: progress.update(1))
    res = session.result
    res.noise = res.noise.detach().to("cpu", torch.float32).clone()
    return BalanceRun(res.noise, res, session.level, session.keys, info.family, session.notes)
