"""FrequencyNoiseRefine inside real ComfyUI (COMFYUI_PATH): the executor, the NOISE contract of the
second pass (its first model input is exactly the refined latent), and the two-pass templates."""

from __future__ import annotations

import json

import pytest
import torch

import comfy_harness as ch
from alignnoise_core import frequency as fq

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --------------------------------------------------------------------------------------------------
# In-process: the NOISE makes SamplerCustomAdvanced start exactly from the refined latent
# --------------------------------------------------------------------------------------------------


class _FirstInputs:
    """Record what the sampler and the UNet see on their first call (on a model clone)."""

    def __init__(self, model):
        self.model = model.clone()
        self.x = []  # sampler state handed to apply_model (model_function_wrapper "input")
        self.unet_in = []  # the real UNet input: calculate_input(sigma, x) (+ c_concat channels)
        self.model.set_model_unet_function_wrapper(self._wrap)

    def _wrap(self, apply_model, args):
        self.x.append(args["input"].detach().clone())
        return apply_model(args["input"], args["timestep"], **args["c"])

    def hook(self):
        dm = self.model.model.diffusion_model
        return dm.register_forward_pre_hook(lambda mod, a: self.unet_in.append(a[0].detach().clone()))


def _sample(comfy_env, model, noise, latent: dict, sigmas, positive, negative=None, cfg=1.0):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative if negative is not None else positive)
    guider.set_cfg(cfg)
    node = comfy_env.node_class("SamplerCustomAdvanced")
    out = node.execute(noise, guider, comfy.samplers.sampler_object("euler"), sigmas, latent)
    return out.result[0] if hasattr(out, "result") else out[0]


def _outpaint_mask(b, h, w, border):
    m = torch.ones(b, h, w)
    m[:, border:h - border, border:w - border] = 0
    return m


@pytest.fixture(scope="module")
def first_pass():
    """A first pass on the in-process tiny SD1.5 model: (model, cond, latent_in, noise, output)."""
    ch.require_comfyui()
    comfy_env = ch
    from alignnoise_core.comfy_host import common

    model = comfy_env.tiny_model(4)
    cond = comfy_env.fake_conditioning()
    with torch.inference_mode():
        sigmas = common.calculate_sigmas(model, "normal", 3)
        latent = {"samples": torch.zeros(2, 4, 16, 16)}
        noise = comfy_env.node_class("RandomNoise").execute(7).result[0]
        out = _sample(comfy_env, model, noise, latent, sigmas, cond)
    return model, cond, latent, noise, out


def test_refined_noise_matches_core_math(comfy_env, first_pass):
    from alignnoise_core.comfy_host import common

    model, cond, latent, noise, out = first_pass
    mask = _outpaint_mask(1, 128, 128, 32)
    with torch.inference_mode():
        node = comfy_env.node_class("FrequencyNoiseRefine")
        refined = node.execute(model, out, noise, "butterworth", 0.25, 4, 0.25, 5, mask=mask).result[0]
        sigma_max = float(common.model_sampling(model).sigma_max)
        x0 = out["samples"].double() * 0.18215  # SD1.5 process_latent_in
        z_hat = common.random_noise(out, 7).double()
        expected = fq.refine(x0, z_hat, sigma_max, mask=mask, seed=5)
    assert sigma_max == pytest.approx(14.6146, abs=1e-3)
    assert torch.allclose(refined.refined, expected.float(), atol=1e-6)
    m = fq.mask_to_latent(mask, x0).expand_as(x0)
    z_t = fq.renoise(x0, z_hat, sigma_max)
    assert torch.equal(refined.refined[m == 0], z_t[m == 0].float())  # source keeps the re-noised latent
    assert refined.seed == 5
    assert out["samples"].abs().sum() > 0 and "noise_mask" not in out  # inputs not mutated


