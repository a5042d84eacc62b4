"""NMGEdit inside real ComfyUI (COMFYUI_PATH): the two-branch NMG edit with Prompt-to-Prompt / MasaCtrl.

Mechanism tests on random weights: the source branch is the existing NMG reconstruction, no control
is the plain target branch, the injected attention is what the source branch computed (recorded by
an independent hook on a single-branch run), the local blend keeps the source outside its mask, the
input MODEL is untouched; SD1.x (real random CLIP-L), SD2.x and SDXL UNets; the executor."""

from __future__ import annotations

import pytest
import torch

import comfy_harness as ch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SRC, TGT = "a photo of a cat on grass", "a photo of a dog on grass"
GRAD, CFG = 200.0, 3.0


def _pack(name):
    """A module of the pack (ComfyUI and the tests share one copy of ``alignnoise_core``)."""
    import importlib

    ch.require_comfyui()
    return importlib.import_module({"host": "alignnoise_core.comfy_host.nmg_edit",
                                    "common": "alignnoise_core.comfy_host.common",
                                    "nmg_host": "alignnoise_core.comfy_host.nmg"}.get(name, "alignnoise_core." + name))


def live(model):
    """Give the harness's random UNet unit norm weights: ``comfy_harness._init_params`` zeroes every
    1-D weight whose name lacks "norm", i.e. the ResBlocks' and the output's GroupNorms
    (``in_layers.0``, ``out_layers.0``, ``out.0``), so its UNet output is identically 0 and nothing
    downstream of the attention would be tested. (The model is a fresh instance, not shared.)"""
    with torch.inference_mode():
        for mod in model.model.modules():
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and mod.weight is not None:
                mod.weight.fill_(1.0)
    return model


def assert_close_rel(a, b, tol=1e-4):
    """``max|a - b| <= tol * max|b|``: random UNets drive the latents to large values (hundreds), where
    elementwise rtol/atol would demand more than float32 batching noise allows; relative to the
    latent's scale the branches agree to ``tol``."""
    scale = float(b.abs().max())
    assert scale > 0
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"max difference {err:.3g} > {tol:g} x scale {scale:.3g}"


def _sd15_clip():
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path("checkpoints", ch.make_checkpoint("sd15"))
    with torch.inference_mode():
        return comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)[1]


def _encode(clip, text):
    with torch.inference_mode():
        return ch.node_class("CLIPTextEncode")().encode(clip, text)[0]


def _invert(model, clip, src=SRC, hw=(16, 16), steps=4):
    with torch.inference_mode():
        sigmas = _pack("common").calculate_sigmas(model, "normal", steps)
        x0 = torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(0))
        maps, inverted = ch.node_class("NMGInvert").execute(model, _encode(clip, src), {"samples": x0}, sigmas).result
    return dict(model=model, clip=clip, sigmas=sigmas, maps=maps, inverted=inverted, neg=_encode(clip, ""))


@pytest.fixture(scope="module")
def setup():
    ch.require_comfyui()
    return _invert(live(ch.tiny_model(4, seed=3)), _sd15_clip())


def _edit(s, method="p2p_replace", src=SRC, tgt=TGT, model=None, probe=None, guide=False, **kw):
    host = _pack("host")
    with torch.inference_mode():
        return host.nmg_edit(model or s["model"], s["clip"], s["neg"], s["maps"], src, tgt,
                             host.EditSettings(method=method, **kw), cfg=CFG, grad_scale=GRAD, probe=probe,
                             guide_edit_branch=guide)


def _sca(guider, s):
    import comfy.samplers

    with torch.inference_mode():
        noise = ch.node_class("DisableNoise").execute().result[0]
        return ch.node_class("SamplerCustomAdvanced").execute(
            noise, guider, comfy.samplers.sampler_object("ddim"), s["sigmas"], s["inverted"]).result[0]["samples"]


