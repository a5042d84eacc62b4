"""The inpainting SAMPLERs (RePaintSampler, DDNMSampler, DiffPIRSampler, PiGDMSampler, MCGSampler)
inside real ComfyUI (COMFYUI_PATH): SamplerCustomAdvanced + CFGGuider on tiny SD1.5 models built from
ComfyUI's classes (4- and 9-channel), a flow model (core's ModelSamplingSD3 patch) and the exact
Gaussian model, under torch.inference_mode() as the executor runs nodes."""

from __future__ import annotations

import inspect

import pytest
import torch

import comfy_harness as ch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NODES = ["RePaintSampler", "DDNMSampler", "DiffPIRSampler", "PiGDMSampler", "MCGSampler"]
METHOD = {"RePaintSampler": "repaint", "DDNMSampler": "ddnm", "DiffPIRSampler": "diffpir", "PiGDMSampler": "pigdm",
          "MCGSampler": "mcg"}
STEPS = 6
SHORT = {"jump_length": 2, "travel_length": 2}  # jumps that fit a 6-step SIGMAS


def make_sampler(node_id: str, **overrides):
    """The node's SAMPLER at its defaults (short jumps for the tiny SIGMAS), through ``execute``."""
    from alignnoise_core.inpaint import DEFAULTS

    params = inspect.signature(ch.node_class(node_id).execute).parameters
    values = {**DEFAULTS[METHOD[node_id]], **SHORT, **overrides}
    return ch.node_class(node_id).execute(**{k: v for k, v in values.items() if k in params}).result[0]


def sample(model, sampler, latent, sigmas, seed=3, cfg=2.0, batch_conds=1):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(ch.fake_conditioning(batch_conds), ch.fake_conditioning(batch_conds, seed=1))
    guider.set_cfg(cfg)
    noise = ch.node_class("RandomNoise").execute(seed).result[0]
    return ch.node_class("SamplerCustomAdvanced").execute(noise, guider, sampler, sigmas, latent).result[0]["samples"]


class Recorder:
    """A clone whose UNet calls are recorded (inputs and conds), through ComfyUI's wrapper hook."""

    def __init__(self, model):
        self.model = model.clone()
        self.inputs, self.concat = inputs, concat = [], []

        def wrap(apply_model, args):  # a plain closure: ModelPatcher.clone deep-copies model_options
            inputs.append(args["input"].detach().clone())
            if "c_concat" in args["c"]:
                concat.append(args["c"]["c_concat"].detach().clone())
            return apply_model(args["input"], args["timestep"], **args["c"])

        self.model.set_model_unet_function_wrapper(wrap)


def hole_mask(b, h, w):
    m = torch.zeros(b, 1, h, w)
    m[:, :, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
    return m


def roundtrip(model, samples):
    """What an exact paste of the latent gives after ComfyUI's process_latent_in/out."""
    base = model.model
    return base.process_latent_out(base.process_latent_in(samples))


@pytest.fixture(scope="module")
def sd15():
    ch.require_comfyui()
    from alignnoise_core.comfy_host import common as cb

    model = ch.tiny_model(4)
    with torch.inference_mode():
        sigmas = cb.calculate_sigmas(model, "normal", STEPS)
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(2, 4, 16, 16, generator=g), "noise_mask": hole_mask(2, 16, 16)}
    return model, sigmas, latent


def _module_state(model):
    return {n: (sorted(k for k in vars(m) if k != "comfy_patched_weights"), list(getattr(m, "weight_function", [])),
                list(getattr(m, "bias_function", [])), [p.requires_grad for p in m.parameters(recurse=False)])
            for n, m in model.model.named_modules()}