@pytest.mark.parametrize("latent_kind", ["empty", "first_pass_output", "other"])
def test_second_pass_starts_exactly_from_refined_latent(comfy_env, first_pass, latent_kind):
    from alignnoise_core.comfy_host import common

    model, cond, latent, noise, out = first_pass
    mask = _outpaint_mask(1, 128, 128, 32)
    with torch.inference_mode():
        refined = comfy_env.node_class("FrequencyNoiseRefine").execute(
            model, out, noise, "gaussian", 0.3, 4, 0.25, 3, mask=mask).result[0]
        second_latent = {
            "empty": {"samples": torch.zeros_like(out["samples"])},
            "first_pass_output": out,
            "other": {"samples": torch.randn(out["samples"].shape, generator=torch.Generator().manual_seed(1))},
        }[latent_kind]
        sigmas = common.calculate_sigmas(model, "karras", 4)
        rec = _FirstInputs(model)
        handle = rec.hook()
        try:
            _sample(comfy_env, rec.model, refined, second_latent, sigmas, cond)
        finally:
            handle.remove()
    # The first sampler state is x = z'·√(1+σ_max²) and the UNet sees z' = x/√(1+σ²) itself.
    assert torch.allclose(rec.x[0][:2], refined.start_state(), rtol=1e-5, atol=2e-5)
    assert torch.allclose(rec.unet_in[0][:2, :4], refined.refined, atol=2e-6)
    assert len(rec.unet_in) == 4  # 4 steps of euler, cfg 1: one UNet call each, nothing else runs


def test_second_pass_with_sigmas_below_sigma_max_and_inpaint_model(comfy_env):
    from alignnoise_core.comfy_host import common

    model = comfy_env.tiny_model(9)
    cond = comfy_env.fake_conditioning()
    with torch.inference_mode():
        latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))}
        noise = comfy_env.node_class("RandomNoise").execute(1).result[0]
        sigmas = common.calculate_sigmas(model, "normal", 6, denoise=0.5)  # starts well below sigma_max
        refined = comfy_env.node_class("FrequencyNoiseRefine").execute(
            model, latent, noise, "butterworth", 0.25, 4, 0.25, 0, mask=_outpaint_mask(1, 16, 16, 4),
            sigmas=sigmas).result[0]
        assert refined.sigma == pytest.approx(float(sigmas[0])) and not refined.max_denoise
        rec = _FirstInputs(model)
        handle = rec.hook()
        try:
            _sample(comfy_env, rec.model, refined, latent, sigmas, cond)
        finally:
            handle.remove()
    assert rec.unet_in[0].shape[1] == 9  # x(4) + mask(1) + masked latent(4) of the inpaint model
    assert torch.allclose(rec.unet_in[0][:, :4], refined.refined, atol=2e-6)


def test_node_errors_are_clear(comfy_env, first_pass):
    model, cond, latent, noise, out = first_pass
    node = comfy_env.node_class("FrequencyNoiseRefine")
    with torch.inference_mode():
        refined = node.execute(model, out, noise, "box", 0.25, 4, 0.25, 0).result[0]
        with pytest.raises(ValueError, match="same size"):
            refined.generate_noise({"samples": torch.zeros(2, 4, 8, 8)})
        with pytest.raises(ValueError, match="Unknown filter"):
            node.execute(model, out, noise, "hann", 0.25, 4, 0.25, 0)
        with pytest.raises(ValueError, match="batch"):
            node.execute(model, out, noise, "ideal", 0.25, 4, 0.25, 0, mask=torch.ones(3, 16, 16))


# --------------------------------------------------------------------------------------------------
# Through the executor on a generated checkpoint (inference tensors, real loader)
# --------------------------------------------------------------------------------------------------


