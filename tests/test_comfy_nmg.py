"""NMGInvert + NMGGuidance inside real ComfyUI (COMFYUI_PATH): the GUIDER driven by
SamplerCustomAdvanced reproduces the host-free NMG loop, the input MODEL is untouched, the refusals,
and both nodes through the executor on a generated SD1.5 checkpoint."""

from __future__ import annotations

import sys

import pytest
import torch

import comfy_harness as ch
from alignnoise_core import nmg, nmg_maps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def setup():
    """Tiny in-process SD1.5 model (inference-tensor weights), conds, a latent, its inversion."""
    ch.require_comfyui()
    from alignnoise_core.comfy_host import common

    model = ch.tiny_model(4, seed=3)
    src, null = ch.fake_conditioning(seed=1), ch.fake_conditioning(seed=2)
    with torch.inference_mode():
        sigmas = common.calculate_sigmas(model, "normal", 4)
        x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        maps, inverted = ch.node_class("NMGInvert").execute(model, src, {"samples": x0}, sigmas).result
    return dict(model=model, src=src, null=null, sigmas=sigmas, x0=x0, maps=maps, inverted=inverted)


def _sca(guider, sampler, sigmas, latent, noise=None):
    import comfy.samplers

    noise = noise or ch.node_class("DisableNoise").execute().result[0]
    sampler = comfy.samplers.sampler_object(sampler) if isinstance(sampler, str) else sampler
    return ch.node_class("SamplerCustomAdvanced").execute(noise, guider, sampler, sigmas, latent).result[0]["samples"]


def _guider(s, model=None, positive=None, **kw):
    args = dict(cfg=3.0, grad_scale=5000.0, noise_map_scale=10.0, loss="l1", start_percent=0.0, end_percent=1.0)
    args.update(kw)
    return ch.node_class("NMGGuidance").execute(model or s["model"], positive or s["src"], s["null"], s["maps"],
                                                **args).result[0]


def _pack_module(name):
    """The pack's own copy of ``alignnoise_core.<name>`` (ComfyUI loads the folder as another package)."""
    node_mod = sys.modules[ch.node_class("NMGInvert").__module__]
    return getattr(node_mod, name)


def test_inversion_maps_and_latent(comfy_env, setup):
    s = setup
    maps, inv = s["maps"], s["inverted"]["samples"]
    assert maps.steps == 4 and maps.shape == (1, 4, 16, 16)
    torch.testing.assert_close(maps.sigmas, s["sigmas"].float())
    lf = s["model"].get_model_object("latent_format")
    torch.testing.assert_close(maps.latents[-1], lf.process_in(s["x0"]))  # model space, keyed at sigma 0
    torch.testing.assert_close(lf.process_in(inv), maps.latents[0], rtol=1e-5, atol=1e-5)
    assert maps.meta["family"] == "SD1.x"


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_guider_through_sampler_custom_advanced_equals_core_loop(comfy_env, setup, sampler):
    """The x0 the GUIDER returns makes ComfyUI's Euler step land exactly on the host-free NMG transition.
    (Energy l2 and a moderate grad_scale: on a random UNet the paper's l1 (a sign() gradient) and
    s_g = 5000 turn float rounding between two equal computations into visible differences.)"""
    s = setup
    from alignnoise_core.comfy_host import common
    with torch.inference_mode():
        out = _sca(_guider(s, loss="l2", grad_scale=100.0), sampler, s["sigmas"], s["inverted"])

        ref = {}
        m = s["model"].clone()

        def fn(ctx):
            import comfy.samplers

            def eps_u(x, sigma):
                ts = torch.full((1,), sigma)
                mo = common.use_differentiable_attention(ctx.model_options)  # the guider's attention backend
                return (x - ctx.calc_cond_batch(["negative"], x, ts, mo)[0]) / sigma

            def eps_t(x, sigma):
                ts = torch.full((1,), sigma)
                den = comfy.samplers.sampling_function(ctx.base_model, x, ts, ctx.conds["negative"],
                                                       ctx.conds["positive"], 3.0, ctx.model_options)
                return (x - den) / sigma

            with common.gradient_session(ctx.base_model):  # eps_u is differentiated w.r.t. the latent
                ref["x"] = nmg_maps.nmg_sample(s["maps"], eps_u, eps_t, grad_scale=100.0, noise_map_scale=10.0,
                                               loss="l2")
            return ref["x"]

        expected = common.run_sampler(m, s["src"], s["null"], 3.0, s["inverted"]["samples"], s["sigmas"], fn)
        common.release_model(m)
    # A random UNet drives the latents to ~1e4: compare relative to their scale (float32 rounding is ~1e-7).
    scale = float(expected.abs().max())
    assert scale > 0 and float((out - expected).abs().max()) <= 1e-5 * scale
    # Guidance changed the result (vs. plain double steps), so the match is not vacuous.
    with torch.inference_mode():
        off = _sca(_guider(s, grad_scale=0.0, loss="l2"), sampler, s["sigmas"], s["inverted"])
    assert (off - out).abs().mean() > 1e-2


