"""AttentionBalanceNoiseOptimize: AlignNoise stage 1 (attention-balance initial-noise optimisation)."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from alignnoise_core.comfy_host import common, stage1
from alignnoise_core.attention import attention_preview
from alignnoise_core.balance import tokens_from_mask

log = logging.getLogger("alignnoise")


def _fmt(values) -> str:
    return " ".join(f"{v:.4f}" for v in values)


def _report(run: stage1.BalanceRun, threshold: float) -> str:
    r = run.result
    lines = []
    if r.grid is not None:
        level = f"1/{8 * 2 ** run.level} px" if run.level >= 0 else "?"
        lines.append(f"AlignNoise stage 1 on {run.family}: attention level {level}, {r.grid[0]}x{r.grid[1]} tokens, "
                     f"{len(run.keys)} self-attention layers")
    lines += run.notes
    for i, status in enumerate(r.status):
        lines.append(f"item {i}: {status}")
        if r.losses:
            lines.append(f"  loss per iteration: {_fmt(l[i] for l in r.losses)} (threshold {threshold})")
            lines.append(f"  AS_src {r.as_src_before[i]:.4f} -> {r.as_src_after[i]:.4f}, "
                         f"AS_out {r.as_out_before[i]:.4f} -> {r.as_out_after[i]:.4f}")
    lines.append(f"UNet passes: {r.forwards} forward(s) with grad, {r.backwards} backward(s)")
    return "\n".join(lines)


class AttentionBalanceNoiseOptimize(io.ComfyNode):
    """Optimise the sampler's initial noise so outpainted tokens attend to the source image
    (AlignNoise stage 1, "attention-balance" loss), returned as a NOISE for SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionBalanceNoiseOptimize",
            display_name="Attention Balance Noise Optimize (AlignNoise stage 1)",
            category="alignnoise/outpaint",
            description="Optimises RandomNoise(noise_seed) so the outpainted region attends to the source image "
                        "(AlignNoise stage 1); outputs a NOISE for SamplerCustomAdvanced.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="SD1.x / SD2.x / SDXL model, inpainting (9-channel) or plain. The same "
                                                "model the sampler will use (the paper: stable-diffusion-2-inpainting)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning of the sampler (with the inpaint concat "
                                                          "of InpaintModelConditioning for 9-channel models). The paper "
                                                          "uses the prompt ' ' (one space)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning; only evaluated when cfg is not 1."),
                io.Latent.Input("latent_image", tooltip="The latent the sampler will get (e.g. InpaintModelConditioning's "
                                                        "latent). Its noise_mask (4-channel inpainting) is honoured."),
                io.Sigmas.Input("sigmas", tooltip="The SIGMAS of the sampler that will use this noise. The loss is "
                                                  "evaluated at the first sigma with exactly the start state that "
                                                  "sampler builds (max-denoise scaling at sigma_max)."),
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the initial noise (same noise as RandomNoise with this seed); also "
                                     "given to the sampler for ancestral/SDE noise."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="1.0 = the paper (guidance 0): the loss uses the positive conditioning only. "
                                       "Other values average attention over positive and negative passes."),
                io.Int.Input("iterations", default=10, min=0, max=200,
                             tooltip="Maximum optimisation steps (paper 10). Each costs one partial UNet forward + "
                                     "backward. 0 returns RandomNoise(noise_seed) unchanged."),
                io.Float.Input("lr", default=0.01, min=0.0, max=1.0, step=0.001, round=0.0001,
                               tooltip="Adam learning rate for the noise mean and log-variance (paper 0.01)."),
                io.Float.Input("loss_threshold", default=0.55, min=0.0, max=100.0, step=0.01,
                               tooltip="Stop as soon as the loss is below this value, checked before each update "
                                       "(paper 0.55)."),
                io.Float.Input("tau", default=0.15, min=0.0, max=1.0, step=0.01,
                               tooltip="Hinge level: the loss adds max(0, tau - AS_out) so the outpaint region keeps "
                                       "some self-attention (paper 0.15)."),
                io.Boolean.Input("smooth", default=True,
                                 tooltip="Smooth each attention map with the reference 3x3 kernel before "
                                         "normalising (paper: on)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Outpainted region, 1 = outpainted (e.g. OutpaintPad's mask). Defaults to the "
                                      "latent's noise_mask. An all-ones mask is an error (no source to attend to)."),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip="Recompute UNet layers in the backward pass instead of storing their "
                                         "activations: much less memory for large images or SDXL, slower "
                                         "iterations. Same result."),
            ],
            outputs=[
                io.Noise.Output(display_name="noise",
                                tooltip="The optimised initial noise for SamplerCustomAdvanced (use the same latent "
                                        "and sigmas)."),
                io.Image.Output(display_name="attention_preview",
                                tooltip="Where the outpainted tokens attend, before | after optimisation (bright = "
                                        "more attention; white line = source border)."),
                io.String.Output(display_name="report",
                                 tooltip="Loss per iteration, AS_src/AS_out before and after, UNet pass counts."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, sigmas, noise_seed, cfg, iterations, lr,
                loss_threshold, tau, smooth, mask=None, gradient_checkpointing=False) -> io.NodeOutput:
        run = stage1.attention_balance(
            model, positive, negative, latent_image, sigmas, noise_seed, mask=mask, cfg=cfg, iterations=iterations,
            lr=lr, loss_threshold=loss_threshold, tau=tau, smooth=smooth,
            gradient_checkpointing=gradient_checkpointing)
        noise = common.TensorNoise(run.noise, noise_seed, source="AttentionBalanceNoiseOptimize")
        report = _report(run, loss_threshold)
        log.info("AttentionBalanceNoiseOptimize:\n%s", report)
        samples = latent_image["samples"]
        size = (samples.shape[-2] * 8, samples.shape[-1] * 8)
        r = run.result
        tm = None
        if r.grid is not None:
            m = mask if mask is not None else latent_image.get("noise_mask")
            tm = tokens_from_mask(m, samples.shape[-2:], r.grid)
            if tm.shape[0] == 1 and samples.shape[0] > 1:
                tm = tm.expand(samples.shape[0], -1)
        preview = attention_preview(r.maps_before, r.maps_after, tm, size).to(torch.float32)
        if r.maps_before is None and samples.shape[0] > 1:
            preview = preview.expand(samples.shape[0], -1, -1, -1).contiguous()
        shown = ui.PreviewImage(preview, cls=cls)
        ui_out = {**shown.as_dict(), "text": (report,)}
        return io.NodeOutput(noise, preview, report, ui=ui_out)



NODES = [AttentionBalanceNoiseOptimize]
