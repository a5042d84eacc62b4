"""Host-free tests of Noise Map Guidance (alignnoise_core/nmg.py) on tiny random diffusers UNets.

Random weights make absolute reconstruction quality meaningless, so these tests pin the mechanism:
the VE formulas against the reference's VP code (diffusers DDIMScheduler), what the guidance changes,
and the gradient-scale normalisation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tiny_models
from alignnoise_core import nmg, nmg_maps

TABLE = nmg.discrete_sigmas()


def eps_fn(unet, ctx):
    """Host callable: VE latent + sigma -> eps, the way a diffusers pipeline would call its UNet."""

    def predict(x, sigma):
        t = nmg.sigma_to_timestep(sigma, TABLE)
        return unet(x * nmg.vp_scale(sigma), t, encoder_hidden_states=ctx).sample

    return predict


def cfg_fn(unet, cond, uncond, scale):
    fc, fu = eps_fn(unet, cond), eps_fn(unet, uncond)

    def predict(x, sigma):
        eu = fu(x, sigma)
        return eu + scale * (fc(x, sigma) - eu)

    return predict


@pytest.fixture(scope="module")
def micro_unet():
    """Two-level UNet (one attention level): the cheapest model that still has cross-attention."""
    return tiny_models.make_tiny_unet(
        4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 32))


@pytest.fixture(scope="module")
def ctx():
    return tiny_models.text_embeddings(1, seed=1), tiny_models.text_embeddings(1, seed=2)


def ddim_scheduler(steps=50):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False)
    s.set_timesteps(steps)
    return s


# ------------------------------------------------------------------------------------------------
# Formulas versus the reference (VP, diffusers DDIMScheduler)
# ------------------------------------------------------------------------------------------------


def test_schedule_helpers_match_diffusers():
    sched = ddim_scheduler(50)
    ac = sched.alphas_cumprod.double()
    assert torch.allclose(TABLE, ((1 - ac) / ac) ** 0.5, rtol=1e-4)  # diffusers: float32 cumprod
    sig = nmg.ddim_sigmas(50)
    assert len(sig) == 51 and float(sig[-1]) == 0.0
    expected = ((1 - ac[sched.timesteps]) / ac[sched.timesteps]) ** 0.5
    assert torch.allclose(sig[:-1].double(), expected, rtol=1e-4)
    assert [nmg.sigma_to_timestep(float(s), TABLE) for s in sig[:-1]] == sched.timesteps.tolist()
    assert math.isclose(nmg.vp_scale(float(sig[0])), float(ac[980]) ** 0.5, rel_tol=1e-6)


def test_ddim_step_equals_diffusers_ddim_step():
    sched = ddim_scheduler(50)
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    sig = nmg.ddim_sigmas(50)
    for i in (0, 10, 48):  # t = 980, 780, 20 (the last step to t=0 uses final_alpha_cumprod, not sigma 0)
        t = int(sched.timesteps[i])
        ref = sched.step(eps, t, z).prev_sample
        x = z / nmg.vp_scale(float(sig[i]))
        ours = nmg.ddim_step(x, eps, float(sig[i]), float(sig[i + 1])) * nmg.vp_scale(float(sig[i + 1]))
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def _reference_nmg_vp(unet, ctx_null, ctx_text, z, t, target_vp, s_g, s_m, s_t, sched):
    """The reference's per-step code (NMGPipeline.recon), written in VP with the diffusers scheduler."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        eps_u = unet(zz, t, encoder_hidden_states=ctx_null).sample
        prev = sched.step(eps_u, t, zz).prev_sample
        loss = F.l1_loss(prev, target_vp)
        grad = -torch.autograd.grad(loss, zz)[0]
    a_t = sched.alphas_cumprod[t]
    eps_cond = eps_u - (1 - a_t).sqrt() * grad * s_g
    eps_hat = eps_u + s_m * (eps_cond - eps_u)
    z_nm = sched.step(eps_hat.detach(), t, z).prev_sample
    with torch.no_grad():
        eu = unet(z_nm, t, encoder_hidden_states=ctx_null).sample
        ec = unet(z_nm, t, encoder_hidden_states=ctx_text).sample
    z_next = sched.step(eu + s_t * (ec - eu), t, z_nm).prev_sample  # the double step: same t again
    return z_nm, z_next