@pytest.mark.parametrize("node_id", NODES)
def test_node_batch2_cfg_known_exact_deterministic_model_untouched(comfy_env, sd15, inference_mode, node_id):
    import comfy.samplers

    model, sigmas, latent = sd15
    euler = comfy.samplers.sampler_object("euler")
    plain = {"samples": latent["samples"]}
    before = sample(model, euler, plain, sigmas)
    modules, options = _module_state(model), repr(model.model_options)

    out = sample(model, make_sampler(node_id), latent, sigmas, seed=3)
    assert out.shape == latent["samples"].shape and torch.isfinite(out).all()
    keep = (latent["noise_mask"] == 0).expand_as(out)
    assert torch.equal(out[keep], roundtrip(model, latent["samples"])[keep])  # the latent, pasted exactly
    assert (out - latent["samples"])[~keep].abs().mean() > 0.1
    assert not torch.equal(out[0][~keep[0]], out[1][~keep[1]])  # batch items draw their own noise
    assert torch.equal(out, sample(model, make_sampler(node_id), latent, sigmas, seed=3))
    assert not torch.equal(out, sample(model, make_sampler(node_id), latent, sigmas, seed=4))

    assert _module_state(model) == modules and repr(model.model_options) == options
    assert torch.equal(before, sample(model, euler, plain, sigmas))


def test_bypasses_comfyui_fixed_noise_replacement(comfy_env, sd15, inference_mode):
    """RePaint skips its injection on the first step (as the reference): the first UNet input is
    KSAMPLER's start latent + sqrt(1+σ²)·noise everywhere. ComfyUI's KSamplerX0Inpaint would have
    replaced the known region by latent + σ·noise; with r = 1 the model is called once per step."""
    model, sigmas, latent = sd15
    rec = Recorder(model)
    sample(rec.model, make_sampler("RePaintSampler", jump_n_sample=1), latent, sigmas, seed=5, cfg=1.0)
    assert len(rec.inputs) == STEPS
    noise = ch.node_class("RandomNoise").execute(5).result[0].generate_noise(latent)
    lat = model.model.process_latent_in(latent["samples"])
    s0 = float(sigmas[0])
    assert torch.allclose(rec.inputs[0], lat + noise * (1 + s0 ** 2) ** 0.5, atol=1e-4)


def test_inpainting_model_keeps_its_concat_conditioning(comfy_env, inference_mode):
    """9-channel UNet: process_conds builds c_concat = [mask, masked latent] from the noise_mask for
    every call, also on the differentiable path (ΠGDM)."""
    from alignnoise_core.comfy_host import common as cb

    model = ch.tiny_model(9)
    sigmas = cb.calculate_sigmas(model, "normal", 4)
    latent = {"samples": torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)),
              "noise_mask": hole_mask(1, 128, 128)}  # pixel-size mask, batch 1: ComfyUI resizes/broadcasts
    for node_id in ("DDNMSampler", "PiGDMSampler"):
        rec = Recorder(model)
        out = sample(rec.model, make_sampler(node_id), latent, sigmas)
        assert rec.concat and all(c.shape == (4, 5, 16, 16) for c in rec.concat)  # cond+uncond batch 2 each
        lat_mask = hole_mask(1, 16, 16)[0, 0]
        assert torch.equal(rec.concat[0][0, 0], lat_mask)
        keep = (lat_mask == 0).expand_as(out)
        assert torch.equal(out[keep], roundtrip(model, latent["samples"])[keep])


def test_flow_model_runs_in_flow_space(comfy_env, inference_mode):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    from alignnoise_core.comfy_host import common as cb
    from alignnoise_core.comfy_host import inpaint_samplers as glue

    (model,) = ModelSamplingSD3().patch(ch.tiny_model(4), shift=3.0)
    ms = model.get_model_object("model_sampling")
    assert glue.sampling_space(ms, "SD15", "test") == "flow"
    sigmas = cb.calculate_sigmas(model, "simple", STEPS)
    latent = {"samples": torch.randn(2, 4, 16, 16), "noise_mask": hole_mask(2, 16, 16)}
    for node_id in NODES:
        rec = Recorder(model)
        out = sample(rec.model, make_sampler(node_id), latent, sigmas)
        keep = (latent["noise_mask"] == 0).expand_as(out)
        assert torch.isfinite(out).all() and torch.equal(out[keep], roundtrip(model, latent["samples"])[keep])
    noise = ch.node_class("RandomNoise").execute(3).result[0].generate_noise(latent)
    assert torch.allclose(rec.inputs[0][:2], noise, atol=1e-6)  # σ0 = 1: the start is pure noise (CONST)