def _nmg_reconstruction(s, model=None):
    """The existing single-branch path: NMGGuidance with the source prompt through SamplerCustomAdvanced."""
    with torch.inference_mode():
        g = ch.node_class("NMGGuidance").execute(model or s["model"], _encode(s["clip"], SRC), s["neg"], s["maps"],
                                                 cfg=CFG, grad_scale=GRAD, noise_map_scale=10.0, loss="l1",
                                                 start_percent=0.0, end_percent=1.0).result[0]
    return _sca(g, s)


def _plain_target(s, text=TGT):
    with torch.inference_mode():
        g = ch.node_class("CFGGuider").execute(s["model"], _encode(s["clip"], text), s["neg"], CFG).result[0]
    return _sca(g, s)


# --------------------------------------------------------------------------------------------------


def test_source_branch_is_the_existing_nmg_reconstruction(comfy_env, setup):
    run = _edit(setup, blend_source_word="cat", blend_target_word="dog")
    assert_close_rel(run.reconstruction["samples"], _nmg_reconstruction(setup))
    assert (run.edited["samples"] - run.reconstruction["samples"]).abs().mean() > 1e-3
    assert "cat[5] -> dog[5]" in run.report and "local blend" in run.report
    assert run.preview.shape == (3, 128, 128, 3)  # 'cat', 'dog', blend mask
    assert float(run.preview.min()) >= 0 and float(run.preview.max()) <= 1


@pytest.mark.parametrize("method,kw", [("masactrl", dict(masactrl_step=4, masactrl_layer=0)),
                                       ("p2p_replace", dict(cross_replace_steps=0.0, self_replace_steps=0.0)),
                                       ("none", {})])
def test_no_control_is_the_plain_target_branch(comfy_env, setup, method, kw):
    run = _edit(setup, method, **kw)
    assert_close_rel(run.edited["samples"], _plain_target(setup))


def test_identical_prompts(comfy_env, setup):
    guided = _edit(setup, src=SRC, tgt=SRC, guide=True)
    assert_close_rel(guided.edited["samples"], guided.reconstruction["samples"], 1e-6)
    # The paper's editing path (edit branch without noise map guidance) does not reconstruct by itself.
    plain = _edit(setup, src=SRC, tgt=SRC)
    assert (plain.edited["samples"] - plain.reconstruction["samples"]).abs().mean() > 1e-3


def _recording_model(s, layers):
    """A clone whose every attn1/attn2 records, per (kind, layer, step, cond_or_uncond), what a
    single-branch run computed in its text step: cross-attention probabilities and self-attention keys."""
    import comfy.ldm.modules.attention as attention

    rec = {}
    m = s["model"].clone()
    for layer, (key, _) in enumerate(layers):
        for kind in ("attn1", "attn2"):
            def hook(q, k, v, extra, kind=kind, layer=layer):
                heads, prec = extra["n_heads"], extra.get("attn_precision")
                if torch.is_grad_enabled():  # Step A: as the pack's differentiable backend
                    return attention.attention_pytorch(q, k, v, heads, attn_precision=prec)
                step = s["maps"].index(float(extra["sigmas"].flatten()[0]))
                n = q.shape[0] // len(extra["cond_or_uncond"])
                for c, cu in enumerate(extra["cond_or_uncond"]):
                    r = slice(c * n, (c + 1) * n)
                    if kind == "attn2":
                        d = q.shape[-1] // heads
                        qh, kh = (t[r].float().reshape(n, -1, heads, d).transpose(1, 2) for t in (q, k))
                        rec[("cross", layer, step, cu)] = torch.softmax(qh @ kh.transpose(-1, -2) * d ** -0.5, -1)
                    else:
                        rec[("self", layer, step, cu)] = k[r].clone()
                return attention.optimized_attention(q, k, v, heads, attn_precision=prec)

            getattr(m, f"set_model_{kind}_replace")(hook, *key)
    return m, rec


