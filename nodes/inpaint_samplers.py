"""Training-free inpainting samplers (RePaint, DDNM, DiffPIR, ΠGDM, MCG): each node outputs a SAMPLER
for SamplerCustomAdvanced that inpaints/outpaints the LATENT's noise_mask with any model."""

from __future__ import annotations

from comfy_api.latest import io

from alignnoise_core.comfy_host import inpaint_samplers as glue
from alignnoise_core.inpaint import DEFAULTS

_CATEGORY = "alignnoise/inpaint"
_USE = (" Connect it to SamplerCustomAdvanced with a LATENT that has a noise_mask (SetLatentNoiseMask, "
        "VAEEncodeForInpaint, or InpaintModelConditioning with noise_mask on). Works with any model (eps, "
        "v-prediction, flow), 4- or 9-channel, any scheduler; the known region is kept exactly and ComfyUI's "
        "built-in fixed-noise inpainting is replaced, not added. Fresh noise follows the NOISE's seed.")


def _schema(node_id: str, display_name: str, description: str, inputs: list) -> io.Schema:
    return io.Schema(node_id=node_id, display_name=display_name, category=_CATEGORY, description=description + _USE,
                     is_experimental=True, inputs=inputs,
                     outputs=[io.Sampler.Output(tooltip="For SamplerCustomAdvanced.")])


def _eta(method: str, tooltip: str) -> io.Float.Input:
    return io.Float.Input("eta", default=DEFAULTS[method]["eta"], min=0.0, max=1.0, step=0.01, tooltip=tooltip)


class RePaintSampler(io.ComfyNode):
    """RePaint: fresh-noise injection of the known region and resampling (jump back, denoise again)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULTS["repaint"]
        return _schema(
            "RePaintSampler", "RePaint Sampler (inpaint, resampling)",
            "RePaint (Lugmayr et al. 2022): before every step the known region is re-noised with fresh "
            "noise; every jump_length steps the sample is noised back up and denoised again "
            "(jump_n_sample visits) so the generated region can agree with the known one. 'adaptive' "
            "resamples only while a training-free consistency score improves (StrDiffusion-style).",
            [
                io.Int.Input("jump_length", default=d["jump_length"], min=1, max=250,
                             tooltip="RePaint's j: how many steps each resampling jumps back up (paper 10 at 250 "
                                     "steps). SIGMAS needs more steps than this."),
                io.Int.Input("jump_n_sample", default=d["jump_n_sample"], min=1, max=20,
                             tooltip="RePaint's r: how often each jump point is visited; 1 = no resampling. Cost grows "
                                     "about r-fold (paper 10, default 3)."),
                io.Combo.Input("schedule", options=["fixed", "adaptive"], default=d["schedule"],
                               tooltip="fixed: RePaint's jump walk. adaptive: in the early phase, resample every few "
                                       "steps while the known-region residual of the x0 prediction improves "
                                       "(u_min/u_max rule of StrDiffusion; its trained discriminator is replaced by "
                                       "this free score). The count is logged and shown on the sampler node."),
                _eta("repaint", "DDIM eta of each descending step: 1 = the paper's DDPM ancestral step, 0 = "
                                "deterministic DDIM."),
                io.Int.Input("adaptive_u_max", default=d["adaptive_u_max"], min=1, max=25,
                             tooltip="adaptive only: at most u_max - 1 resamplings per trigger (StrDiffusion 6)."),
                io.Int.Input("adaptive_u_min", default=d["adaptive_u_min"], min=1, max=25,
                             tooltip="adaptive only: the first u_min - 1 candidates are averaged, later ones kept "
                                     "only if the score improves (StrDiffusion 3)."),
                io.Sampler.Input("sampler", optional=True,
                                 tooltip="Optional: run each descending step with this SAMPLER (KSamplerSelect) "
                                         "instead of the DDPM step. One-step samplers (euler, euler_ancestral, ddpm, "
                                         "heun, dpmpp_2s_ancestral, ...) work as themselves; multistep ones "
                                         "(dpmpp_2m, deis, ...) restart every step and act first-order."),
            ],
        )

    @classmethod
    def execute(cls, jump_length, jump_n_sample, schedule, eta, adaptive_u_max, adaptive_u_min,
                sampler=None) -> io.NodeOutput:
        options = dict(DEFAULTS["repaint"], jump_length=jump_length, jump_n_sample=jump_n_sample, schedule=schedule,
                       eta=eta, adaptive_u_max=adaptive_u_max, adaptive_u_min=adaptive_u_min)
        return io.NodeOutput(glue.make_sampler("repaint", "RePaintSampler", base_sampler=sampler, **options))


class DDNMSampler(io.ComfyNode):
    """DDNM: null-space correction of the x0 prediction plus η-mixed fresh noise, optional time travel."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULTS["ddnm"]
        return _schema(
            "DDNMSampler", "DDNM Sampler (inpaint, null-space)",
            "DDNM (Wang et al. 2023): every step replaces the known region of the x0 prediction by the "
            "latent (the range-space/null-space split for a mask) and re-noises with a fraction eta of "
            "fresh noise; optional time travel re-noises from the last x0 prediction and repeats. One "
            "model evaluation per step.",
            [
                _eta("ddnm", "DDNM's eta: fraction of the noise at the next level that is fresh (the rest is the "
                             "model's own noise estimate). Paper 0.85."),
                io.Int.Input("travel_length", default=d["travel_length"], min=1, max=250,
                             tooltip="Time travel: how many steps to jump back (DDNM's l)."),
                io.Int.Input("travel_repeat", default=d["travel_repeat"], min=1, max=20,
                             tooltip="Time travel: how often each travel point is visited; 1 = off (DDNM's s; "
                                     "the paper's configs ship it off). Cost grows about this-fold."),
                io.Float.Input("sigma_y", default=d["sigma_y"], min=0.0, max=10.0, step=0.001,
                               tooltip="DDNM+: assumed noise of the known latent (latent units). 0 = exact DDNM "
                                       "(the known region of x0 is replaced); > 0 blends it in softly at low noise."),
            ],
        )

    @classmethod
    def execute(cls, eta, travel_length, travel_repeat, sigma_y) -> io.NodeOutput:
        options = dict(DEFAULTS["ddnm"], eta=eta, travel_length=travel_length, travel_repeat=travel_repeat,
                       sigma_y=sigma_y)
        return io.NodeOutput(glue.make_sampler("ddnm", "DDNMSampler", **options))


