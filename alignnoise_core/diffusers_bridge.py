"""Drive the AlignNoise stage-1 optimiser on a diffusers ``UNet2DConditionModel``.

Used by the host-free tests (a real UNet architecture without ComfyUI) and by the standalone CLI
on a full ``StableDiffusionInpaintPipeline`` (:func:`optimize_pipeline_noise`).

Unlike the reference (which swaps *every* processor for an explicit softmax and leaves it installed
during sampling) this module:

- installs a recording processor only on the target-level self-attention (``attn1``) modules (the
  1/32-pixel level, found from the block layout; the recorder checks the token grid at runtime) and
  only for the duration of the optimisation; the other modules keep their own (SDPA) processor.
  UNets of unknown layout fall back to discovering the level from the token count in the first
  evaluation;
- stops the forward pass right after the last target-level module (the UNet output is unused);
- freezes the UNet (no weight gradients) and restores processors and ``requires_grad`` flags.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch

from .attention import AttentionRecorder, EarlyStop, checkpointed_call, explicit_attention
from .balance import BalanceResult
from .recipes import attention_balance_session

logger = logging.getLogger(__name__)


class _RecordingProcessor:
    """Self-attention processor: explicit float32 probabilities on the target grid, else delegate."""

    def __init__(self, bridge: "_Session", name: str, original):
        self.bridge, self.name, self.original = bridge, name, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        rec = self.bridge.recorder
        if (
            rec is None
            or encoder_hidden_states is not None
            or hidden_states.ndim != 3
            or hidden_states.shape[1] != rec.n_tokens
            or attention_mask is not None
            or attn.spatial_norm is not None
            or attn.group_norm is not None
        ):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if attn.norm_q is not None or attn.norm_k is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        out, probs = explicit_attention(q, k, v, attn.heads, attn.scale)
        done = rec.record(self.name, probs)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor
        if done and self.bridge.early_stop:
            raise EarlyStop()
        return out


def attention_levels(unet) -> dict:
    """Self-attention (attn1) module names of a ``UNet2DConditionModel`` grouped by level.

    Level 0 is the latent (1/8 px), level 2 the 1/32-pixel level AlignNoise uses. Down block ``i``
    runs at level ``i`` (its downsampler comes last), the mid block at the deepest level, up block
    ``i`` at level ``n_up - 1 - i`` (its upsampler comes last). Names are in execution order.

    Returns:
        ``{level: [module_name, ...]}``; empty if the UNet does not have this layout.
    """
    levels: dict = {}
    down = getattr(unet, "down_blocks", None)
    up = getattr(unet, "up_blocks", None)
    if down is None or up is None:
        return levels

    def add(prefix, block, level):
        for name, mod in block.named_modules():
            if name.endswith("attn1") and hasattr(mod, "processor"):
                levels.setdefault(level, []).append(f"{prefix}.{name}")

    for i, blk in enumerate(down):
        add(f"down_blocks.{i}", blk, i)
    if getattr(unet, "mid_block", None) is not None:
        add("mid_block", unet.mid_block, len(down) - 1)
    for i, blk in enumerate(up):
        add(f"up_blocks.{i}", blk, len(up) - 1 - i)
    return levels


class _Session:
    def __init__(self, unet, early_stop: bool):
        self.unet = unet
        self.early_stop = early_stop
        self.recorder: Optional[AttentionRecorder] = None
        self.originals: dict = {}

    def self_attention_modules(self):
        return [(n, m) for n, m in self.unet.named_modules() if n.endswith("attn1") and hasattr(m, "processor")]

    def install(self, names=None):
        for name, mod in self.self_attention_modules():
            if names is None or name in names:
                self.originals[name] = mod.processor
                mod.processor = _RecordingProcessor(self, name, mod.processor)

    def keep_only(self, names):
        for name, mod in self.self_attention_modules():
            if name not in names and name in self.originals:
                mod.processor = self.originals.pop(name)

    def restore(self):
        for name, mod in self.self_attention_modules():
            if name in self.originals:
                mod.processor = self.originals[name]
        self.originals.clear()


@contextlib.contextmanager
def _frozen(module: torch.nn.Module):
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)  # never compute gradients for model weights
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@contextlib.contextmanager
def _checkpointing(unet, target_names):
    """Activation checkpointing on every diffusers block that supports it (resnets, transformer
    blocks) except the transformers holding a target-level ``attn1`` (their processor records
    probabilities as a side effect, which a recomputation must not repeat). Flags restored after."""
    def func(module, *args, **kwargs):
        return checkpointed_call(module.__call__, *args, **kwargs)

    touched = []
    for name, mod in unet.named_modules():
        if mod is unet or not isinstance(getattr(mod, "gradient_checkpointing", None), bool):
            continue
        if type(mod).__name__ == "Transformer2DModel" and any(t.startswith(name + ".") for t in target_names):
            continue
        touched.append((mod, mod.gradient_checkpointing, mod.__dict__.get("_gradient_checkpointing_func")))
        mod._gradient_checkpointing_func = func
        mod.gradient_checkpointing = True
    try:
        yield len(touched)
    finally:
        for mod, flag, previous in touched:
            mod.gradient_checkpointing = flag
            if previous is None:
                del mod._gradient_checkpointing_func
            else:
                mod._gradient_checkpointing_func = previous


class _DiffusersAttentionHost:
    """The stage-1 session's host on a diffusers UNet: one call ``unet(cat[z_hat, concat], t)`` per
    iteration with recording processors on the target modules, the UNet frozen meanwhile."""

    def __init__(self, unet, timestep, encoder_hidden_states, concat, chunks):
        self.unet, self.timestep, self.ehs, self.concat, self.chunks = unet, timestep, encoder_hidden_states, concat, chunks
        self.session: Optional[_Session] = None
        self.recorder: Optional[AttentionRecorder] = None

    def attention_levels(self) -> dict:
        return attention_levels(self.unet)

    def narrow(self, keys):
        self.recorder.expected_rows = self.chunks * self.recorder.batch
        self.session.keep_only(set(keys))
        logger.debug("AlignNoise target level %s: %s", self.recorder.grid, keys)

    def run(self, recorder, keys, early_stop, checkpointing, body):
        unet = self.unet
        dtype = next(unet.parameters()).dtype
        device = next(unet.parameters()).device
        self.recorder = recorder
        self.session = session = _Session(unet, early_stop)
        if keys is not None:
            recorder.expected_rows = self.chunks * recorder.batch
        ehs = self.ehs.to(device=device, dtype=dtype)

        def forward(z_hat):
            x = z_hat.to(device=device, dtype=dtype)
            if self.concat is not None:
                x = torch.cat([x, self.concat.to(device=device, dtype=dtype)], dim=1)
            if self.chunks > 1:
                x = x.repeat(self.chunks, 1, 1, 1)
            session.recorder = recorder
            try:
                unet(x, self.timestep, encoder_hidden_states=ehs)
            finally:
                session.recorder = None

        checkpoint = _checkpointing(unet, keys) if checkpointing else contextlib.nullcontext()
        with _frozen(unet), checkpoint:
            session.install(set(keys) if keys is not None else None)
            try:
                return body(forward)
            finally:
                session.restore()


def optimize_unet_noise(
    unet,
    z: torch.Tensor,
    mask: torch.Tensor,
    timestep,
    encoder_hidden_states: torch.Tensor,
    concat: Optional[torch.Tensor] = None,
    early_stop: bool = True,
    downsamples: int = 2,
    gradient_checkpointing: bool = False,
    **optimizer_kwargs,
) -> BalanceResult:
    """Optimise initial noise with AlignNoise stage 1 on a diffusers UNet
    (:func:`alignnoise_core.recipes.attention_balance_session` with this module as its host).

    The UNet input is ``cat[z_hat, concat]`` (9-channel inpaint models: ``concat`` = [mask(1),
    masked-image latent(4)], as ``StableDiffusionInpaintPipeline`` builds it) at ``timestep``, with
    no input scaling (identity for PNDM/DDIM at the first step, as in the reference).

    Args:
        unet: ``UNet2DConditionModel`` (left unchanged afterwards).
        z: (B, 4, h, w) initial noise.
        mask: outpaint mask (1 = outpaint), (B|1, H, W) or (B|1, 1, H, W), any resolution.
        timestep: first timestep of the schedule (reference: ``scheduler.timesteps[0]``, 981 for
            PNDM with 50 steps).
        encoder_hidden_states: (chunks*B, L, D) text embeddings; chunks > 1 (e.g. CFG
            [uncond, cond]) averages attention over the chunks.
        concat: optional (B, C', h, w) extra input channels.
        early_stop: stop the forward pass after the last target-level block.
        downsamples: target level = this many stride-2 downsamples below the latent (2 = 1/32 px).
        gradient_checkpointing: recompute the non-target layers in the backward pass instead of
            keeping their activations (less memory, slower; same result). Needs a known block layout.
        **optimizer_kwargs: forwarded to :func:`alignnoise_core.balance.optimize_noise`
            (iterations, lr, loss_threshold, tau, smooth, adam_eps, final_eval, callback).

    Returns:
        :class:`alignnoise_core.balance.BalanceResult`.
    """
    b = z.shape[0]
    chunks = encoder_hidden_states.shape[0] // b
    if chunks * b != encoder_hidden_states.shape[0]:
        raise ValueError(
            f"encoder_hidden_states batch {encoder_hidden_states.shape[0]} is not a multiple of the noise batch {b}"
        )
    host = _DiffusersAttentionHost(unet, timestep, encoder_hidden_states, concat, chunks)
    session = attention_balance_session(host, z, mask, early_stop=early_stop, downsamples=downsamples,
                                        gradient_checkpointing=gradient_checkpointing, **optimizer_kwargs)
    return session.result


def first_timestep(scheduler, num_inference_steps: int):
    """``timesteps[0]`` after ``set_timesteps`` (981 for the SD2-inpainting PNDM with 50 steps).

    The scheduler's state is reset by ``set_timesteps`` here, like in the reference loop.
    """
    scheduler.set_timesteps(num_inference_steps)
    return scheduler.timesteps[0]


def optimize_pipeline_noise(
    pipe,
    latents: torch.Tensor,
    mask_latents: torch.Tensor,
    masked_image_latents: Optional[torch.Tensor],
    prompt_embeds: torch.Tensor,
    num_inference_steps: int = 50,
    **kwargs,
) -> BalanceResult:
    """Stage 1 on a ``StableDiffusionInpaintPipeline`` (reference ``fn_AAM``), for the CLI.

    Args:
        pipe: the pipeline (uses ``pipe.unet`` and ``pipe.scheduler``).
        latents: (B, 4, h, w) initial noise (``init_noise_sigma`` = 1 for PNDM/DDIM).
        mask_latents: (B, 1, h, w) latent mask from ``prepare_mask_latents`` (1 = outpaint).
        masked_image_latents: (B, 4, h, w) or None for a 4-channel UNet.
        prompt_embeds: (B, 77, D) conditional text embeddings (the reference runs without CFG).
        num_inference_steps: schedule length; the loss uses its first timestep.
        **kwargs: forwarded to :func:`optimize_unet_noise`.
    """
    t0 = first_timestep(pipe.scheduler, num_inference_steps)
    in_ch = pipe.unet.config.in_channels
    concat = None
    if in_ch == 9:
        if masked_image_latents is None:
            raise ValueError("a 9-channel inpainting UNet needs masked_image_latents")
        concat = torch.cat([mask_latents, masked_image_latents], dim=1)
    elif in_ch != 4:
        raise ValueError(f"unsupported UNet with {in_ch} input channels (expected 4 or 9)")
    return optimize_unet_noise(pipe.unet, latents, mask_latents, t0, prompt_embeds, concat=concat, **kwargs)