@pytest.mark.parametrize("method", ["p2p_replace", "masactrl"])
def test_injected_attention_is_what_the_source_branch_computed(comfy_env, setup, method):
    s = setup
    host, ac = _pack("host"), _pack("attention_control")
    layers = host.transformer_layers(s["model"])
    m, rec = _recording_model(s, layers)
    _nmg_reconstruction(s, model=m)
    seen: dict = {}
    kw = dict(cross_replace_steps=1.0, self_replace_steps=0.0) if method == "p2p_replace" else \
        dict(masactrl_step=1, masactrl_layer=3)
    run = _edit(s, method, probe=lambda e, call, t: seen.setdefault((e, call.layer, call.step), []).append(t), **kw)
    if method == "p2p_replace":
        mapper = _pack("prompt_alignment").replacement_mapper(host.prompt_tokens(s["clip"], SRC, "s"),
                                                              host.prompt_tokens(s["clip"], TGT, "t"))
        keys = [k for k in seen if k[0] == "cross_injected"]
        assert len(keys) == len(layers) * s["maps"].steps
        for _, layer, step in keys:
            src_probs = rec[("cross", layer, step, 0)]
            torch.testing.assert_close(seen[("cross_source", layer, step)][0], src_probs, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(seen[("cross_injected", layer, step)][0], ac.replace_cross(src_probs, mapper),
                                       rtol=1e-4, atol=1e-4)
    else:
        keys = [k for k in seen if k[0].startswith("self_injected_source_keys")]
        assert {k[1] for k in keys} == set(range(3, len(layers))) and {k[2] for k in keys} == {1, 2, 3}
        assert len(keys) == 2 * (len(layers) - 3) * 3  # both CFG chunks
        for event, layer, step in keys:
            cu = 0 if event.endswith("[cond]") else 1
            torch.testing.assert_close(seen[(event, layer, step)][0], rec[("self", layer, step, cu)],
                                       rtol=1e-4, atol=1e-4)
        assert not torch.allclose(rec[("self", 3, 1, 0)], rec[("self", 3, 1, 1)], atol=1e-4)  # chunks differ
    assert torch.isfinite(run.edited["samples"]).all()


def test_local_blend_keeps_the_source_outside_its_mask(comfy_env, setup):
    # random attention is nearly flat: a high threshold so that the mask is not everything
    run = _edit(setup, blend_source_word="cat", blend_target_word="dog", blend_threshold=0.9)
    mask = run.controller.last_mask
    assert mask is not None and 0 < float(mask.mean()) < 1, float(mask.mean())
    outside = (mask.expand_as(run.edited["samples"]) == 0).cpu()
    e, r = run.edited["samples"], run.reconstruction["samples"]
    assert_close_rel(e[outside], r[outside], 1e-6)
    assert (e[~outside] - r[~outside]).abs().mean() > 1e-3


def test_input_model_untouched_sampling_bit_identical(comfy_env, setup):
    s = setup
    model = s["model"].clone()
    options = repr(model.model_options)
    flags = [p.requires_grad for p in model.model.parameters()]
    before = _plain_target(dict(s, model=model))
    for method in ("p2p_refine", "masactrl"):
        _edit(s, method, tgt="a photo of a fluffy cat on grass" if method == "p2p_refine" else TGT, model=model)
    assert repr(model.model_options) == options and model.weight_wrapper_patches == {}
    assert [p.requires_grad for p in model.model.parameters()] == flags
    assert all(not getattr(m, "weight_function", []) and not getattr(m, "bias_function", [])
               for m in model.model.modules())
    assert torch.equal(before, _plain_target(dict(s, model=model)))


def test_same_edit_on_a_streamed_model(comfy_env, setup):
    """The gradient recipe under current ComfyUI's weight streaming (emulated, see
    test_comfy_gradient_recipe): Step A's backward works and the edit is the same."""
    from test_comfy_gradient_recipe import streamed_model

    streamed, cast = streamed_model(setup["model"])
    kw = dict(blend_source_word="cat", blend_target_word="dog")
    plain, other = _edit(setup, **kw), _edit(setup, model=streamed, **kw)
    assert cast.calls > 0
    assert_close_rel(other.edited["samples"], plain.edited["samples"], 1e-5)
    assert_close_rel(other.reconstruction["samples"], plain.reconstruction["samples"], 1e-5)


def test_refine_and_reweight_report_and_run(comfy_env, setup):
    run = _edit(setup, "p2p_refine", tgt="a photo of a fluffy cat on grass", reweight_words="fluffy",
                reweight_scale=3.0)
    assert "without a source match" in run.report and "reweight: fluffy[5] x3" in run.report
    rw = _edit(setup, "p2p_reweight", tgt=SRC, reweight_words="grass")
    assert torch.isfinite(rw.edited["samples"]).all() and "fluffy" not in rw.report


@pytest.mark.parametrize("kw,match", [
    (dict(method="p2p_replace", tgt="a photo of a big dog on grass"), "same number of words"),
    (dict(blend_source_word="cat", blend_target_word="tiger"), "'tiger' is not in the target prompt"),
    (dict(blend_source_word="cat"), "needs both"),
    (dict(method="p2p_reweight", tgt=SRC), "needs reweight_words"),
    (dict(method="p2p_refine", reweight_words="horse"), "'horse' is not in the target prompt"),
    (dict(cross_replace_steps=1.5), "cross_replace_steps"),
    (dict(tgt="a photo of a (big dog:1.2) on grass", method="masactrl"), "word by word"),
    (dict(tgt=" ".join(["photo"] * 80), method="masactrl"), "longer than one 77-token"),
])
def test_refusals(comfy_env, setup, kw, match):
    method = kw.pop("method", "p2p_replace")
    tgt = kw.pop("tgt", TGT)
    with pytest.raises(ValueError, match=match):
        _edit(setup, method, tgt=tgt, **kw)


# --------------------------------------------------------------------------------------------------
# SD2.x and SDXL UNets
# --------------------------------------------------------------------------------------------------


class TokenizerOnlyClip:
    """ComfyUI's real tokenizer of a family with a stand-in text encoder (a fixed random embedding per
    token id, pooled = mean): random CLIP-H/CLIP-G weights are too heavy for CPU tests, and only the
    tokenizer and the conditioning's shapes matter to the UNet plumbing under test."""

    def __init__(self, tokenizer, dim, pooled=None, seed=0):
        self.tokenizer, self.dim, self.pooled = tokenizer, dim, pooled
        self.table = torch.randn(49408, dim, generator=torch.Generator().manual_seed(seed)) * 0.5

    def tokenize(self, text):
        return self.tokenizer.tokenize_with_weights(text)

    def encode_from_tokens_scheduled(self, tokens):
        key = "l" if "l" in tokens else next(iter(tokens))
        ids = torch.tensor([int(t[0]) for t in tokens[key][0]])
        cond = self.table[ids][None]
        opts = {} if self.pooled is None else {"pooled_output": cond.mean(1)[:, :self.pooled], "width": 128,
                                               "height": 128}
        return [[cond, opts]]


def _family_setup(kind):
    import comfy.sd
    import comfy.sdxl_clip
    import folder_paths

    if kind == "sdxl":
        from test_comfy_sdxl import tiny_sdxl

        model = live(tiny_sdxl(4, seed=11))  # own cache key: not shared with test_comfy_sdxl
        clip = TokenizerOnlyClip(comfy.sdxl_clip.SDXLTokenizer(), 2048, pooled=1280)
    else:
        from comfy.text_encoders import sd2_clip

        path = folder_paths.get_full_path("checkpoints", ch.make_checkpoint("sd20"))
        with torch.inference_mode():
            model = live(comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0])
        clip = TokenizerOnlyClip(sd2_clip.SD2Tokenizer(), 1024)
    return _invert(model, clip, hw=(16, 16) if kind == "sdxl" else (8, 8), steps=3)