def test_input_model_untouched_and_patches_compose(comfy_env, setup):
    import copy

    s = setup
    model = s["model"].clone()
    calls = []

    def wrapper(apply_model, args):  # another pack's patch on the input MODEL: must keep working
        calls.append(args["input"].requires_grad)
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(wrapper)
    before_opts = copy.copy(model.model_options)
    flags = [p.requires_grad for p in model.model.parameters()]
    with torch.inference_mode():
        plain_before = _sca(ch.node_class("BasicGuider").execute(model, s["src"]).result[0], "euler", s["sigmas"],
                            s["inverted"])
        _sca(_guider(s, model=model), "euler", s["sigmas"], s["inverted"])
        plain_after = _sca(ch.node_class("BasicGuider").execute(model, s["src"]).result[0], "euler", s["sigmas"],
                           s["inverted"])
    assert torch.equal(plain_before, plain_after)
    assert model.model_options == before_opts and model.weight_wrapper_patches == {}
    assert [p.requires_grad for p in model.model.parameters()] == flags
    leftovers = [n for n, mod in model.model.named_modules() if getattr(mod, "weight_function", [])]
    assert leftovers == []
    assert True in calls  # the wrapper saw the differentiable Step-A input: patches compose with NMG


def test_refusals(comfy_env, setup):
    import comfy.samplers

    s = setup
    from alignnoise_core.comfy_host import common
    with torch.inference_mode():
        for name in ("euler_ancestral", "dpmpp_2m_sde"):
            with pytest.raises(ValueError, match="injects fresh noise"):
                _sca(_guider(s), name, s["sigmas"], s["inverted"])
        with pytest.raises(ValueError, match="first-order"):
            _sca(_guider(s), "dpmpp_2m", s["sigmas"], s["inverted"])
        with pytest.raises(ValueError, match="do not match"):
            _sca(_guider(s), "euler", common.calculate_sigmas(s["model"], "karras", 4), s["inverted"])
        with pytest.raises(ValueError, match="shape"):
            _sca(_guider(s), "euler", s["sigmas"], {"samples": torch.zeros(1, 4, 8, 8)})
        with pytest.raises(ValueError, match="DisableNoise"):
            _sca(_guider(s), "euler", s["sigmas"], s["inverted"], noise=ch.node_class("RandomNoise").execute(1).result[0])
        with pytest.raises(ValueError, match="start_percent"):
            _guider(s, start_percent=0.9, end_percent=0.1)
        with pytest.raises(ValueError, match="descending"):
            ch.node_class("NMGInvert").execute(s["model"], s["src"], {"samples": s["x0"]}, s["sigmas"].flip(0))
        with pytest.raises(ValueError, match="noise_mask"):
            ch.node_class("NMGInvert").execute(s["model"], s["src"], {"samples": s["x0"],
                                                                      "noise_mask": torch.ones(1, 16, 16)}, s["sigmas"])
        # A model whose output cannot be differentiated (here: a patch that detaches it).
        frozen = s["model"].clone()
        frozen.set_model_unet_function_wrapper(
            lambda apply_model, a: apply_model(a["input"], a["timestep"], **a["c"]).detach())
        with pytest.raises(ValueError, match="non-differentiable"):
            _sca(_guider(s, model=frozen), "euler", s["sigmas"], s["inverted"])
        # Not a full schedule for the inversion, and a sampler step between maps sigmas.
        with pytest.raises(ValueError, match="end at 0"):
            ch.node_class("NMGInvert").execute(s["model"], s["src"], {"samples": s["x0"]}, s["sigmas"][:3])
        assert comfy.samplers  # (imported for sampler_object inside _sca)


def test_inversion_honours_cancel(comfy_env, setup):
    import comfy.model_management as mm

    s = setup
    mm.interrupt_current_processing(True)
    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            ch.node_class("NMGInvert").execute(s["model"], s["src"], {"samples": s["x0"]}, s["sigmas"])
    finally:
        mm.interrupt_current_processing(False)


