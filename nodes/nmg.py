"""NMGInvert + NMGGuidance: Noise Map Guidance real-image editing (see web/docs/NMG*.md)."""

from __future__ import annotations

from comfy_api.latest import io

from alignnoise_core import nmg
from alignnoise_core.comfy_host import nmg as nmg_host

NMGNoiseMaps = io.Custom("NMG_NOISE_MAPS")


class NMGInvert(io.ComfyNode):
    """DDIM inversion of an encoded photo into NMG noise maps (trajectory keyed by sigma)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NMGInvert",
            display_name="NMG Invert (DDIM inversion to noise maps)",
            category="alignnoise/editing",
            description="Deterministic DDIM inversion of a latent with the source prompt; outputs the noise maps for "
                        "NMGGuidance and the inverted latent to start sampling from.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="SD1.x / SD2.x / SDXL model (eps or v-prediction). Use the same model "
                                                "for NMGGuidance."),
                io.Conditioning.Input("positive", tooltip="The SOURCE prompt: a description of the photo as it is "
                                                          "(inverted without CFG, as the paper)."),
                io.Latent.Input("latent_image", tooltip="The encoded photo (VAEEncode output, no noise mask)."),
                io.Sigmas.Input("sigmas", tooltip="The schedule (e.g. BasicScheduler, 50 steps as the paper). Feed the "
                                                  "SAME sigmas to the SamplerCustomAdvanced that uses NMGGuidance."),
            ],
            outputs=[
                NMGNoiseMaps.Output("noise_maps", display_name="noise_maps",
                                    tooltip="The inversion trajectory (one latent per sigma). One inversion can feed "
                                            "any number of NMGGuidance edits."),
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The inverted (fully noised) latent: the start of the edit. Sample it with "
                                         "DisableNoise."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, sigmas) -> io.NodeOutput:
        maps, latent = nmg_host.nmg_invert(model, positive, latent_image, sigmas)
        return io.NodeOutput(maps, latent)



class NMGGuidance(io.ComfyNode):
    """GUIDER that edits a real image along its inversion trajectory with Noise Map Guidance."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NMGGuidance",
            display_name="NMG Guidance (noise map guided editing)",
            category="alignnoise/editing",
            description="Noise Map Guidance (Cho et al., ICLR 2024): a GUIDER that keeps the photo's layout by pulling "
                        "each step toward the inversion's noise maps while the prompt edits it.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model used for NMGInvert (other patches on it are kept). It must "
                                                "support gradients (not a compiled/quantised-only model)."),
                io.Conditioning.Input("positive", tooltip="The TARGET prompt (the edit). The source prompt "
                                                          "reconstructs the photo."),
                io.Conditioning.Input("negative", tooltip="Negative / null prompt: used for CFG and for the "
                                                          "unconditional prediction of the noise map guidance "
                                                          "(the paper: the empty prompt)."),
                NMGNoiseMaps.Input("noise_maps", tooltip="Output of NMGInvert for the photo being edited."),
                io.Float.Input("cfg", default=nmg.DEFAULT_TEXT_SCALE, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Text guidance scale s_T (paper 10)."),
                io.Float.Input("grad_scale", default=nmg.DEFAULT_GRAD_SCALE, min=0.0, max=1e6, step=100.0,
                               tooltip="Energy gradient scale s_g (paper 5000 for editing, 1e4 for pure "
                                       "reconstruction; tuned for 50 steps). Normalised so it means the same at any "
                                       "image size. 0 = no noise map guidance."),
                io.Float.Input("noise_map_scale", default=nmg.DEFAULT_NOISE_MAP_SCALE, min=0.0, max=1000.0, step=0.5,
                               tooltip="Noise map guidance scale s_m (paper 10). The correction is s_m * s_g."),
                io.Combo.Input("loss", options=list(nmg.LOSSES), default="l1",
                               tooltip="Energy between the predicted next latent and the stored noise map: l1 "
                                       "(paper), l2, or smooth_l1 (beta 1e-4)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps before noise map guidance starts (0 = from the first "
                                       "step). Steps outside the window are plain CFG DDIM steps."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps after which guidance stops (1 = to the last step)."),
            ],
            outputs=[
                io.Guider.Output("guider", display_name="guider",
                                 tooltip="For SamplerCustomAdvanced with DisableNoise, KSamplerSelect euler or ddim, "
                                         "the same sigmas as NMGInvert and NMGInvert's latent."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, noise_maps, cfg=nmg.DEFAULT_TEXT_SCALE,
                grad_scale=nmg.DEFAULT_GRAD_SCALE, noise_map_scale=nmg.DEFAULT_NOISE_MAP_SCALE, loss="l1",
                start_percent=0.0, end_percent=1.0) -> io.NodeOutput:
        guider = nmg_host.nmg_guider(model, positive, negative, noise_maps, cfg=cfg, grad_scale=grad_scale,
                                     noise_map_scale=noise_map_scale, loss=loss, start=start_percent,
                                     end=end_percent)
        return io.NodeOutput(guider)



NODES = [NMGInvert, NMGGuidance]
