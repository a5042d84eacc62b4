"""Host-free tests of the attention capture and of stage 1 on a tiny 9-channel diffusers UNet."""

import pytest
import torch
import torch.nn.functional as F

import tiny_models
from autograd_memory import saved_bytes
from alignnoise_core.attention import AttentionRecorder, explicit_attention, target_grid
from alignnoise_core.balance import tokens_from_mask
from alignnoise_core.diffusers_bridge import attention_levels, optimize_unet_noise
from test_balance import loop_loss

T0 = 981


def test_target_grid_any_size_and_aspect():
    assert target_grid((64, 64)) == (16, 16)
    assert target_grid((48, 80)) == (12, 20)
    assert target_grid((17, 33)) == (5, 9)  # stride-2 convs with padding 1 round up
    assert target_grid((128, 128)) == (32, 32)


def test_explicit_attention_matches_sdpa_and_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 12, 4 * 8, generator=g) for _ in range(3))
    out, probs = explicit_attention(q, k, v, heads=4)
    ref = F.scaled_dot_product_attention(*(t.view(2, 12, 4, 8).transpose(1, 2) for t in (q, k, v)))
    assert torch.allclose(out, ref.transpose(1, 2).reshape(2, 12, 32), atol=1e-5)
    assert probs.dtype == torch.float32 and probs.shape == (2, 4, 12, 12)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 12))


def test_explicit_attention_half_inputs_give_float32_probs():
    q = torch.randn(1, 6, 16).half()
    out, probs = explicit_attention(q, q, q, heads=2)
    assert probs.dtype == torch.float32 and out.dtype == torch.float16


def test_recorder_mean_over_layers_heads_and_chunks():
    rec = AttentionRecorder((2, 2), batch=2)
    a = torch.rand(4, 3, 4, 4)  # 2 chunks x 2 items, 3 heads
    b = torch.rand(2, 5, 4, 4)  # 1 chunk, 5 heads
    rec.record("x", a)
    rec.record("y", b)
    rec.finish_discovery()
    cap = rec.capture()
    for i in range(2):
        maps = torch.cat([a[i], a[2 + i], b[i]], 0)  # every map of item i
        assert torch.allclose(cap.probs[i], maps.mean(0), atol=1e-6)
    assert rec.target_keys == ["x", "y"]


# ------------------------------- tiny 9-channel diffusers UNet ------------------------------------


class _RecordAll:
    """Oracle processor (reference AttendExciteAttnProcessor style): explicit softmax everywhere."""

    def __init__(self, store, name):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        out, probs = explicit_attention(q, k, v, attn.heads, attn.scale)
        if encoder_hidden_states is None:
            self.store.append((self.name, probs))
        return attn.to_out[1](attn.to_out[0](out))


def _inputs(b=1, seed=0, hw=(16, 16)):
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    z = torch.randn(b, 4, h, w, generator=g)
    mask = torch.ones(b, 1, h, w)
    mask[:, :, h // 4 : h - h // 4, w // 4 : w - w // 4] = 0  # source square in the middle
    masked = torch.randn(b, 4, h, w, generator=g)
    concat = torch.cat([mask, masked], 1)
    ehs = tiny_models.text_embeddings(b, 32, seed)
    return z, mask, concat, ehs


def _oracle_loss(unet, z, mask, concat, ehs):
    store = []
    saved = {n: m.processor for n, m in unet.named_modules() if hasattr(m, "processor")}
    for n, m in unet.named_modules():
        if hasattr(m, "processor"):
            m.set_processor(_RecordAll(store, n))
    try:
        with torch.no_grad():
            unet(torch.cat([z, concat], 1), T0, encoder_hidden_states=ehs)
    finally:
        for n, m in unet.named_modules():
            if n in saved:
                m.set_processor(saved[n])
    grid = target_grid(z.shape[-2:])
    maps = [p for _, p in store if p.shape[-1] == grid[0] * grid[1]]
    assert len(maps) == 3  # tiny UNet: 1 down + 2 up self-attention layers at the 4x4 level
    S = torch.cat([p[0] for p in maps], 0).mean(0)  # reference: concat (layers x heads), mean
    tm = tokens_from_mask(mask, z.shape[-2:], grid)[0]
    return loop_loss(S.view(*grid, -1), tm.view(*grid))


def test_attention_levels_of_a_diffusers_unet(tiny_unet9):
    levels = attention_levels(tiny_unet9)
    assert sorted(levels) == [0, 1, 2, 3]
    assert levels[2] == [
        "down_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    ]  # execution order: the last entry is where the forward stops
    assert levels[3] == ["mid_block.attentions.0.transformer_blocks.0.attn1"]


def test_unknown_layout_discovers_the_level_from_token_counts(tiny_unet9, monkeypatch):
    import alignnoise_core.diffusers_bridge as db

    z, mask, concat, ehs = _inputs(seed=8)
    known = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=2, loss_threshold=-1)
    monkeypatch.setattr(db, "attention_levels", lambda unet: {})
    found = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=2, loss_threshold=-1)
    assert found.losses == known.losses and torch.equal(found.noise, known.noise)