@pytest.mark.parametrize("kind", ["sd20", "sdxl"])
def test_other_families(comfy_env, kind):
    s = _family_setup(kind)
    assert s["maps"].meta["family"] == {"sd20": "SD2.x", "sdxl": "SDXL"}[kind]
    run = _edit(s, blend_source_word="cat", blend_target_word="dog")
    assert_close_rel(run.reconstruction["samples"], _nmg_reconstruction(s))
    assert torch.isfinite(run.edited["samples"]).all()
    assert (run.edited["samples"] - run.reconstruction["samples"]).abs().mean() > 1e-4
    masa = _edit(s, "masactrl", masactrl_step=0, masactrl_layer=0)
    assert (masa.edited["samples"] - _plain_target(s)).abs().mean() > 1e-4


# --------------------------------------------------------------------------------------------------


def _live_checkpoint() -> str:
    """The harness's random SD1.5 checkpoint with unit GroupNorm weights in its UNet (see :func:`live`)."""
    import folder_paths
    import safetensors.torch

    name = "live_random_sd15.safetensors"
    if folder_paths.get_full_path("checkpoints", name) is None:
        src = folder_paths.get_full_path("checkpoints", ch.make_checkpoint("sd15"))
        sd = safetensors.torch.load_file(src)
        for k, v in sd.items():
            if k.startswith("model.diffusion_model.") and k.endswith((".in_layers.0.weight", ".out_layers.0.weight",
                                                                     "diffusion_model.out.0.weight")):
                sd[k] = torch.ones_like(v)
        safetensors.torch.save_file(sd, str(ch._state["work"] / "checkpoints" / name))
    return name


