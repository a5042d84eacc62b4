"""Host-free tests of Prompt-to-Prompt / MasaCtrl attention control and the two-branch NMG edit loop
(alignnoise_core/prompt_alignment.py, attention_control.py, nmg_edit.py)."""

from __future__ import annotations

import pytest
import torch

from alignnoise_core import attention_control as ac
from alignnoise_core import nmg, nmg_edit, nmg_maps
from alignnoise_core import prompt_alignment as pa
from alignnoise_core.attention import explicit_attention


def encode_word(word):
    """A stand-in BPE: one token per 3 characters (so long words take several tokens)."""
    return [int.from_bytes(word[i:i + 3].encode(), "big") % 49000 for i in range(0, len(word), 3)]


def tok(text):
    return pa.prompt_tokens(text, encode_word)


def sdpa(q, k, v, heads):
    return explicit_attention(q, k, v, heads)[0]


# --------------------------------------------------------------------------------------------------
# Words and token alignment
# --------------------------------------------------------------------------------------------------


def test_word_spans_and_lookup():
    pt = tok("a photo of a tabby cat")
    assert pt.words == ("a", "photo", "of", "a", "tabby", "cat")
    assert pt.spans == ((1,), (2, 3), (4,), (5,), (6, 7), (8,))
    assert pa.word_positions(pt, "Tabby") == (6, 7)
    assert pa.word_positions(pt, "a") == (1, 5)  # every occurrence
    assert "tabby[6,7]" in pt.describe()
    with pytest.raises(ValueError, match="'dog' is not in the"):
        pa.word_positions(pt, "dog")
    with pytest.raises(ValueError, match="at most 75"):
        tok(" ".join(["word"] * 40))
    assert pa.parse_words(" cat, dog ,,") == ["cat", "dog"]
    weighted = tok("a (dog:1.2) here")
    assert pa.word_positions(weighted, "dog") == weighted.spans[1]  # ComfyUI's weight syntax on one word


def test_replacement_mapper_swaps_and_shifts():
    src, tgt = tok("a cat on grass"), tok("a tiger on grass")  # cat: 1 token, tiger: 2 tokens
    m = pa.replacement_mapper(src, tgt)
    assert m[0, 0] == 1 and m[1, 1] == 1                    # start token, "a"
    assert torch.equal(m[2, 2:4], torch.tensor([0.5, 0.5]))  # cat -> ti|ger, spread evenly
    assert m[3, 4] == 1 and m[4, 5] == 1 and m[5, 6] == 1    # "on", "gra|ss" shifted by one
    assert m[src.length + 1, tgt.length + 1] == 1            # end token
    # Every source token's mass goes somewhere once: a permutation-like, column-stochastic matrix.
    assert torch.allclose(m[: src.length + 2].sum(1), torch.ones(src.length + 2))
    same = pa.replacement_mapper(src, src)
    assert torch.equal(same, torch.eye(77))
    with pytest.raises(ValueError, match="same number of words"):
        pa.replacement_mapper(src, tok("a cat on green grass"))


def test_refinement_mapper_keeps_new_words_own_maps():
    src, tgt = tok("a cat on grass"), tok("a fluffy cat on grass")
    index, alpha = pa.refinement_mapper(src, tgt)
    fluffy = pa.word_positions(tgt, "fluffy")
    assert all(alpha[p] == 0 for p in fluffy)
    cat_s, cat_t = pa.word_positions(src, "cat"), pa.word_positions(tgt, "cat")
    assert index[cat_t[0]] == cat_s[0] and alpha[cat_t[0]] == 1
    assert index[0] == 0 and index[tgt.length + 1] == src.length + 1  # start and end tokens aligned
    assert alpha.sum() == 77 - len(fluffy)


def test_align_tokens_is_a_longest_common_subsequence():
    x, y = [5, 1, 2, 3, 9], [5, 1, 7, 2, 3, 8, 9]
    out = pa.align_tokens(x, y)
    pairs = [(i, j) for j, i in enumerate(out) if i >= 0]
    assert all(x[i] == y[j] for i, j in pairs)
    assert len(pairs) == 5 and [i for i, _ in pairs] == sorted(i for i, _ in pairs)


def test_equalizer_scales_target_words():
    eq = pa.equalizer(tok("a smiling bunny"), ["smiling"], 2.0)
    assert eq[2:5].tolist() == [2.0] * 3 and eq[1] == 1.0 and eq.sum() == 77 + 3  # smi|lin|g
    with pytest.raises(ValueError, match="not in the target prompt"):
        pa.equalizer(tok("a smiling bunny"), ["frowning"], 2.0)