def test_unknown_parameterisations_are_refused(comfy_env, sd15, inference_mode):
    import comfy.model_sampling as cms

    model, sigmas, latent = sd15

    class X0Sampling(cms.ModelSamplingDiscrete, cms.X0):
        pass

    class ScaledFlow(cms.ModelSamplingDiscreteFlow, cms.CONST):  # a CONST whose noise has a scale factor
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            return 2.0 * sigma * noise + (1.0 - sigma) * latent_image

    for cls, what in ((X0Sampling, "X0"), (ScaledFlow, "ScaledFlow")):
        m = model.clone()
        m.add_object_patch("model_sampling", cls(m.model.model_config))
        rec = Recorder(m)
        with pytest.raises(ValueError, match=f"'SD15' model samples with .*{what}"):
            sample(rec.model, make_sampler("DDNMSampler"), latent, sigmas)
        assert not rec.inputs


def _bad(model, sampler, latent, sigmas, match):
    rec = Recorder(model)
    with pytest.raises(ValueError, match=match):
        sample(rec.model, sampler, latent, sigmas)
    assert not rec.inputs, "the model ran before the input was refused"


@pytest.mark.parametrize("node_id", NODES)
def test_bad_inputs_refused_before_any_model_call(comfy_env, sd15, inference_mode, node_id):
    model, sigmas, latent = sd15
    s = make_sampler(node_id)
    _bad(model, s, {"samples": latent["samples"]}, sigmas, f"{node_id}: the LATENT has no noise_mask.*SetLatentNoiseMask")
    _bad(model, s, {**latent, "noise_mask": torch.ones(1, 16, 16)}, sigmas, "all ones")
    _bad(model, s, {**latent, "noise_mask": torch.zeros(1, 16, 16)}, sigmas, "all zeros")
    nan = latent["samples"].clone()
    nan[0, 0, 0, 0] = float("nan")
    _bad(model, s, {**latent, "samples": nan}, sigmas, "NaN")


def test_sigmas_too_short_and_unusable_base_samplers(comfy_env, sd15, inference_mode):
    import comfy.samplers

    model, sigmas, latent = sd15
    _bad(model, make_sampler("RePaintSampler", jump_length=6), latent, sigmas, "RePaintSampler: SIGMAS has 6 steps.*jump_length 6")
    _bad(model, make_sampler("DDNMSampler", travel_length=8), latent, sigmas, "DDNMSampler: SIGMAS has 6 steps")
    _bad(model, make_sampler("RePaintSampler", schedule="adaptive"), latent, sigmas[:4], "adaptive")
    with pytest.raises(ValueError, match="dpm_fast / dpm_adaptive"):
        make_sampler("RePaintSampler", sampler=comfy.samplers.sampler_object("dpm_adaptive"))


def test_repaint_base_sampler_step(comfy_env, sd15, inference_mode):
    """With r = 1 RePaint is its base sampler: euler's step is DDIM(η=0) in VE space, so sampler=euler
    equals the built-in step at eta 0. An ancestral base sampler costs no extra model call (its first
    call is served from the step's x0); heun costs a second one per descent except onto σ = 0."""
    import comfy.samplers

    model, sigmas, latent = sd15
    pick = comfy.samplers.sampler_object
    ddim = sample(model, make_sampler("RePaintSampler", jump_n_sample=1, eta=0.0), latent, sigmas)
    euler = sample(model, make_sampler("RePaintSampler", jump_n_sample=1, sampler=pick("euler")), latent, sigmas)
    assert torch.allclose(ddim, euler, atol=1e-4, rtol=1e-4)
    from alignnoise_core.inpaint import expected_nfe

    descents = expected_nfe("repaint", STEPS, jump_length=2, jump_n_sample=3)
    assert descents == STEPS + 2 * 2 * 2  # jump points 0 and 2, visited twice more, 2 steps back each
    for name, nfe in (("euler_ancestral", descents), ("heun", 2 * descents - 1)):  # heun: 1 call onto σ = 0
        s = make_sampler("RePaintSampler", jump_n_sample=3, sampler=pick(name))
        sample(model, s, latent, sigmas)
        assert s.last_stats.model_evaluations == nfe, name