def _two_pass_prompt(ckpt: str, steps: int = 3) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a landscape", "clip": ["1", 1]}},
        "3": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["2", 0]}},
        "4": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "5": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal",
                                                          "steps": steps, "denoise": 1.0}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "8": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["7", 0], "guider": ["3", 0], "sampler": ["4", 0], "sigmas": ["5", 0], "latent_image": ["6", 0]}},
        "9": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "10": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 32, "height": 32}},
        "11": {"class_type": "MaskComposite", "inputs": {"destination": ["9", 0], "source": ["10", 0],
                                                         "x": 16, "y": 16, "operation": "multiply"}},
        "12": {"class_type": "FrequencyNoiseRefine", "inputs": {
            "model": ["1", 0], "samples": ["8", 0], "noise": ["7", 0], "mask": ["11", 0], "filter": "butterworth",
            "d_s": 0.25, "order": 4, "d_t": 0.25, "seed": 9}},
        "13": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["12", 0], "guider": ["3", 0], "sampler": ["4", 0], "sigmas": ["5", 0], "latent_image": ["8", 0]}},
        "14": {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["1", 2]}},
        "15": {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}},
    }


def test_node_runs_through_executor_on_checkpoint(comfy_env):
    ckpt = comfy_env.make_checkpoint("sd15")
    result = comfy_env.run_prompt(_two_pass_prompt(ckpt))
    refined = result.outputs("12")[0]
    first = result.outputs("8")[0]
    assert type(refined).__name__ == "RefinedNoise" and refined.seed == 9
    assert refined.refined.shape == first["samples"].shape == (1, 4, 8, 8)
    with torch.inference_mode():
        x0 = first["samples"].double() * 0.18215
        z_hat = comfy_env.node_class("RandomNoise").execute(42).result[0].generate_noise(first).double()
        mask = torch.ones(1, 64, 64)
        mask[:, 16:48, 16:48] = 0
        expected = fq.refine(x0, z_hat, refined.sigma, mask=mask, seed=9)
    assert torch.allclose(refined.refined, expected.float(), atol=1e-6)
    second = result.outputs("13")[0]["samples"]
    assert torch.isfinite(second).all() and not torch.equal(second, first["samples"])
    assert result.ui["15"]["images"]


# --------------------------------------------------------------------------------------------------
# Shipped templates (also run by test_comfy_pack; here with stage-2 specific checks)
# --------------------------------------------------------------------------------------------------

TEMPLATES = [p for p in ch.example_workflows() if p.stem in ("alignnoise_outpaint", "alignnoise_ablation")]


@pytest.mark.parametrize("workflow", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_template_wiring_and_run(comfy_env, workflow):
    data = json.loads(workflow.read_text())
    prompt = comfy_env.ui_to_api(data)
    refiners = {k: v for k, v in prompt.items() if v["class_type"] == "FrequencyNoiseRefine"}
    assert refiners, "template has no FrequencyNoiseRefine"
    for rid, node in refiners.items():
        # the refiner re-noises with the NOISE of the first pass it refines
        src_sampler = prompt[node["inputs"]["samples"][0]]
        assert src_sampler["class_type"] == "SamplerCustomAdvanced"
        assert src_sampler["inputs"]["noise"] == node["inputs"]["noise"]
        second = [v for v in prompt.values() if v["class_type"] == "SamplerCustomAdvanced"
                  and v["inputs"]["noise"] == [rid, 0]]
        assert len(second) == 1, "the refined NOISE must drive exactly one second pass"
    # Paper defaults (50 + 50 steps, 10 iterations) run as shipped in test_comfy_pack; here the same
    # graph with 3 steps and 2 iterations, checking what flows through it.
    for node in prompt.values():
        if node["class_type"] == "BasicScheduler":
            node["inputs"]["steps"] = 3
        if node["class_type"] == "AttentionBalanceNoiseOptimize":
            node["inputs"]["iterations"] = 2
    comfy_env.prepare_workflow_assets(prompt)
    result = comfy_env.run_prompt(prompt)
    assert [o for o in result.ui.values() if "images" in o]
    for rid, node in refiners.items():
        refined = result.outputs(rid)[0]
        first = result.outputs(node["inputs"]["samples"][0])[0]
        assert type(refined).__name__ == "RefinedNoise"
        assert refined.refined.shape == first["samples"].shape
        assert refined.max_denoise  # the template's second schedule starts at sigma_max