# --------------------------------------------------------------------------------------------------
# Cross-attention edits and the local blend
# --------------------------------------------------------------------------------------------------


def probs(b=2, h=2, n=16, t=77, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h, n, t, generator=g), -1)


def test_cross_edits():
    p_src, p_tgt = probs(seed=0), probs(seed=1)
    src, tgt = tok("a cat on grass"), tok("a tiger on grass")
    out = ac.replace_cross(p_src, pa.replacement_mapper(src, tgt))
    assert torch.allclose(out[..., 2], p_src[..., 2] / 2) and torch.allclose(out[..., 3], p_src[..., 2] / 2)
    assert torch.allclose(out[..., 4], p_src[..., 3])  # "on" keeps the source map, shifted
    # all mass is kept except the last padding token's, shifted out of the context by the longer word
    assert torch.allclose(out.sum(-1), 1 - p_src[..., 76], atol=1e-5)
    index, alpha = pa.refinement_mapper(src, tok("a big cat on grass"))
    ref = ac.refine_cross(p_src, p_tgt, index, alpha)
    assert torch.equal(ref[..., 2], p_tgt[..., 2]) and torch.equal(ref[..., 3], p_src[..., 2])
    scale = torch.ones(77)
    scale[3] = 3.0
    edit = ac.CrossEdit("reweight", scale=scale)
    rw = edit(p_src, p_tgt)
    assert torch.allclose(rw[..., 3], 3 * p_src[..., 3]) and torch.equal(rw[..., 4], p_src[..., 4])


def test_blend_mask_and_local_blend():
    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 5] = 1.0  # a hot token at (2, 5)
    mask = ac.word_mask(maps, (16, 16), 0.3)
    # max-pool 3x3 around (2, 5) -> rows 1..3, cols 4..6 at 8x8 -> doubled by nearest upsampling
    assert mask.shape == (1, 1, 16, 16) and mask.sum() == 9 * 4 and mask[0, 0, 4, 10] == 1
    other = torch.zeros(1, 8, 8)
    other[0, 6, 1] = 1.0
    union = ac.blend_mask(maps, other, (16, 16), 0.3)
    assert union.sum() == 2 * 9 * 4
    x_src, x_tgt = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    out = ac.local_blend(x_src, x_tgt, union)
    keep = union.expand_as(out) == 0
    assert torch.equal(out[keep], x_src[keep]) and torch.allclose(out[~keep], x_tgt[~keep], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Controllers on one attention call
# --------------------------------------------------------------------------------------------------


def qkv(rows=4, n=16, m=16, inner=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, n, inner, generator=g), torch.randn(rows, m, inner, generator=g),
            torch.randn(rows, m, inner, generator=g))


CHUNKS = (False, True)  # uncond chunk rows 0-1, cond chunk rows 2-3 (source 2, edit 3)


def test_p2p_cross_injection_and_schedule():
    q, k, v = qkv(m=77)
    src, tgt = tok("a cat on grass"), tok("a tiger on grass")
    seen = {}
    ctl = ac.PromptToPrompt(pairs=1, total_steps=10, cross=ac.CrossEdit("replace", mapper=pa.replacement_mapper(src, tgt)),
                            cross_replace_steps=0.8, probe=lambda e, c, t: seen.__setitem__(e, t))
    call = ac.AttentionCall("cross", 0, (4, 4), CHUNKS, step=7)
    out = ctl.attend(q, k, v, 2, call, sdpa)
    base = sdpa(q, k, v, 2)
    assert torch.equal(out[:3], base[:3])  # uncond chunk and source row untouched
    _, p = explicit_attention(q[2:4], k[2:4], v[2:4], 2)
    expect = ac.replace_cross(p[:1], pa.replacement_mapper(src, tgt))
    assert torch.allclose(seen["cross_injected"], expect) and torch.allclose(seen["cross_source"], p[:1])
    assert torch.allclose(out[3], ac.apply_probs(expect, v[3:4], 2)[0], atol=1e-6)
    late = ctl.attend(q, k, v, 2, ac.AttentionCall("cross", 0, (4, 4), CHUNKS, step=8), sdpa)
    assert torch.equal(late, base)  # after cross_replace_steps: no injection