@pytest.mark.parametrize("i", [5, 30])
def test_step_a_and_double_step_match_reference_vp_code(micro_unet, ctx, i):
    """Step A (guided eps, gradient chain rule VE<->VP) and Step B (same-t double step) reproduce the
    reference's VP computation; ``reference_numel=None`` is the reference's mean-reduced L1."""
    text, null = ctx
    sched = ddim_scheduler(50)
    sig = nmg.ddim_sigmas(50)
    s, sn, t = float(sig[i]), float(sig[i + 1]), int(sched.timesteps[i])
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 8, 8, generator=g)
    target_vp = z * 0.9 + 0.1 * torch.randn(1, 4, 8, 8, generator=g)
    z_nm_ref, z_next_ref = _reference_nmg_vp(micro_unet, null, text, z, t, target_vp, 5000.0, 10.0, 7.5, sched)

    step = nmg.nmg_step(z / nmg.vp_scale(s), s, sn, target_vp / nmg.vp_scale(sn), eps_fn(micro_unet, null),
                        cfg_fn(micro_unet, text, null, 7.5), grad_scale=5000.0, noise_map_scale=10.0,
                        loss="l1", reference_numel=None)
    torch.testing.assert_close(step.a.x_guided * nmg.vp_scale(sn), z_nm_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step.x_next * nmg.vp_scale(sn), z_next_ref, rtol=1e-4, atol=1e-4)
    # Step B evaluated z^NM unchanged as a VP latent at the *current* level (re-read at sigma, not sigma_next).
    torch.testing.assert_close(step.x_text_input * nmg.vp_scale(s), z_nm_ref, rtol=1e-4, atol=1e-4)
    # Guidance did something measurable here (not a vacuous match).
    assert (step.a.eps_guided - step.a.eps_uncond).abs().mean() > 0.1


def test_guided_eps_is_sigma_times_ve_gradient():
    g = torch.Generator().manual_seed(0)
    eps_u, grad = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    sigma = 3.0
    out = nmg.guided_eps(eps_u, grad, sigma, 10.0, 5000.0)
    # Paper form: eps_u + s_m s_g sqrt(1 - a) dE/dz with dE/dz = sqrt(1 + sigma^2) dE/dx.
    a = 1 / (1 + sigma**2)
    paper = eps_u + 10.0 * 5000.0 * math.sqrt(1 - a) * (grad * math.sqrt(1 + sigma**2))
    torch.testing.assert_close(out, paper)


# ------------------------------------------------------------------------------------------------
# Mechanism
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s_g,s_m", [(0.0, 10.0), (5000.0, 0.0)])
def test_zero_scale_gives_plain_ddim_step_without_backward(micro_unet, ctx, s_g, s_m):
    _, null = ctx
    base = eps_fn(micro_unet, null)
    grad_flags = []

    def predict(x, sigma):
        grad_flags.append(torch.is_grad_enabled())
        return base(x, sigma)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g) * 5
    target = torch.randn(1, 4, 8, 8, generator=g) * 4
    a = nmg.step_a(x, 5.0, 4.0, target, predict, grad_scale=s_g, noise_map_scale=s_m)
    with torch.no_grad():
        plain = nmg.ddim_step(x, base(x, 5.0), 5.0, 4.0)
    torch.testing.assert_close(a.x_guided, plain)
    assert torch.equal(a.eps_guided, a.eps_uncond)
    assert grad_flags == [False]  # no autograd graph, no backward pass when guidance is off

    # The full step with guidance off is two plain DDIM steps: sigma->sigma' then (re-read) sigma->sigma'.
    step = nmg.nmg_step(x, 5.0, 4.0, target, predict, base, grad_scale=s_g, noise_map_scale=s_m)
    with torch.no_grad():
        x_b = plain * math.sqrt(1 + 5.0**2) / math.sqrt(1 + 4.0**2)
        expected = nmg.ddim_step(x_b, base(x_b, 5.0), 5.0, 4.0)
    torch.testing.assert_close(step.x_next, expected)


@pytest.mark.parametrize("loss", nmg.LOSSES)
def test_one_step_a_update_lowers_the_energy(micro_unet, ctx, loss):
    """z^NM (reference scales) is closer to the stored map than the unguided DDIM step."""
    _, null = ctx
    predict = eps_fn(micro_unet, null)
    sig = nmg.ddim_sigmas(50)
    for seed, i in ((0, 3), (1, 25), (2, 45)):
        s, sn = float(sig[i]), float(sig[i + 1])
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 4, 8, 8, generator=g) * math.sqrt(1 + s**2)
        target = torch.randn(1, 4, 8, 8, generator=g) * math.sqrt(1 + sn**2)
        a = nmg.step_a(x, s, sn, target, predict, grad_scale=5000.0, noise_map_scale=10.0, loss=loss)
        vp = nmg.vp_scale(sn)
        e_plain = float(nmg.nmg_energy(nmg.ddim_step(x, a.eps_uncond, s, sn) * vp, target * vp, loss))
        e_guided = float(nmg.nmg_energy(a.x_guided * vp, target * vp, loss))
        assert math.isclose(e_plain, a.energy, rel_tol=1e-4)
        assert e_guided < e_plain * (0.99 if i < 40 else 1.0), (seed, i, e_guided, e_plain)