def test_first_iteration_loss_equals_reference_oracle(tiny_unet9):
    z, mask, concat, ehs = _inputs()
    ref, ref_src, ref_out = _oracle_loss(tiny_unet9, z, mask, concat, ehs)
    r = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=1, loss_threshold=-1)
    assert r.grid == (4, 4)
    assert abs(r.losses[0][0] - float(ref)) < 1e-5
    assert abs(r.as_src_before[0] - float(ref_src)) < 1e-6


def test_early_stop_is_exact_and_skips_the_decoder_tail(tiny_unet9):
    z, mask, concat, ehs = _inputs(seed=1)
    calls = []
    hook = tiny_unet9.up_blocks[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        full = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=3, loss_threshold=-1, early_stop=False)
        n_full = len(calls)
        calls.clear()
        early = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=3, loss_threshold=-1)
        n_early = len(calls)
    finally:
        hook.remove()
    assert n_full == 3 and n_early == 0  # the forward stops before the last up block
    assert early.losses == full.losses
    assert torch.equal(early.noise, full.noise)


def test_unet_left_untouched_and_no_weight_grads(tiny_unet9):
    z, mask, concat, ehs = _inputs(seed=2)
    procs = {n: m.processor for n, m in tiny_unet9.named_modules() if hasattr(m, "processor")}
    x = torch.cat([z, concat], 1)
    with torch.no_grad():
        before = tiny_unet9(x, T0, encoder_hidden_states=ehs).sample
    optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=2, loss_threshold=-1)
    with torch.no_grad():
        after = tiny_unet9(x, T0, encoder_hidden_states=ehs).sample
    assert torch.equal(before, after)
    assert all(m.processor is procs[n] for n, m in tiny_unet9.named_modules() if hasattr(m, "processor"))
    assert all(p.grad is None and not p.requires_grad for p in tiny_unet9.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimisation_lowers_the_loss(tiny_unet9, seed):
    z, mask, concat, ehs = _inputs(seed=seed)
    r = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=10, loss_threshold=-1, final_eval=True)
    first = r.losses[0][0]
    assert min(l[0] for l in r.losses[1:]) < first
    # the returned noise (after the last update) scores better than the start
    again = optimize_unet_noise(tiny_unet9, r.noise, mask, T0, ehs, concat=concat, iterations=1, loss_threshold=-1)
    assert again.losses[0][0] < first
    assert (r.forwards, r.backwards) == (10, 10)


def test_stop_rule_and_pass_accounting_on_unet(tiny_unet9):
    z, mask, concat, ehs = _inputs(seed=0)
    probe = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=4, loss_threshold=-1)
    losses = [l[0] for l in probe.losses]
    k = min(range(1, 4), key=lambda j: losses[j])
    if min(losses[:k]) <= losses[k]:
        pytest.skip("no strictly improving iteration")
    calls = []
    hook = tiny_unet9.conv_in.register_forward_hook(lambda *a: calls.append(1))
    try:
        r = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=4, loss_threshold=losses[k] + 1e-6)
    finally:
        hook.remove()
    assert r.success == [True]
    assert (r.forwards, r.backwards, len(calls)) == (k + 1, k, k + 1)


