"""Every node refuses the bad inputs of the catalogue (tests/bad_inputs.py) inside ComfyUI, under
inference_mode as the executor runs nodes, with the catalogued message and before any model work."""

from __future__ import annotations

import re

import pytest
import torch

import comfy_harness as ch
from bad_inputs import MESSAGES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _nan(shape):
    x = torch.rand(shape)
    x.view(-1)[0] = float("nan")
    return x


def _node(node_id, *args, **kwargs):
    return ch.node_class(node_id).execute(*args, **kwargs)


def _pad(image, mask=None, **kw):
    return _node("OutpaintPad", image, left=8, mask=mask, **kw)


def _balance(s, latent=None, mask=None, sigmas=None, model=None, no_mask=False):
    latent = s["latent"] if latent is None else latent
    if no_mask:
        latent = {"samples": latent["samples"]}
    return _node("AttentionBalanceNoiseOptimize", model or s["model"], s["pos"], s["neg"], latent,
                 s["sigmas"] if sigmas is None else sigmas, 0, 1.0, 2, 0.01, 0.0, 0.15, True, mask=mask)


class _Noise:
    def __init__(self, tensor):
        self.seed, self.tensor = 0, tensor

    def generate_noise(self, latent):
        return self.tensor


def _refine(s, samples=None, noise=None, mask=None, sigmas=None):
    lat = s["latent"] if samples is None else samples
    noise = noise or _node("RandomNoise", 1).result[0]
    return _node("FrequencyNoiseRefine", s["model"], lat, noise, "butterworth", 0.25, 4, 0.25, 0, mask=mask,
                 sigmas=sigmas)


def _guided(s, sampler="euler", latent=None, noise=None, maps=None):
    import comfy.samplers

    guider = _node("NMGGuidance", s["model"], s["pos"], s["neg"], s["maps"] if maps is None else maps).result[0]
    noise = noise or _node("DisableNoise").result[0]
    return _node("SamplerCustomAdvanced", noise, guider, comfy.samplers.sampler_object(sampler), s["sigmas"],
                 latent or s["inverted"])


def _edit(s, maps=None, tgt="a photo of a dog", method="p2p_replace", **kw):
    from alignnoise_core.comfy_host.nmg_edit import EditSettings, nmg_edit

    return nmg_edit(s["model"], s["clip"], s["neg"], s["maps"] if maps is None else maps, "a photo of a cat", tgt,
                    EditSettings(method=method, **kw))


def _keyframes(s, image):
    return _node("ZoomOutpaintKeyframes", image, s["model"], s["pos"], s["neg"], None, zoom_steps=1, steps=1)


def _seamless(destination, source, mask=None, method="poisson"):
    mask = torch.ones(1, 16, 16) if mask is None else mask
    return _node("SeamlessComposite", destination, source, mask, method, 0, True, 1e-6, 100)


def _freesize(s, image=None, mask=None, **kw):
    import comfy.samplers

    image = torch.rand(1, 64, 128, 3) if image is None else image
    if mask is None:
        mask = torch.ones(1, image.shape[1], image.shape[2])
        mask[:, :, :64] = 0
    args = dict(window=64, overlap=0.5, order="raster", hierarchical=False, blend="alpha")
    args.update(kw)
    return _node("FreeSizeOutpaint", s["model"], s["pos"], s["neg"], None, image, mask,
                 comfy.samplers.sampler_object("euler"), s["sigmas"], 0, 4.0, **args)


def _unsupported_model():
    """A fresh tiny UNet whose config class is not an SD1.x/SD2.x/SDXL one (as a Flux/SD3 file reports)."""
    m = ch.tiny_model(4)
    m.model.model_config.__class__ = type("Flux", (type(m.model.model_config),), {})
    return m


def _inpaint(s, latent=None, sigmas=None, model=None, node_id="RePaintSampler", sampler=None):
    import comfy.samplers

    widgets = {"RePaintSampler": (10, 5, "fixed", 1.0, 6, 3), "DDNMSampler": (0.85, 10, 5, 0.0)}[node_id]
    sampler = _node(node_id, *widgets, **({"sampler": sampler} if sampler is not None else {})).result[0]
    guider = comfy.samplers.CFGGuider(model or s["model"])
    guider.set_conds(s["pos"], s["neg"])
    return _node("SamplerCustomAdvanced", _node("RandomNoise", 1).result[0], guider, sampler,
                 s["sigmas"] if sigmas is None else sigmas, s["latent"] if latent is None else latent)