def test_reconstruction_with_guidance_lands_closer_than_without(micro_unet, ctx):
    """Inversion then reconstruction (target prompt = source prompt, reference defaults, 50 steps): the
    guided run ends far closer to the source latent than the same double-step process with s_g = 0,
    which drifts on an untrained UNet."""
    text, null = ctx
    sig = nmg.ddim_sigmas(50)
    for seed in (0, 1):
        x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        maps = nmg_maps.ddim_invert(x0, sig, eps_fn(micro_unet, text), sigma_floor=float(TABLE[0]))
        with torch.no_grad():
            text_eps = cfg_fn(micro_unet, text, null, 10.0)
            unguided = nmg_maps.nmg_sample(maps, eps_fn(micro_unet, null), text_eps, grad_scale=0.0)
        guided = nmg_maps.nmg_sample(maps, eps_fn(micro_unet, null), text_eps, grad_scale=5000.0)
        err_guided = float((guided - x0).abs().mean())
        err_unguided = float((unguided - x0).abs().mean())
        assert err_guided < 0.25 * err_unguided, (seed, err_guided, err_unguided)
        assert torch.isfinite(guided).all()


def test_guidance_window_limits_step_a(micro_unet, ctx):
    text, null = ctx
    calls = []
    base_u = eps_fn(micro_unet, null)

    def uncond(x, sigma):
        calls.append(float(sigma))
        return base_u(x, sigma)

    sig = nmg.ddim_sigmas(8)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = nmg_maps.ddim_invert(x0, sig, eps_fn(micro_unet, text), sigma_floor=float(TABLE[0]))
    text_eps = eps_fn(micro_unet, text)
    out = nmg_maps.nmg_sample(maps, uncond, text_eps, start=0.25, end=0.75)
    assert calls == pytest.approx([float(s) for s in sig[2:6]])
    assert [nmg.guidance_active(i, 8, 0.25, 0.75) for i in range(8)] == [False, False] + [True] * 4 + [False] * 2
    # Window empty -> plain DDIM sampling with the text epsilon.
    calls.clear()
    with torch.no_grad():
        plain = nmg_maps.nmg_sample(maps, uncond, text_eps, start=0.0, end=0.0)
        torch.testing.assert_close(plain, nmg_maps.ddim_sample(maps.latents[0], sig, text_eps))
    assert calls == [] and not torch.allclose(out, plain)


# ------------------------------------------------------------------------------------------------
# Gradient-scale normalisation
# ------------------------------------------------------------------------------------------------


def test_energy_equals_reference_mean_loss_at_512px_sd_latent():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 64, 64, generator=g), torch.randn(1, 4, 64, 64, generator=g)
    torch.testing.assert_close(nmg.nmg_energy(a, b, "l1"), F.l1_loss(a, b))
    torch.testing.assert_close(nmg.nmg_energy(a, b, "l2"), F.mse_loss(a, b))
    torch.testing.assert_close(nmg.nmg_energy(a, b * 1e-5 + a, "smooth_l1"),
                               F.smooth_l1_loss(a, b * 1e-5 + a, beta=1e-4))
    torch.testing.assert_close(nmg.nmg_energy(a, b, "l1", reference_numel=None), F.l1_loss(a, b))


@pytest.mark.parametrize("loss", nmg.LOSSES)
def test_gradient_per_element_is_independent_of_latent_size_and_batch(loss):
    """s_g means the same at 256 px, 512 px, SDXL's 1024 px and in a batch: per-element dE/dz is the
    same for identical local content (the reference's mean reduction would divide it by numel)."""
    g = torch.Generator().manual_seed(0)
    tile_p, tile_t = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 4, 32, 32, generator=g)

    def grad(pred, target, n0=nmg.REFERENCE_NUMEL):
        pred = pred.clone().requires_grad_(True)
        (gr,) = torch.autograd.grad(nmg.nmg_energy(pred, target, loss, n0), pred)
        return gr

    g32 = grad(tile_p, tile_t)
    g64 = grad(tile_p.repeat(1, 1, 2, 2), tile_t.repeat(1, 1, 2, 2))
    g128 = grad(tile_p.repeat(1, 1, 4, 4), tile_t.repeat(1, 1, 4, 4))
    torch.testing.assert_close(g64[..., :32, :32], g32)
    torch.testing.assert_close(g128[..., 96:, 96:], g32)
    batch = grad(torch.cat([tile_p, -tile_p]), torch.cat([tile_t, tile_t]))
    torch.testing.assert_close(batch[:1], g32)
    # The reference's mean reduction would not be size-invariant: 4x weaker at 64x64 than at 32x32.
    m32, m64 = grad(tile_p, tile_t, None), grad(tile_p.repeat(1, 1, 2, 2), tile_t.repeat(1, 1, 2, 2), None)
    torch.testing.assert_close(m64[..., :32, :32] * 4, m32)
    # And at 64x64x4 (SD1.x, 512 px) the normalised energy is exactly the reference's.
    torch.testing.assert_close(g64, m64)