class DiffPIRSampler(io.ComfyNode):
    """DiffPIR: a closed-form proximal data step on the x0 prediction, then re-noising with ζ."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULTS["diffpir"]
        return _schema(
            "DiffPIRSampler", "DiffPIR Sampler (inpaint, proximal)",
            "DiffPIR (Zhu et al. 2023): every step pulls the x0 prediction towards the latent on the known "
            "region with a closed-form proximal step (weight from lambda and sigma_n against the noise "
            "level), then re-noises (zeta = fraction of fresh noise). The data step is skipped on the last "
            "step. One model evaluation per step.",
            [
                io.Float.Input("lam", default=d["lam"], min=0.001, max=1000.0, step=0.01,
                               tooltip="DiffPIR's lambda: strength of the prior against the data term (paper 1)."),
                io.Float.Input("sigma_n", default=d["sigma_n"], min=0.0, max=10.0, step=0.001,
                               tooltip="Assumed noise of the known latent, in latent units (re-tuned for latents; "
                                       "0 = hard paste of the known region into x0)."),
                io.Float.Input("zeta", default=d["zeta"], min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of fresh noise when re-noising: 1 = fully fresh (paper), 0 = "
                                       "deterministic (DDIM-like)."),
            ],
        )

    @classmethod
    def execute(cls, lam, sigma_n, zeta) -> io.NodeOutput:
        options = dict(DEFAULTS["diffpir"], lam=lam, sigma_n=sigma_n, zeta=zeta)
        return io.NodeOutput(glue.make_sampler("diffpir", "DiffPIRSampler", **options))


class PiGDMSampler(io.ComfyNode):
    """ΠGDM: pseudoinverse guidance, a vector-Jacobian product through the model per step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULTS["pigdm"]
        return _schema(
            "PiGDMSampler", "ΠGDM Sampler (inpaint, pseudoinverse guidance)",
            "ΠGDM (Song et al. 2023): every step adds the gradient of the known-region mismatch of the x0 "
            "prediction, back-propagated through the model (one forward + one backward per step, about "
            "2-3x a plain step; weights stay frozen and nothing is patched on the model).",
            [
                io.Float.Input("weight", default=d["weight"], min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the pseudoinverse guidance term (RED-diff's grad_term_weight, "
                                       "re-tuned for latents)."),
                _eta("pigdm", "DDIM eta of the step (0 = deterministic, as RED-diff's default)."),
            ],
        )

    @classmethod
    def execute(cls, weight, eta) -> io.NodeOutput:
        options = dict(DEFAULTS["pigdm"], weight=weight, eta=eta)
        return io.NodeOutput(glue.make_sampler("pigdm", "PiGDMSampler", **options))


class MCGSampler(io.ComfyNode):
    """MCG: manifold-constrained gradient step, then projection onto the noised known region."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULTS["mcg"]
        return _schema(
            "MCGSampler", "MCG Sampler (inpaint, manifold-constrained gradient)",
            "MCG (Chung et al. 2022): every step takes a DDPM/DDIM step, subtracts the gradient of the "
            "known-region error of the x0 prediction (back-propagated through the model: one forward + one "
            "backward per step) and projects the known region onto the noised latent.",
            [
                io.Float.Input("step", default=d["step"], min=0.0, max=100.0, step=0.01,
                               tooltip="Gradient step size (re-tuned for latents: the official step overshoots; 0 = "
                                       "plain replacement)."),
                _eta("mcg", "DDIM eta of the step (1 = DDPM ancestral)."),
            ],
        )

    @classmethod
    def execute(cls, step, eta) -> io.NodeOutput:
        options = dict(DEFAULTS["mcg"], step=step, eta=eta)
        return io.NodeOutput(glue.make_sampler("mcg", "MCGSampler", **options))


NODES = [RePaintSampler, DDNMSampler, DiffPIRSampler, PiGDMSampler, MCGSampler]