def test_p2p_self_injection_uses_source_probabilities():
    q, k, v = qkv()
    ctl = ac.PromptToPrompt(pairs=1, total_steps=10, cross=ac.CrossEdit("reweight"), self_replace_steps=0.5)
    out = ctl.attend(q, k, v, 2, ac.AttentionCall("self", 3, (4, 4), CHUNKS, step=4), sdpa)
    assert torch.allclose(out[3], sdpa(q[2:3], k[2:3], v[3:4], 2)[0])
    assert torch.equal(out[:3], sdpa(q, k, v, 2)[:3])
    assert torch.equal(ctl.attend(q, k, v, 2, ac.AttentionCall("self", 3, (4, 4), CHUNKS, step=5), sdpa),
                       sdpa(q, k, v, 2))
    big = qkv(n=33 * 33, m=33 * 33)  # above the paper's 32x32 limit: never replaced
    assert torch.equal(ctl.attend(*big, 2, ac.AttentionCall("self", 3, (33, 33), CHUNKS, step=0), sdpa),
                       sdpa(*big, 2))


def test_masactrl_edit_queries_source_keys_values_in_both_chunks():
    q, k, v = qkv()
    ctl = ac.MasaCtrl(pairs=1, total_steps=10, start_step=4, start_layer=10)
    for step, layer in ((3, 12), (5, 9)):
        call = ac.AttentionCall("self", layer, (4, 4), CHUNKS, step=step)
        assert torch.equal(ctl.attend(q, k, v, 2, call, sdpa), sdpa(q, k, v, 2))
    out = ctl.attend(q, k, v, 2, ac.AttentionCall("self", 10, (4, 4), CHUNKS, step=4), sdpa)
    for s, t in ((0, 1), (2, 3)):
        assert torch.allclose(out[t], sdpa(q[t:t + 1], k[s:s + 1], v[s:s + 1], 2)[0])
        assert torch.equal(out[s], sdpa(q, k, v, 2)[s])
    cross = ac.AttentionCall("cross", 10, (4, 4), CHUNKS, step=4)
    assert torch.equal(ctl.attend(q, k, v, 2, cross, sdpa), sdpa(q, k, v, 2))
    with pytest.raises(ValueError, match="expected 4 batch rows"):
        ctl.attend(q[:2], k[:2], v[:2], 2, cross, sdpa)


def test_word_maps_record_only_their_grid_and_words():
    q, k, v = qkv(m=77, n=64)
    q = 4 * q  # peaked maps, so the blend mask is not everything
    maps = ac.WordMaps(grid=(8, 8), entries=[("cat", 0, (2,)), ("tiger", 1, (2, 3))], pairs=1)
    ctl = ac.PromptToPrompt(pairs=1, total_steps=10, cross=ac.CrossEdit("reweight"), cross_replace_steps=0.0,
                            maps=maps, blend=(0, 1))
    ctl.attend(q, k, v, 2, ac.AttentionCall("cross", 0, (8, 8), CHUNKS, step=0), sdpa)
    ctl.attend(q[:, :4], k, v, 2, ac.AttentionCall("cross", 1, (2, 2), CHUNKS, step=0), sdpa)  # other grid
    _, p = explicit_attention(q[2:4], k[2:4], v[2:4], 2)
    pm = p.mean(1)
    assert maps.calls == 1 and maps.nbytes() == 4 * 2 * 64
    assert torch.allclose(maps.sums[0, 0], pm[0, :, 2].reshape(8, 8))
    assert torch.allclose(maps.sums[1, 0], pm[1, :, 2:4].sum(-1).reshape(8, 8))
    x_src, x_tgt = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    out = ctl.after_step(x_src, x_tgt, 0)
    keep = ctl.last_mask.expand_as(out) == 0
    assert keep.any() and torch.equal(out[keep], x_src[keep])


# --------------------------------------------------------------------------------------------------
# The two-branch loop on a toy attention model
# --------------------------------------------------------------------------------------------------