def _sampler_object(name):
    import comfy.samplers

    return comfy.samplers.sampler_object(name)


def _x0_sampling_model(s):
    """The tiny model sampling as an x0-prediction model (neither eps/v nor flow state)."""
    import comfy.model_sampling as cms

    m = s["model"].clone()
    cls = type("X0Sampling", (cms.ModelSamplingDiscrete, cms.X0), {})
    m.add_object_patch("model_sampling", cls(m.model.model_config))
    return m


NODE_CASES = {
    "pad_nan": lambda s: _pad(_nan((1, 16, 16, 3))),
    "pad_rank": lambda s: _pad(torch.rand(16, 16, 3)),
    "pad_grey": lambda s: _pad(torch.rand(1, 16, 16, 1)),
    "pad_mask_size": lambda s: _pad(torch.rand(1, 16, 16, 3), mask=torch.ones(1, 8, 8)),
    "pad_mask_batch": lambda s: _pad(torch.rand(2, 16, 16, 3), mask=torch.ones(3, 16, 16)),
    "pad_mask_nan": lambda s: _pad(torch.rand(1, 16, 16, 3), mask=_nan((1, 16, 16))),
    "pad_target": lambda s: _node("OutpaintPad", torch.rand(1, 16, 16, 3), size_mode="target", target_width=8,
                                  target_height=8),
    "balance_nan": lambda s: _balance(s, latent={"samples": _nan((1, 4, 16, 16)), "noise_mask": s["mask"][:, None]}),
    "balance_no_mask": lambda s: _balance(s, no_mask=True),
    "balance_full_mask": lambda s: _balance(s, mask=torch.ones(1, 128, 128)),
    "balance_mask_batch": lambda s: _balance(s, latent={"samples": torch.zeros(2, 4, 16, 16)},
                                             mask=torch.ones(3, 128, 128)),
    "balance_sigmas": lambda s: _balance(s, sigmas=torch.tensor([0.0])),
    "balance_model": lambda s: _balance(s, model=s["unsupported"]),
    "refine_nan": lambda s: _refine(s, samples={"samples": _nan((1, 4, 16, 16))}),
    "refine_noise_nan": lambda s: _refine(s, noise=_Noise(_nan((1, 4, 16, 16)))),
    "refine_noise_shape": lambda s: _refine(s, noise=_node("AttentionBalanceNoiseOptimize", s["model"], s["pos"],
                                                           s["neg"], {"samples": torch.zeros(1, 4, 8, 8)},
                                                           s["sigmas"], 0, 1.0, 0, 0.01, 0.0, 0.15, True).result[0]),
    "refine_mask_nan": lambda s: _refine(s, mask=_nan((1, 128, 128))),
    "refine_sigmas": lambda s: _refine(s, sigmas=torch.tensor([0.0, 0.0])),
    "invert_mask": lambda s: _node("NMGInvert", s["model"], s["pos"], s["latent"], s["sigmas"]),
    "invert_sigmas": lambda s: _node("NMGInvert", s["model"], s["pos"], {"samples": s["x0"]}, s["sigmas"][:-1]),
    "invert_nan": lambda s: _node("NMGInvert", s["model"], s["pos"], {"samples": _nan((1, 4, 16, 16))},
                                  s["sigmas"]),
    "guidance_maps": lambda s: _guided(s, maps=torch.zeros(3)),
    "guidance_sampler": lambda s: _guided(s, sampler="euler_ancestral"),
    "guidance_latent": lambda s: _guided(s, latent={"samples": torch.zeros(1, 4, 8, 8)}),
    "guidance_noise": lambda s: _guided(s, noise=_node("RandomNoise", 1).result[0]),
    "edit_maps": lambda s: _edit(s, maps=torch.zeros(3)),
    "edit_word": lambda s: _edit(s, blend_source_word="cat", blend_target_word="tiger"),
    "edit_swap": lambda s: _edit(s, tgt="a photo of a big dog"),
    "edit_weights": lambda s: _edit(s, tgt="a photo of a (big dog:1.2)", method="masactrl"),
    "zoom_batch": lambda s: _keyframes(s, torch.rand(2, 64, 64, 3)),
    "zoom_nan": lambda s: _keyframes(s, _nan((1, 64, 64, 3))),
    "zoom_size": lambda s: _keyframes(s, torch.rand(1, 60, 64, 3)),
    "seamless_nan": lambda s: _seamless(torch.rand(1, 16, 16, 3), _nan((1, 16, 16, 3))),
    "seamless_size": lambda s: _seamless(torch.rand(1, 16, 16, 3), torch.rand(1, 16, 24, 3)),
    "seamless_mask_size": lambda s: _seamless(torch.rand(1, 16, 16, 3), torch.rand(1, 16, 16, 3), torch.ones(8, 8)),
    "seamless_batch": lambda s: _seamless(torch.rand(2, 16, 16, 3), torch.rand(3, 16, 16, 3)),
    "seamless_method": lambda s: _seamless(torch.rand(1, 16, 16, 3), torch.rand(1, 16, 16, 3), method="laplace"),
    "freesize_batch": lambda s: _freesize(s, image=torch.rand(2, 64, 128, 3)),
    "freesize_nan": lambda s: _freesize(s, image=_nan((1, 64, 128, 3))),
    "freesize_mask_size": lambda s: _freesize(s, mask=torch.ones(1, 64, 120)),
    "freesize_empty": lambda s: _freesize(s, mask=torch.zeros(1, 64, 128)),
    "freesize_window": lambda s: _freesize(s, window=100),
    "freesize_overlap": lambda s: _freesize(s, overlap=1.0),
    "freesize_canvas": lambda s: _freesize(s, image=torch.rand(1, 60, 128, 3)),
    "interp_empty": lambda s: _node("ZoomInterpolate", torch.rand(0, 16, 16, 3)),
    "interp_nan": lambda s: _node("ZoomInterpolate", _nan((2, 16, 16, 3))),
    "interp_zoom": lambda s: _node("ZoomInterpolate", torch.rand(2, 16, 16, 3), zoom_factor=1.0),
    "inpaint_no_mask": lambda s: _inpaint(s, latent={"samples": s["x0"]}),
    "inpaint_full_mask": lambda s: _inpaint(s, latent={"samples": s["x0"], "noise_mask": torch.ones(1, 16, 16)}),
    "inpaint_empty_mask": lambda s: _inpaint(s, latent={"samples": s["x0"], "noise_mask": torch.zeros(1, 16, 16)}),
    "inpaint_nan": lambda s: _inpaint(s, latent={"samples": _nan((1, 4, 16, 16)), "noise_mask": s["mask"][:, None]}),
    "inpaint_sigmas": lambda s: _inpaint(s),
    "inpaint_model": lambda s: _inpaint(s, model=_x0_sampling_model(s)),
    "inpaint_sampler": lambda s: _inpaint(s, sampler=_sampler_object("dpm_adaptive")),
}


