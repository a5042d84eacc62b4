"""FrequencyNoiseRefine: AlignNoise stage 2 (masked FreeInit) as a NOISE for a second sampler pass."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from alignnoise_core import frequency
from alignnoise_core.comfy_host import stage2

log = logging.getLogger("alignnoise")


class FrequencyNoiseRefine(io.ComfyNode):
    """Re-noise a first-pass result with its initial noise, keep its low frequencies, give the
    outpainted region fresh high frequencies, and hand the second sampler that starting point."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrequencyNoiseRefine",
            display_name="Frequency Noise Refine (AlignNoise stage 2)",
            category="alignnoise/outpaint",
            description="Re-noises the first pass and mixes in fresh high frequencies in the outpainted "
                        "region; the NOISE makes a second SamplerCustomAdvanced start exactly there.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model of the second pass: its schedule gives the re-noising "
                                                "sigma (sigma_max) and its latent format the latent scaling."),
                io.Latent.Input("samples", tooltip="The first pass result (SamplerCustomAdvanced 'output' or "
                                                   "'denoised_output')."),
                io.Noise.Input("noise", tooltip="The NOISE that drove the first pass (e.g. from "
                                                "AttentionBalanceNoiseOptimize): re-noising reuses it, as the paper does."),
                io.Combo.Input("filter", options=list(frequency.FILTER_TYPES), default="butterworth",
                               tooltip="Low-pass filter separating kept low frequencies from replaced high ones. "
                                       "butterworth (paper default) is smooth; ideal/box are hard cut-offs."),
                io.Float.Input("d_s", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="Spatial stop frequency as a fraction of Nyquist (paper 0.25). Higher keeps "
                                       "more of the first pass; 0 replaces everything with fresh noise."),
                io.Int.Input("order", default=4, min=1, max=16,
                             tooltip="Butterworth order n (paper 4): higher is a sharper cut-off. Butterworth only."),
                io.Float.Input("d_t", default=0.25, min=0.0, max=1.0, step=0.01,
                               tooltip="Temporal stop frequency for 5-D video latents (FreeInit's d_t, 3-D FFT over "
                                       "frames, height, width). Ignored for images."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the fresh high-frequency noise (own generator; also given to the "
                                     "second sampler for ancestral/SDE noise)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Outpainted region (1 = outpainted). Only there are high frequencies replaced; "
                                      "the source keeps the re-noised first pass exactly. Defaults to the latent's "
                                      "noise_mask; with neither, the whole latent is refined (plain FreeInit)."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional: the second pass's SIGMAS. Re-noises to its first sigma instead of "
                                        "the model's sigma_max (connect it if your schedule does not start at "
                                        "sigma_max, e.g. ddim_uniform or denoise < 1)."),
            ],
            outputs=[
                io.Noise.Output(display_name="noise",
                                tooltip="Feed to the second SamplerCustomAdvanced, with a latent of the same size "
                                        "(e.g. the first pass output) and sigmas starting where this node re-noised."),
            ],
        )

    @classmethod
    def execute(cls, model, samples, noise, filter, d_s, order, d_t, seed, mask=None, sigmas=None) -> io.NodeOutput:
        refined, info = stage2.frequency_refine(
            model, samples, noise, mask=mask, filter_type=filter, d_s=d_s, order=order, d_t=d_t, seed=seed,
            sigmas=sigmas,
        )
        log.info("FrequencyNoiseRefine: re-noised to sigma %.4f (%s, max_denoise=%s), %s", info["sigma"],
                 info["parameterization"], info["max_denoise"],
                 "outpainted region refined" if info["masked"] else "no mask: whole latent refined")
        return io.NodeOutput(refined)



NODES = [FrequencyNoiseRefine]