def test_batch_two_equals_separate_runs_and_non_square(tiny_unet9):
    z, mask, concat, ehs = _inputs(b=2, seed=5, hw=(16, 24))
    rb = optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=2, loss_threshold=-1)
    assert rb.grid == (4, 6)
    for i in range(2):
        ri = optimize_unet_noise(
            tiny_unet9, z[i : i + 1], mask[i : i + 1], T0, ehs[i : i + 1], concat=concat[i : i + 1], iterations=2, loss_threshold=-1
        )
        assert abs(rb.losses[0][i] - ri.losses[0][0]) < 1e-5
        assert torch.allclose(rb.noise[i], ri.noise[0], atol=1e-4)


def test_cfg_chunks_average_over_cond_and_uncond(tiny_unet9):
    z, mask, concat, ehs = _inputs(seed=6)
    unc = torch.zeros_like(ehs)
    r = optimize_unet_noise(tiny_unet9, z, mask, T0, torch.cat([unc, ehs]), concat=concat, iterations=1, loss_threshold=-1)
    assert len(r.losses[0]) == 1 and r.losses[0][0] > 0


def test_four_channel_unet(tiny_unet4):
    z, mask, _, ehs = _inputs(seed=7)
    r = optimize_unet_noise(tiny_unet4, z, mask, T0, ehs, iterations=2, loss_threshold=-1)
    assert r.forwards == 2 and torch.isfinite(r.noise).all()


@pytest.mark.parametrize("early_stop", [True, False], ids=["early_stop", "full_forward"])
def test_gradient_checkpointing_same_result_less_saved_memory(tiny_unet9, early_stop):
    z, mask, concat, ehs = _inputs(seed=3)
    kw = dict(concat=concat, iterations=3, loss_threshold=-1, early_stop=early_stop)
    plain_bytes, plain = saved_bytes(lambda: optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, **kw))
    ckpt_bytes, ckpt = saved_bytes(
        lambda: optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, gradient_checkpointing=True, **kw))
    assert [l[0] for l in ckpt.losses] == pytest.approx([l[0] for l in plain.losses], abs=1e-6)
    assert torch.allclose(ckpt.noise, plain.noise, atol=1e-6)
    assert ckpt_bytes < 0.6 * plain_bytes  # only layer inputs (and the target-level transformers) kept


def test_gradient_checkpointing_flags_restored(tiny_unet9):
    z, mask, concat, ehs = _inputs(seed=4)
    flags = {n: (m.gradient_checkpointing, "_gradient_checkpointing_func" in vars(m))
             for n, m in tiny_unet9.named_modules() if hasattr(m, "gradient_checkpointing")}
    target = attention_levels(tiny_unet9)[2][0].rsplit(".transformer_blocks", 1)[0]  # a Transformer2DModel
    seen = {}
    hooks = [dict(tiny_unet9.named_modules())[n].register_forward_hook(
        lambda m, a, o, n=n: [seen.setdefault(n, m.gradient_checkpointing), None][1])
        for n in ("down_blocks.0", target)]
    try:
        optimize_unet_noise(tiny_unet9, z, mask, T0, ehs, concat=concat, iterations=1, loss_threshold=-1,
                            gradient_checkpointing=True)
    finally:
        for h in hooks:
            h.remove()
    # on during the optimisation, except on the target-level transformer whose attention is recorded
    assert seen == {"down_blocks.0": True, target: False}
    assert flags == {n: (m.gradient_checkpointing, "_gradient_checkpointing_func" in vars(m))
                     for n, m in tiny_unet9.named_modules() if hasattr(m, "gradient_checkpointing")}