def test_two_edits_of_one_inversion_through_the_executor(comfy_env, monkeypatch):
    ckpt = _live_checkpoint()
    image = comfy_env.put_input_image(comfy_env.synthetic_image(1, 64, 64)[0], "nmg_edit_src.png")
    nmg_host = _pack("nmg_host")
    calls = []
    real = nmg_host.nmg_invert
    monkeypatch.setattr(nmg_host, "nmg_invert", lambda *a, **k: calls.append(1) or real(*a, **k))

    def edit(method, tgt, **kw):
        inputs = {"model": ["1", 0], "clip": ["1", 1], "negative": ["4", 0], "noise_maps": ["8", 0],
                  "source_prompt": SRC, "target_prompt": tgt, "method": method, "cross_replace_steps": 0.8,
                  "self_replace_steps": 0.6, "blend_source_word": "", "blend_target_word": "",
                  "blend_threshold": 0.3, "reweight_words": "", "reweight_scale": 2.0, "masactrl_step": 1,
                  "masactrl_layer": 2, "cfg": 5.0, "grad_scale": 100.0, "noise_map_scale": 10.0, "loss": "l1",
                  "guide_edit_branch": False}
        inputs.update(kw)
        return {"class_type": "NMGEdit", "inputs": inputs}

    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": SRC}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {"class_type": "LoadImage", "inputs": {"image": image}},
        "6": {"class_type": "VAEEncode", "inputs": {"pixels": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 3,
                                                         "denoise": 1.0}},
        "8": {"class_type": "NMGInvert", "inputs": {"model": ["1", 0], "positive": ["2", 0], "latent_image": ["6", 0],
                                                    "sigmas": ["7", 0]}},
        "9": edit("p2p_replace", TGT, blend_source_word="cat", blend_target_word="dog"),
        "10": edit("masactrl", "a photo of a cat jumping on grass"),
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "nmg_p2p"}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "nmg_masa"}},
        "15": {"class_type": "PreviewImage", "inputs": {"images": ["9", 2]}},
    }
    result = comfy_env.run_prompt(prompt)
    assert len(calls) == 1
    p2p, masa = result.outputs("9"), result.outputs("10")
    torch.testing.assert_close(p2p[1]["samples"], masa[1]["samples"])  # same source branch in both edits
    assert not torch.allclose(p2p[0]["samples"], masa[0]["samples"])
    assert p2p[2].shape[0] == 3 and "cat[5] -> dog[5]" in p2p[3]
    assert result.ui["12"]["images"] and result.ui["14"]["images"] and result.ui["15"]["images"]