def test_repaint_adaptive_reports_resamplings(comfy_env, inference_mode, caplog):
    from alignnoise_core.comfy_host import common as cb

    model = ch.tiny_model(4)
    sigmas = cb.calculate_sigmas(model, "normal", 20)
    latent = {"samples": torch.randn(1, 4, 16, 16), "noise_mask": hole_mask(1, 16, 16)}
    s = make_sampler("RePaintSampler", schedule="adaptive")
    with caplog.at_level("INFO", logger="alignnoise"):
        sample(model, s, latent, sigmas)
    extra = s.last_stats.extra
    assert extra["resamplings"] >= 1 and s.last_stats.model_evaluations == 20 + extra["resamplings"] * 5
    assert any("RePaintSampler" in r.getMessage() and "resamplings" in r.getMessage() for r in caplog.records)


def test_differential_diffusion_mask_function_is_used_per_step(comfy_env, sd15, inference_mode):
    """The model's denoise_mask_function (DifferentialDiffusion) is called with ComfyUI's arguments
    at every step and changes the result; the final paste keeps the known latent."""
    model, sigmas, latent = sd15
    soft = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(2, 1, 16, 16).clone()
    soft_latent = {**latent, "noise_mask": soft}
    dd = ch.node_class("DifferentialDiffusion").execute(model).result[0]
    calls = []
    inner = dd.model_options["denoise_mask_function"]

    def recording(sigma, mask, extra_options):
        model_sampling = extra_options["model"].inner_model.model_sampling  # what DifferentialDiffusion reads
        calls.append((float(sigma[0]), extra_options["sigmas"].clone(), model_sampling))
        return inner(sigma, mask, extra_options)

    dd = dd.clone()
    dd.set_model_denoise_mask_function(recording)
    with_dd = sample(dd, make_sampler("DDNMSampler", travel_repeat=1), soft_latent, sigmas)
    without = sample(model, make_sampler("DDNMSampler", travel_repeat=1), soft_latent, sigmas)
    assert len(calls) >= STEPS and {c[0] for c in calls} >= {float(s) for s in sigmas[:-1]}
    assert all(torch.equal(c[1].cpu(), sigmas) and c[2] is not None for c in calls)
    assert not torch.equal(with_dd, without)
    keep = (soft == 0).expand_as(with_dd)
    assert torch.equal(with_dd[keep], roundtrip(model, latent["samples"])[keep])


def test_cancel_stops_the_sampler(comfy_env, sd15, inference_mode):
    import comfy.model_management as mm

    model, sigmas, latent = sd15
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(BaseException) as info:
            sample(model, make_sampler("MCGSampler"), latent, sigmas)
        assert type(info.value).__name__ == "InterruptProcessingException"
    finally:
        mm.interrupt_current_processing(False)


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_exact_gaussian_beats_builtin_inpainting(comfy_env, inference_mode, flow):
    """On the exact Gaussian model through ComfyUI, DDNM and RePaint at their node defaults land closer
    to the true conditional mean of the hole than ComfyUI's built-in noise_mask inpainting (euler)."""
    import comfy.samplers
    import comfy_gaussian as cg

    from alignnoise_core.comfy_host import common as cb
    from alignnoise_core.inpaint.gaussian import GaussianLatentPrior, posterior_metrics

    prior = GaussianLatentPrior()
    y = prior.sample(1, torch.Generator().manual_seed(0))
    model, _ = cg.gaussian_model(prior, flow=flow)
    sigmas = cb.calculate_sigmas(model, "simple" if flow else "normal", 30)
    mask = cg.masks(16, 16)["inpaint hole"]
    cm, cv = prior.conditional(y[0], mask)

    def error(sampler):
        s = cg.run(model, sampler, sigmas, y, mask, 128, seed=1, fill=prior.mean)
        keep = (mask == 0).expand_as(s)
        assert torch.allclose(s[keep], y.expand_as(s)[keep], atol=1e-5)
        return posterior_metrics(s, cm, cv, prior.mean, mask)

    builtin = error(comfy.samplers.sampler_object("euler"))["mean_error"]
    for node_id in ("DDNMSampler", "RePaintSampler"):
        from alignnoise_core.inpaint import DEFAULTS

        params = inspect.signature(ch.node_class(node_id).execute).parameters
        ours = error(ch.node_class(node_id).execute(**{k: v for k, v in DEFAULTS[METHOD[node_id]].items()
                                                       if k in params}).result[0])
        assert ours["mean_error"] < builtin, (node_id, ours, builtin)
        assert 0.5 <= ours["var_ratio"] <= 1.5, (node_id, ours)