class ToyAttentionModel(torch.nn.Module):
    """eps(x, context): one self-attention and one cross-attention layer over the latent's pixels, both
    routed through the controller (when given), like the UNet's transformer layers."""

    def __init__(self, c=4, d=8, heads=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.heads = heads
        self.w = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(c, d, generator=g) * 0.5) for _ in range(3)]
            + [torch.nn.Parameter(torch.randn(16, d, generator=g) * 0.5) for _ in range(2)]
            + [torch.nn.Parameter(torch.randn(d, c, generator=g) * 0.5) for _ in range(2)])

    def forward(self, x, ctx, controller=None, chunks=(True,), step=0):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        wq, wk, wv, ck, cv, o1, o2 = self.w

        def attn(kind, layer, q, k, v):
            if controller is None:
                return sdpa(q, k, v, self.heads)
            return controller.attend(q, k, v, self.heads, ac.AttentionCall(kind, layer, (h, w), chunks, step), sdpa)

        a = attn("self", 0, t @ wq, t @ wk, t @ wv) @ o1
        t2 = t + a
        cr = attn("cross", 1, t2 @ wq, ctx @ ck, ctx @ cv) @ o2
        return (torch.tanh(t2 + cr) * 0.5).transpose(1, 2).reshape(b, c, h, w)


def toy_setup(steps=4):
    model = ToyAttentionModel()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 4, 4, generator=g)
    ctx = {n: torch.randn(1, 77, 16, generator=g) for n in ("src", "tgt", "null")}
    sigmas = nmg.ddim_sigmas(steps)

    def eps(name):
        return lambda x, s: model(x, ctx[name].expand(x.shape[0], -1, -1))

    maps = nmg_maps.ddim_invert(x0, sigmas, eps("src"), sigma_floor=0.03)
    return model, ctx, maps, eps


def pair_fn(model, ctx, controller, src="src", tgt="tgt", scale=7.5):
    """Step B's CFG over [source rows, edit rows]: chunks (uncond, cond), each of 2B rows."""

    def predict(x, sigma):
        b = x.shape[0] // 2
        cond = torch.cat([ctx[src].expand(b, -1, -1), ctx[tgt].expand(b, -1, -1)])
        null = ctx["null"].expand(2 * b, -1, -1)
        out = model(torch.cat([x, x]), torch.cat([null, cond]), controller, (False, True), controller.step)
        eu, ec = out.chunk(2)
        return eu + scale * (ec - eu)

    return predict


def cfg(eps_c, eps_u, scale=7.5):
    return lambda x, s: eps_u(x, s) + scale * (eps_c(x, s) - eps_u(x, s))


def test_edit_loop_source_branch_is_the_nmg_reconstruction():
    model, ctx, maps, eps = toy_setup()
    ctl = ac.MasaCtrl(pairs=1, total_steps=maps.steps, start_step=0, start_layer=0)
    res = nmg_edit.nmg_edit_sample(maps, eps("null"), pair_fn(model, ctx, ctl), ctl, grad_scale=50.0)
    ref = nmg_maps.nmg_sample(maps, eps("null"), cfg(eps("src"), eps("null")), grad_scale=50.0)
    assert torch.allclose(res.reconstruction, ref, atol=1e-5)
    assert not torch.allclose(res.edited, res.reconstruction, atol=1e-3)


def test_edit_loop_without_control_is_the_plain_target_branch():
    model, ctx, maps, eps = toy_setup()
    for ctl in (ac.MasaCtrl(pairs=1, total_steps=maps.steps, start_step=maps.steps),
                ac.PromptToPrompt(pairs=1, total_steps=maps.steps, cross=ac.CrossEdit("reweight"),
                                  cross_replace_steps=0.0, self_replace_steps=0.0)):
        res = nmg_edit.nmg_edit_sample(maps, eps("null"), pair_fn(model, ctx, ctl), ctl, grad_scale=50.0)
        plain = nmg_maps.ddim_sample(maps.latents[0], maps.sigmas, cfg(eps("tgt"), eps("null")))
        assert torch.allclose(res.edited, plain, atol=1e-5)


def test_identical_prompts_with_guided_edit_branch_reconstruct():
    model, ctx, maps, eps = toy_setup()
    mapper = pa.replacement_mapper(tok("a cat"), tok("a cat"))
    ctl = ac.PromptToPrompt(pairs=1, total_steps=maps.steps, cross=ac.CrossEdit("replace", mapper=mapper))
    res = nmg_edit.nmg_edit_sample(maps, eps("null"), pair_fn(model, ctx, ctl, tgt="src"), ctl,
                                   guide_edit_branch=True, grad_scale=50.0)
    assert torch.allclose(res.edited, res.reconstruction, atol=1e-5)
    # The paper's editing path leaves the edit branch unguided: identical prompts do not reconstruct.
    res2 = nmg_edit.nmg_edit_sample(maps, eps("null"), pair_fn(model, ctx, ctl, tgt="src"), ctl, grad_scale=50.0)
    assert not torch.allclose(res2.edited, res2.reconstruction, atol=1e-3)
