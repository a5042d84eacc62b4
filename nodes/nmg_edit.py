"""NMGEdit: Noise Map Guidance editing the paper's way, with Prompt-to-Prompt or MasaCtrl (see web/docs/NMGEdit.md)."""

from __future__ import annotations

from comfy_api.latest import io

from alignnoise_core import attention_control as ac
from alignnoise_core import nmg
from alignnoise_core.comfy_host import nmg_edit as host

from .nmg import NMGNoiseMaps


class NMGEdit(io.ComfyNode):
    """Two-branch NMG edit: a guided source branch drives the edit branch through attention control."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NMGEdit",
            display_name="NMG Edit (Prompt-to-Prompt / MasaCtrl)",
            category="alignnoise/editing",
            description="Noise Map Guidance editing as in the paper: the source branch reconstructs the photo from "
                        "NMGInvert's noise maps and drives the target branch through Prompt-to-Prompt or MasaCtrl.",
            is_experimental=True,
            inputs=[
                io.Model.Input("model", tooltip="The model used for NMGInvert (SD1.x / SD2.x / SDXL, eps or "
                                                "v-prediction). Other patches on it are kept."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: encodes both prompts and maps your words to "
                                              "token positions with the model's own tokenizer."),
                io.Conditioning.Input("negative", tooltip="Null / negative prompt (the paper: empty): CFG and the "
                                                          "noise-map guidance's unconditional prediction."),
                NMGNoiseMaps.Input("noise_maps", tooltip="NMGInvert's output; one inversion serves any number of "
                                                         "NMGEdit nodes."),
                io.String.Input("source_prompt", multiline=True, default="",
                                tooltip="The SOURCE prompt: the same text NMGInvert's conditioning was encoded from."),
                io.String.Input("target_prompt", multiline=True, default="",
                                tooltip="The TARGET prompt. p2p_replace: the same words with some swapped; "
                                        "p2p_refine: words added or removed; masactrl: any prompt (pose, action)."),
                io.Combo.Input("method", options=list(host.METHODS), default="p2p_replace",
                               tooltip="Attention control of the edit branch: Prompt-to-Prompt word swap / "
                                       "refinement / re-weighting, MasaCtrl mutual self-attention, or none."),
                io.Float.Input("cross_replace_steps", default=ac.DEFAULT_CROSS_REPLACE_STEPS, min=0.0, max=1.0,
                               step=0.05, tooltip="P2P: fraction of the steps (from the first) in which the edit "
                                                  "branch's cross-attention maps come from the source (paper 0.8)."),
                io.Float.Input("self_replace_steps", default=ac.DEFAULT_SELF_REPLACE_STEPS, min=0.0, max=1.0,
                               step=0.05, tooltip="P2P: fraction of the steps with the source's self-attention in "
                                                  "the edit branch: 0.7 object or colour swap, 0.5 context change, "
                                                  "0.6 global style (paper notebooks)."),
                io.String.Input("blend_source_word", default="",
                                tooltip="P2P local blend: a word of the source prompt (e.g. the swapped object). "
                                        "With blend_target_word, the edit is confined to where these words attend. "
                                        "Empty = no local blend."),
                io.String.Input("blend_target_word", default="",
                                tooltip="P2P local blend: the corresponding word of the target prompt."),
                io.Float.Input("blend_threshold", default=ac.DEFAULT_BLEND_THRESHOLD, min=0.01, max=0.99, step=0.01,
                               tooltip="Local blend: keep the edit where the words' normalised attention exceeds "
                                       "this (paper 0.3). Lower = larger edited region."),
                io.String.Input("reweight_words", default="",
                                tooltip="P2P re-weighting: target-prompt words whose attention is scaled by "
                                        "reweight_scale (comma separated). Required for p2p_reweight; on top of "
                                        "replace/refine otherwise."),
                io.Float.Input("reweight_scale", default=2.0, min=-10.0, max=10.0, step=0.1,
                               tooltip="Scale of the re-weighted words' attention (paper: 2, 3 for styles; < 1 "
                                       "weakens a word)."),
                io.Int.Input("masactrl_step", default=ac.DEFAULT_MASACTRL_STEP, min=0, max=1000,
                             tooltip="MasaCtrl: first step with mutual self-attention (paper 4 of 50)."),
                io.Int.Input("masactrl_layer", default=ac.DEFAULT_MASACTRL_LAYER, min=0, max=1000,
                             tooltip="MasaCtrl: first transformer layer (execution order) with mutual "
                                     "self-attention (paper 10 of SD1's 16: the decoder's upper layers). SDXL "
                                     "has 70 layers; the report lists the count."),
                io.Float.Input("cfg", default=nmg.DEFAULT_TEXT_SCALE, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Text guidance scale s_T of Step B (paper 10)."),
                io.Float.Input("grad_scale", default=nmg.DEFAULT_GRAD_SCALE, min=0.0, max=1e6, step=100.0,
                               tooltip="Noise-map energy gradient scale s_g (paper 5000), normalised to mean the "
                                       "same at any image size. 0 = no noise map guidance."),
                io.Float.Input("noise_map_scale", default=nmg.DEFAULT_NOISE_MAP_SCALE, min=0.0, max=1000.0,
                               step=0.5, tooltip="Noise map guidance scale s_m (paper 10)."),
                io.Combo.Input("loss", options=list(nmg.LOSSES), default="l1",
                               tooltip="Noise-map energy: l1 (paper), l2 or smooth_l1."),
                io.Boolean.Input("guide_edit_branch", default=False,
                                 tooltip="Off (paper): only the source branch gets noise map guidance. On: the edit "
                                         "branch too (stays closer to the photo; identical prompts then "
                                         "reproduce the reconstruction exactly; costs one more backward)."),
            ],
            outputs=[
                io.Latent.Output("edited", display_name="edited", tooltip="The edit branch's result."),
                io.Latent.Output("reconstruction", display_name="reconstruction",
                                 tooltip="The source branch's result: NMG's reconstruction of the photo."),
                io.Image.Output("attention_maps", display_name="attention_maps",
                                tooltip="Cross-attention map of each chosen word (words that differ between the "
                                        "prompts, blend and re-weighted words) and the local-blend mask; the "
                                        "report lists the frames."),
                io.String.Output("report", display_name="report",
                                 tooltip="Word -> token mapping, schedules, layer count and stored memory."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, negative, noise_maps, source_prompt, target_prompt, method="p2p_replace",
                cross_replace_steps=ac.DEFAULT_CROSS_REPLACE_STEPS, self_replace_steps=ac.DEFAULT_SELF_REPLACE_STEPS,
                blend_source_word="", blend_target_word="", blend_threshold=ac.DEFAULT_BLEND_THRESHOLD,
                reweight_words="", reweight_scale=2.0, masactrl_step=ac.DEFAULT_MASACTRL_STEP,
                masactrl_layer=ac.DEFAULT_MASACTRL_LAYER, cfg=nmg.DEFAULT_TEXT_SCALE,
                grad_scale=nmg.DEFAULT_GRAD_SCALE, noise_map_scale=nmg.DEFAULT_NOISE_MAP_SCALE, loss="l1",
                guide_edit_branch=False) -> io.NodeOutput:
        settings = host.EditSettings(method, cross_replace_steps, self_replace_steps, blend_source_word,
                                     blend_target_word, blend_threshold, reweight_words, reweight_scale,
                                     masactrl_step, masactrl_layer)
        run = host.nmg_edit(model, clip, negative, noise_maps, source_prompt, target_prompt, settings, cfg=cfg,
                            grad_scale=grad_scale, noise_map_scale=noise_map_scale, loss=loss,
                            guide_edit_branch=guide_edit_branch)
        return io.NodeOutput(run.edited, run.reconstruction, run.preview, run.report)

    edit = execute


NODES = [NMGEdit]