@pytest.fixture(scope="module")
def setup():
    ch.require_comfyui()
    import comfy.samplers

    from alignnoise_core.comfy_host import nmg as nmg_host

    model = ch.tiny_model(4)
    with torch.inference_mode():
        x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        mask = torch.ones(1, 128, 128)
        mask[:, 32:96, 32:96] = 0
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2).cpu()
        pos, neg = ch.fake_conditioning(seed=1), ch.fake_conditioning(seed=2)
        maps, inverted = nmg_host.nmg_invert(model, pos, {"samples": x0}, sigmas)
    import comfy.sd1_clip
    from test_comfy_nmg_edit import TokenizerOnlyClip

    clip = TokenizerOnlyClip(comfy.sd1_clip.SD1Tokenizer(), 768)  # the real SD1 tokenizer; no CLIP weights needed
    return {"model": model, "clip": clip, "pos": pos, "neg": neg, "x0": x0, "mask": mask, "sigmas": sigmas, "maps": maps,
            "inverted": inverted, "latent": {"samples": x0, "noise_mask": mask[:, None]}, "unsupported": _unsupported_model()}


@pytest.mark.parametrize("case", sorted(NODE_CASES))
def test_node_refuses(comfy_env, setup, case):
    calls = []

    def count(apply_model, args):
        calls.append(1)
        return apply_model(args["input"], args["timestep"], **args["c"])

    for key in ("model",):  # "before any model work": no UNet call happened when the error is raised
        setup[key].set_model_unet_function_wrapper(count)
    try:
        with torch.inference_mode(), pytest.raises(ValueError, match=re.escape(MESSAGES[case])):
            NODE_CASES[case](setup)
    finally:
        setup["model"].model_options.pop("model_function_wrapper", None)
    if not case.startswith(("guidance_", "refine_noise_shape")):  # NMGGuidance checks in the sampler call
        assert not calls, f"{case}: the model ran {len(calls)} time(s) before the error"