def test_both_nodes_through_the_executor_on_a_sd15_checkpoint(comfy_env, monkeypatch):
    """CheckpointLoaderSimple -> ... -> NMGInvert -> two NMGGuidance edits -> SamplerCustomAdvanced ->
    VAEDecode -> SaveImage: one inversion serves both edits (run once)."""
    ckpt = comfy_env.make_checkpoint("sd15")
    image = comfy_env.put_input_image(comfy_env.synthetic_image(1, 64, 64)[0], "nmg_src.png")
    from alignnoise_core.comfy_host import nmg as nmg_host
    calls = []
    real = nmg_host.nmg_invert

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(nmg_host, "nmg_invert", counting)

    def enc(text):
        return {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}}

    def guidance(pos, grad_scale):
        return {"class_type": "NMGGuidance", "inputs": {
            "model": ["1", 0], "positive": [pos, 0], "negative": ["4", 0], "noise_maps": ["8", 0], "cfg": 5.0,
            # 3 steps: the 50-step default grad_scale would saturate both edits to the same sign pattern.
            "grad_scale": grad_scale, "noise_map_scale": 10.0, "loss": "l1", "start_percent": 0.0, "end_percent": 1.0}}

    def sample(guider):
        return {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["10", 0], "guider": [guider, 0], "sampler": ["11", 0], "sigmas": ["7", 0],
            "latent_image": ["8", 1]}}

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": enc("a photo of a red disc"),
        "3": enc("a photo of a blue square"),
        "4": enc(""),
        "5": {"class_type": "LoadImage", "inputs": {"image": image}},
        "6": {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 3,
                                                         "denoise": 1.0}},
        "8": {"class_type": "NMGInvert", "inputs": {"model": ["1", 0], "positive": ["2", 0], "latent_image": ["6", 0],
                                                    "sigmas": ["7", 0]}},
        "9": guidance("2", 100.0),
        "19": guidance("3", 0.0),
        "10": {"class_type": "DisableNoise", "inputs": {}},
        "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "12": sample("9"),
        "22": sample("19"),
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "nmg_test"}},
        "23": {"class_type": "VAEDecode", "inputs": {"samples": ["22", 0], "vae": ["1", 2]}},
        "24": {"class_type": "SaveImage", "inputs": {"images": ["23", 0], "filename_prefix": "nmg_test_edit"}},
    }
    result = comfy_env.run_prompt(prompt)
    assert len(calls) == 1
    maps, inverted = result.outputs("8")
    recon, edit = result.outputs("12")[0]["samples"], result.outputs("22")[0]["samples"]
    assert maps.shape == tuple(inverted["samples"].shape) == tuple(recon.shape) == (1, 4, 8, 8)
    assert torch.isfinite(recon).all() and torch.isfinite(edit).all()
    # (The generated checkpoint's random UNet ignores the text, so the guidance makes the difference here.)
    assert (recon - edit).abs().mean() > 1e-3
    assert result.ui["14"]["images"] and result.ui["24"]["images"]

    bad = dict(prompt)
    bad["11"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}}
    with pytest.raises(ch.PromptError, match="deterministic DDIM sampler"):
        comfy_env.run_prompt(bad)


@pytest.mark.parametrize("name", ["nmg_edit", "nmg_reconstruct"])
def test_templates_are_wired_as_documented(comfy_env, name):
    """The shipped templates (run as shipped by test_comfy_pack) share one SIGMAS between inversion and
    sampling, use DisableNoise + ddim, and sample NMGInvert's latent."""
    import json

    prompt = comfy_env.ui_to_api(json.loads((ch.PACK_DIR / "example_workflows" / f"{name}.json").read_text()))
    by_type = {}
    for nid, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append((nid, node))
    (inv_id, inv), = by_type["NMGInvert"]
    (g_id, guidance), = by_type["NMGGuidance"]
    nmg_sampler = [n for _, n in by_type["SamplerCustomAdvanced"] if n["inputs"]["guider"][0] == g_id][0]
    assert nmg_sampler["inputs"]["sigmas"] == inv["inputs"]["sigmas"]
    assert nmg_sampler["inputs"]["latent_image"] == [inv_id, 1]
    assert prompt[nmg_sampler["inputs"]["noise"][0]]["class_type"] == "DisableNoise"
    assert prompt[nmg_sampler["inputs"]["sampler"][0]]["inputs"]["sampler_name"] in ("ddim", "euler")
    sched = prompt[inv["inputs"]["sigmas"][0]]
    assert sched["class_type"] == "BasicScheduler" and sched["inputs"]["steps"] == 50
    assert guidance["inputs"]["cfg"] == 10.0 and guidance["inputs"]["noise_map_scale"] == 10.0
    same_prompt = guidance["inputs"]["positive"] == inv["inputs"]["positive"]
    assert same_prompt == (name == "nmg_reconstruct")