def test_guidance_strength_independent_of_latent_size():
    """With a linear toy eps, the eps correction per element is the same for 16x16 and 64x64 latents."""
    def toy(x, sigma):
        return 0.1 * x

    diffs = []
    for h in (16, 64):
        x = torch.ones(1, 4, h, h) * 3.0
        target = torch.zeros(1, 4, h, h)
        a = nmg.step_a(x, 2.0, 1.5, target, toy, grad_scale=5000.0, noise_map_scale=10.0)
        diffs.append(float((a.eps_guided - a.eps_uncond).mean()))
    assert diffs[0] > 0 and math.isclose(diffs[0], diffs[1], rel_tol=1e-5)


# ------------------------------------------------------------------------------------------------
# Inversion bookkeeping and input handling
# ------------------------------------------------------------------------------------------------


def test_inversion_with_exact_eps_reconstructs_and_keys_by_sigma():
    """A constant 'oracle' eps makes DDIM inversion + DDIM sampling exact: x_sigma = x0 + sigma * n."""
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    seen = []

    def oracle(x, sigma):
        seen.append(float(sigma))
        return n

    sig = nmg.ddim_sigmas(10)
    maps = nmg_maps.ddim_invert(x0, sig, oracle, sigma_floor=0.01, meta={"what": "test"})
    assert maps.steps == 10 and maps.shape == (1, 4, 8, 8)
    assert seen[0] == pytest.approx(0.01) and seen[1:] == pytest.approx([float(s) for s in sig.flip(0)[1:-1]])
    for i, s in enumerate(sig):
        torch.testing.assert_close(maps.latents[i], x0 + float(s) * n, rtol=1e-5, atol=1e-5)
    assert torch.equal(maps.latents[-1], x0)
    torch.testing.assert_close(nmg_maps.ddim_sample(maps.latents[0], sig, oracle), x0, rtol=1e-5, atol=1e-5)
    # Look-up by sigma tolerates float32 round-off, rejects neighbours.
    s3 = float(sig[3])
    assert maps.index(s3 * (1 + 3e-6)) == 3 and maps.index(s3 * 1.01) is None
    assert maps.latent_at(torch.tensor([s3])) is maps.latents[3]
    with pytest.raises(ValueError, match="same SIGMAS"):
        maps.require_index(s3 * 1.01)
    assert maps.check_schedule(sig) == 0 and maps.check_schedule(sig[4:]) == 4
    with pytest.raises(ValueError, match="do not match"):
        maps.check_schedule(nmg.ddim_sigmas(12))
    with pytest.raises(ValueError, match="do not match"):
        maps.check_schedule(torch.cat([sig[:3], sig[4:]]))


def test_bad_inputs_raise_clear_errors(micro_unet, ctx):
    _, null = ctx
    predict = eps_fn(micro_unet, null)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="differs from the inverted latent"):
        nmg.step_a(x, 2.0, 1.0, torch.randn(1, 4, 16, 16), predict)
    with pytest.raises(ValueError, match="loss must be one of"):
        nmg.nmg_energy(x, x, "huber")
    with pytest.raises(ValueError, match="grad_scale"):
        nmg.validate_params(-1.0, 10.0, 10.0, "l1", 0.0, 1.0)
    with pytest.raises(ValueError, match="start_percent"):
        nmg.validate_params(1.0, 10.0, 10.0, "l1", 0.8, 0.2)
    with pytest.raises(ValueError, match="descending"):
        nmg_maps.validate_schedule(nmg.ddim_sigmas(5).flip(0))
    with pytest.raises(ValueError, match="non-differentiable"):
        nmg.step_a(x, 2.0, 1.0, x, lambda z, s: predict(z, s).detach())


def test_inference_mode_inputs_deterministic_and_not_mutated(micro_unet, ctx):
    """As inside ComfyUI: inputs are inference tensors; the core leaves inference mode itself."""
    _, null = ctx
    predict = eps_fn(micro_unet, null)
    with torch.inference_mode():
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
        target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
        x_copy, t_copy = x.clone(), target.clone()
        r1 = nmg.nmg_step(x, 3.0, 2.0, target, predict, predict)
        r2 = nmg.nmg_step(x, 3.0, 2.0, target, predict, predict)
    assert torch.equal(r1.x_next, r2.x_next)
    assert torch.equal(x, x_copy) and torch.equal(target, t_copy)
    assert r1.a.grad.abs().sum() > 0
