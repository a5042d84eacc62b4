"""Host-free tests of the training-free inpainting samplers (alignnoise_core.inpaint) on exact models."""

from __future__ import annotations

import math

import pytest
import torch

import alignnoise_core.inpaint as ip
from alignnoise_core.inpaint.gaussian import GaussianLatentPrior, posterior_metrics
from alignnoise_core.inpaint.schedule import get_schedule_jump, jump_transitions, schedule_nfe

SPACES = [ip.VE, ip.FLOW]


def _sigmas(space, steps, dtype=torch.float32):
    """A VE geometric schedule (14.6 -> 0.03) or a shifted flow schedule (1 -> 0), ending in 0."""
    if space is ip.VE:
        s = torch.exp(torch.linspace(math.log(14.6), math.log(0.03), steps, dtype=torch.float64))
        return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).to(dtype)
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return (3 * t / (1 + 2 * t)).to(dtype)


def _start(space, sigmas, known, batch, seed=3):
    s0 = float(sigmas[0])
    n = torch.randn((batch,) + tuple(known.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=known.dtype)
    scale = math.sqrt(1 + s0 * s0) if space is ip.VE else s0
    return known * space.alpha(s0) + n * scale, n


def _problem(dtype=torch.float32, lengthscales=(1.5, 2.5), shape=(2, 8, 8)):
    prior = GaussianLatentPrior(channels=shape[0], height=shape[1], width=shape[2], lengthscales=lengthscales,
                                variances=(1.0, 0.7), means=(0.3, -0.2), dtype=dtype)
    truth = prior.sample(1, torch.Generator().manual_seed(1))
    gen = torch.zeros(shape[1:])
    gen[2:6, 2:6] = 1
    known = truth.clone()
    known[:, :, gen > 0.5] = 9.0  # garbage in the generated region: no method may read it
    return prior, truth, known, gen.view(1, 1, *shape[1:]).to(dtype)


ALL = {
    "repaint": dict(jump_length=3, jump_n_sample=2),
    "repaint_adaptive": dict(schedule="adaptive", adaptive_every=3, adaptive_length=2, adaptive_u_min=2,
                             adaptive_u_max=3),
    "ddnm": dict(travel_length=3, travel_repeat=2),
    "diffpir": {},
    "pigdm": {},
    "mcg": {},
    "replacement": {},
    "builtin": {},
}


def _fn(name):
    return {"repaint_adaptive": ip.sample_repaint, "replacement": ip.sample_replacement,
            "builtin": ip.sample_builtin_inpaint}.get(name) or ip.SAMPLERS[name]


# -- schedule --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, entries, down, up", [
    ((250, 10, 10), 4571, 2410, 2160), ((100, 10, 10), 1721, 910, 810), ((50, 5, 5), 411, 230, 180),
    ((250, 10, 1), 251, 250, 0), ((250, 1, 10), 4733, 2491, 2241)])
def test_schedule_jump_anchors(args, entries, down, up):
    t_T, j, r = args
    ts = get_schedule_jump(t_T, 1, j, r)
    assert len(ts) == entries and ts[0] == t_T - 1 and ts[-1] == -1
    pairs = jump_transitions(t_T, j, r) if r == 1 or j < t_T else None
    steps = list(zip(ts[:-1], ts[1:]))
    assert sum(b < a for a, b in steps) == down and sum(b > a for a, b in steps) == up
    assert all(abs(a - b) == 1 for a, b in steps)
    if pairs is not None:
        assert sum(k > i for i, k in pairs) == down == schedule_nfe(t_T, j, r)
        assert min(min(p) for p in pairs) == 0 and max(max(p) for p in pairs) == t_T


def test_schedule_first_jump_and_nfe_defaults():
    ts = get_schedule_jump(250, 1, 10, 10)
    first_up = next(a for a, b in zip(ts[:-1], ts[1:]) if b > a)
    assert first_up == 230
    assert ip.expected_nfe("repaint", 50) == schedule_nfe(50, ip.DEFAULTS["repaint"]["jump_length"],
                                                          ip.DEFAULTS["repaint"]["jump_n_sample"])
    assert ip.expected_nfe("diffpir", 50) == 50


def test_sigmas_too_short_for_jump():
    prior, truth, known, mask = _problem()
    sig = _sigmas(ip.VE, 5)
    x, _ = _start(ip.VE, sig, known, 2)
    with pytest.raises(ValueError, match="too short for jump_length 10"):
        ip.sample_repaint(_forbidden, x, sig, known=known, mask=mask, space=ip.VE, jump_length=10, jump_n_sample=3)
    with pytest.raises(ValueError, match="too short"):
        ip.sample_ddnm(_forbidden, x, sig, known=known, mask=mask, space=ip.VE, travel_length=5, travel_repeat=2)


# -- the noise space -------------------------------------------------------------------------------------

@pytest.mark.parametrize("space, lo, hi", [(ip.VE, 0.5, 3.0), (ip.VE, 0.0, 1.0), (ip.FLOW, 0.2, 0.7),
                                           (ip.FLOW, 0.0, 1.0), (ip.FLOW, 0.5, 0.999)])
def test_renoise_gives_the_right_marginal(space, lo, hi):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200000,), 0.8, dtype=torch.float64)
    a, s = space.coeffs(lo)
    x_lo = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_hi = space.renoise(x_lo, lo, hi, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    a_hi, s_hi = space.coeffs(hi)
    assert float(x_hi.mean()) == pytest.approx(a_hi * 0.8, abs=4 * s_hi / math.sqrt(x0.numel()) + 1e-12)
    assert float(x_hi.var()) == pytest.approx(s_hi ** 2, rel=0.02)


def test_space_from_callables_matches_builtin():
    flow = ip.NoiseSpace(lambda s: 1 - s, lambda s: s, "flow2")
    x, x0 = torch.randn(3, 4), torch.randn(3, 4)
    n = torch.randn(3, 4)
    assert torch.equal(flow.renoise(x, 0.3, 0.6, n), ip.FLOW.renoise(x, 0.3, 0.6, n))
    assert torch.equal(flow.eps(x, x0, 0.4), (x - 0.6 * x0) / 0.4)
    assert torch.equal(ip.VE.eps(x, x0, 0.0), torch.zeros_like(x))
    # DDPM posterior step = the posterior mean for zero noise (VE, by hand: ComfyUI's DDPMSampler_step form)
    s, sn = 2.0, 1.0
    out = ip.VE.ddim_step(x, x0, s, sn, 1.0, lambda: torch.zeros_like(x))
    ac, acp = 1 / (s * s + 1), 1 / (sn * sn + 1)
    al = ac / acp
    eps = (x - x0) / s
    mu = (1 / al) ** 0.5 * (x / (1 + s * s) ** 0.5 - (1 - al) * eps / (1 - ac) ** 0.5) * (1 + sn * sn) ** 0.5
    assert torch.allclose(out, mu, atol=1e-5)


# -- the exact Gaussian model ----------------------------------------------------------------------------

def test_gaussian_denoiser_is_mmse_and_conditional_is_exact():
    prior = GaussianLatentPrior(channels=1, height=5, width=6, lengthscales=(1.2,), variances=(1.0,), means=(0.4,),
                                dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = prior.sample(4000, g)
    for space, sig in ((ip.VE, 0.7), (ip.FLOW, 0.6)):
        a, s = space.coeffs(sig)
        x = a * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        err = prior.denoise(x, torch.tensor([sig]), space) - x0
        lam = prior.spectrum
        assert float(err.pow(2).mean()) == pytest.approx(float((lam * s * s / (a * a * lam + s * s)).mean()), rel=0.05)
        # orthogonality: the MMSE error is uncorrelated with the observation
        corr = ((err - err.mean(0)) * (x - x.mean(0))).mean(0) / (err.std(0) * x.std(0))
        assert float(corr.abs().max()) < 0.06
    gen = torch.zeros(5, 6)
    gen[1:4, 2:5] = 1
    resid, means, variances = [], [], None
    for k in range(600):
        mu_c, var_c = prior.conditional(x0[k], gen)
        resid.append((x0[k] - mu_c)[:, gen > 0.5])
        variances = var_c[:, gen > 0.5]
        assert torch.equal(mu_c[:, gen < 0.5], x0[k][:, gen < 0.5])
    resid = torch.stack(resid).reshape(600, -1)
    known_vals = x0[:600][:, :, gen < 0.5].reshape(600, -1)
    assert float(resid.mean(0).abs().max()) < 4 * float(variances.max().sqrt()) / math.sqrt(600)
    assert torch.allclose(resid.var(0), variances.reshape(-1), rtol=0.2)
    cross = (resid - resid.mean(0)).T @ (known_vals - known_vals.mean(0)) / 600
    assert float(cross.abs().max()) < 0.1


def _forbidden(*args, **kwargs):
    raise AssertionError("the model was called before the inputs were validated")


# -- exact identities --------------------------------------------------------------------------------------

@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_repaint_r1_equals_its_base_sampler(space):
    prior, truth, known, mask = _problem()
    sig = _sigmas(space, 12)
    x, _ = _start(space, sig, known, 3)
    model = prior.model(space)
    for kw in ({}, {"eta": 0.3}):
        a = ip.sample_repaint(model, x, sig, known=known, mask=mask, space=space, jump_length=4, jump_n_sample=1,
                              generator=torch.Generator().manual_seed(5), **kw)
        b = ip.sample_replacement(model, x, sig, known=known, mask=mask, space=space,
                                  generator=torch.Generator().manual_seed(5), **kw)
        assert torch.equal(a, b)
    # with a host step function too (here an Euler step)
    euler = lambda xx, i, k, x0: xx + (xx - x0) / sig[i] * (sig[k] - sig[i])
    a = ip.sample_repaint(model, x, sig, known=known, mask=mask, space=space, jump_n_sample=1, step_fn=euler,
                          generator=torch.Generator().manual_seed(5))
    b = ip.sample_replacement(model, x, sig, known=known, mask=mask, space=space, step_fn=euler,
                              generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = ip.sample_repaint(model, x, sig, known=known, mask=mask, space=space, jump_length=4, jump_n_sample=2,
                          generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_mcg_step0_equals_replacement(space, eta):
    prior, truth, known, mask = _problem()
    sig = _sigmas(space, 10)
    x, _ = _start(space, sig, known, 3)
    model = prior.model(space)
    a = ip.sample_mcg(model, x, sig, known=known, mask=mask, space=space, step=0.0, eta=eta,
                      generator=torch.Generator().manual_seed(2))
    b = ip.sample_replacement(model, x, sig, known=known, mask=mask, space=space, eta=eta,
                              generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    c = ip.sample_mcg(model, x, sig, known=known, mask=mask, space=space, step=0.5, eta=eta,
                      generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_diffpir_small_sigma_n_is_a_hard_x0_paste(space):
    prior, truth, known, mask = _problem(dtype=torch.float64)
    sig = _sigmas(space, 10, torch.float64)
    x_init, _ = _start(space, sig, known, 3)
    model = prior.model(space)
    zeta = 0.4
    got = ip.sample_diffpir(model, x_init, sig, known=known, mask=mask, space=space, sigma_n=1e-7, zeta=zeta,
                            generator=torch.Generator().manual_seed(4))
    # by hand: x̂0 = paste of y (not on the last step), ε̂ from x̂0, then the ζ step
    g = torch.Generator().manual_seed(4)
    x = x_init
    for i in range(len(sig) - 1):
        x0 = model(x, sig[i])
        if i < len(sig) - 2:
            x0 = mask * x0 + (1 - mask) * known
        a, s = space.coeffs(sig[i])
        an, sn = space.coeffs(sig[i + 1])
        eps = (x - a * x0) / s
        x = an * x0
        if sn > 0:
            x = x + sn * (math.sqrt(1 - zeta) * eps + math.sqrt(zeta) * torch.randn(x.shape, generator=g).to(x.dtype))
    want = mask * x + (1 - mask) * known
    assert torch.allclose(got, want, atol=1e-6)


# -- variance anchors of the η-mix samplers (dense steps, 2-cell toy with an independent prior) -------------

@pytest.mark.parametrize("method, kw, factor", [
    ("ddnm", dict(eta=0.85, travel_length=1, travel_repeat=1), (1 + math.sqrt(1 - 0.85 ** 2)) / 2),  # 0.763
    ("ddnm", dict(eta=0.0, travel_length=1, travel_repeat=1), 1.0),
    ("diffpir", dict(zeta=1.0), 0.5),
    ("diffpir", dict(zeta=0.5), (1 + math.sqrt(0.5)) / 2)])
def test_eta_mix_dense_step_variance(method, kw, factor):
    v = 0.8
    prior = GaussianLatentPrior(channels=1, height=1, width=2, lengthscales=(0,), variances=(v,), means=(0.5,),
                                dtype=torch.float64)
    steps = 800
    sig = torch.cat([torch.exp(torch.linspace(math.log(80), math.log(0.002), steps, dtype=torch.float64)),
                     torch.zeros(1, dtype=torch.float64)])
    known = torch.tensor([1.3, 0.5], dtype=torch.float64).view(1, 1, 1, 2)
    mask = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    x, _ = _start(ip.VE, sig, known, 4000, seed=11)
    out = ip.SAMPLERS[method](prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE,
                              generator=torch.Generator().manual_seed(12), **kw)
    assert float(out[..., 1].var()) == pytest.approx(factor * v, rel=0.05)
    assert torch.equal(out[..., 0], torch.full_like(out[..., 0], 1.3))


# -- every method on the exact model -----------------------------------------------------------------------

@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", list(ALL))
def test_independent_prior_returns_the_prior(space, name):
    """With S = I the known cells carry no information: the unknown cells must follow the prior, up to the
    base sampler's own variance factor (the η-mix anchors: DDNM η = 0.85 -> 0.763, DiffPIR ζ = 1 -> 0.5)."""
    prior = GaussianLatentPrior(channels=2, height=4, width=4, lengthscales=(0,), variances=(1.0, 0.5),
                                means=(0.3, -0.4))
    truth = prior.sample(1, torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, :] = 1
    sig = _sigmas(space, 100)  # fine steps: DDPM-type steps under-disperse on coarse flow schedules
    fill = torch.where(mask > 0, prior.mean.float(), truth)  # the start must not leak the unknown truth
    x, _ = _start(space, sig, fill, 1500)
    out = _fn(name)(prior.model(space), x, sig, known=truth, mask=mask, space=space,
                    generator=torch.Generator().manual_seed(1), **ALL[name])
    unk = out[:, :, 1:3, :]
    want_mean = prior.mean[:, 1:3, :].float()
    want_var = prior.spectrum[:, 1:3, :].float()
    assert float((unk.mean(0) - want_mean).abs().max()) < 0.12
    ratio = float(unk.var(0).mean() / want_var.mean())
    factor = {"ddnm": 0.763, "diffpir": 0.5}.get(name, 1.0)
    assert 0.75 * factor < ratio < 1.25 * factor, ratio


@pytest.mark.parametrize("name", list(ALL))
def test_known_region_is_exact_and_deterministic(name):
    prior, truth, known, mask = _problem()
    soft = mask.clone()
    soft[..., 1, :] = 0.4  # a feathered row inside the known region
    sig = _sigmas(ip.VE, 10)
    x, _ = _start(ip.VE, sig, known, 2)
    fn = _fn(name)
    run = lambda seed, m: fn(prior.model(ip.VE), x, sig, known=known, mask=m, space=ip.VE,
                             generator=torch.Generator().manual_seed(seed), **ALL[name])
    a, b, c = run(0, mask), run(0, mask), run(1, mask)
    assert torch.equal(a, b)
    if name != "pigdm":  # ΠGDM at η = 0 is deterministic given x
        assert not torch.equal(a, c)
    k = (mask == 0).expand_as(a)
    assert torch.equal(a[k], known.expand_as(a)[k])
    assert bool(torch.isfinite(a).all())
    s = run(0, soft)
    ks = (soft == 0).expand_as(s)
    assert torch.equal(s[ks], known.expand_as(s)[ks])


def test_methods_beat_plain_replacement_on_a_correlated_prior():
    """On a correlated prior the methods' corrections must move the mean towards the exact posterior."""
    prior, truth, known, mask = _problem(lengthscales=(2.5, 3.0))
    mu_c, var_c = prior.conditional(truth[0], mask[0, 0])
    sig = _sigmas(ip.VE, 20)
    x, noise = _start(ip.VE, sig, known, 200)
    model = prior.model(ip.VE)
    err = {}
    for name, kw in [("builtin", {"noise": noise}), ("ddnm", {}), ("pigdm", {}), ("mcg", {}),
                     ("repaint", dict(jump_length=5, jump_n_sample=5))]:
        out = _fn(name)(model, x, sig, known=known, mask=mask, space=ip.VE, generator=torch.Generator().manual_seed(0),
                        **kw)
        err[name] = posterior_metrics(out, mu_c, var_c, prior.mean, mask[0, 0])["mean_error"]
    for name in ("ddnm", "pigdm", "mcg", "repaint"):
        assert err[name] < 0.8 * err["builtin"], err


# -- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ALL))
def test_bad_input_is_refused_before_any_model_call(name):
    prior, truth, known, mask = _problem()
    sig = _sigmas(ip.VE, 12)
    x, _ = _start(ip.VE, sig, known, 2)
    fn = _fn(name)
    run = lambda **kw: fn(_forbidden, **{**dict(x=x, sigmas=sig, known=known, mask=mask, space=ip.VE), **kw},
                          **ALL[name])
    with pytest.raises(ValueError, match="all ones"):
        run(mask=torch.ones_like(mask))
    with pytest.raises(ValueError, match="all zeros"):
        run(mask=torch.zeros_like(mask))
    with pytest.raises(ValueError, match="noise_mask has shape"):
        run(mask=mask[..., :4])
    with pytest.raises(ValueError, match="known latent has shape"):
        run(known=known[:, :1, :4])
    bad = known.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="known latent contains 1 NaN"):
        run(known=bad)
    with pytest.raises(ValueError, match="latent .sampler input x. contains"):
        run(x=x * float("nan"))
    with pytest.raises(ValueError, match="no noise_mask"):
        run(mask=None)
    with pytest.raises(ValueError, match="SIGMAS"):
        run(sigmas=sig[:1])


def test_validate_returns_the_expanded_mask_and_callback_counts_nfe():
    prior, truth, known, mask = _problem()
    sig = _sigmas(ip.VE, 12)
    x, _ = _start(ip.VE, sig, known, 2)
    m = ip.validate(x, sig, known, mask)
    assert m.shape == x.shape
    seen, stats = [], {}
    ip.sample_repaint(prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE, jump_length=3,
                      jump_n_sample=2, callback=lambda d: seen.append(d["i"]), stats=stats)
    assert seen == list(range(ip.expected_nfe("repaint", 12, jump_length=3, jump_n_sample=2))) and stats["nfe"] == len(seen)


def test_mask_fn_is_used_per_step():
    """Differential-diffusion style: a per-step mask that keeps everything known until the last step."""
    prior, truth, known, mask = _problem()
    sig = _sigmas(ip.VE, 8)
    x, _ = _start(ip.VE, sig, known, 2)
    calls = []

    def mask_fn(sigma):
        calls.append(float(sigma))
        return mask
    a = ip.sample_ddnm(prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE, mask_fn=mask_fn,
                       travel_length=1, travel_repeat=1, generator=torch.Generator().manual_seed(0))
    b = ip.sample_ddnm(prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE,
                       travel_length=1, travel_repeat=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(calls) == 8
    wider = mask.clone()
    wider[..., 1:7, 1:7] = 1
    c = ip.sample_ddnm(prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE, mask_fn=lambda s: wider,
                       travel_length=1, travel_repeat=1, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, c)
    k = (mask == 0).expand_as(c)
    assert torch.equal(c[k], known.expand_as(c)[k])  # the final paste uses the base mask


def test_inpaint_package_is_host_free_and_packaged():
    import os
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import alignnoise_core.inpaint, alignnoise_core.inpaint.gaussian, sys\n"
            "assert not [m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', 'comfy_api'))]\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert "alignnoise_core.inpaint" in packages
    for path in (root / "alignnoise_core" / "inpaint").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path.name


def test_function_defaults_are_the_node_defaults():
    import inspect

    for name, params in ip.DEFAULTS.items():
        sig = inspect.signature(ip.SAMPLERS[name])
        for key, value in params.items():
            assert sig.parameters[key].default == value, (name, key)


def test_adaptive_resampling_reports_its_work():
    prior, truth, known, mask = _problem(lengthscales=(2.5, 3.0))
    sig = _sigmas(ip.VE, 20)
    x, _ = _start(ip.VE, sig, known, 8)
    stats = {}
    ip.sample_repaint(prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE, schedule="adaptive",
                      adaptive_every=4, adaptive_length=3, adaptive_u_min=2, adaptive_u_max=4, stats=stats,
                      generator=torch.Generator().manual_seed(0))
    # triggers at steps 4, 8, 12 (first 60 % of 20); each runs 1..3 resamplings of 3 model steps
    assert 3 <= stats["resamplings"] <= 9
    assert stats["nfe"] == 20 + 3 * stats["resamplings"]
    assert stats["nfe"] <= ip.expected_nfe("repaint", 20, schedule="adaptive", adaptive_every=4, adaptive_length=3,
                                           adaptive_u_max=4)
    assert stats["accepted"] >= 3 * 8  # the u_min rule keeps the first candidate of every trigger


def test_ddnm_plus_reduces_to_ddnm_and_differs_with_measurement_noise():
    prior, truth, known, mask = _problem()
    sig = _sigmas(ip.VE, 12)
    x, _ = _start(ip.VE, sig, known, 3)
    run = lambda sy: ip.sample_ddnm(prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE, sigma_y=sy,
                                    travel_length=3, travel_repeat=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(0.0), run(1e-9))
    assert not torch.allclose(run(0.0), run(0.3), atol=1e-3)


@pytest.mark.parametrize("name", ["repaint", "ddnm", "diffpir", "pigdm", "mcg"])
def test_split_sigmas_end_with_the_known_latent_at_that_level(name):
    """SIGMAS that stop at σ > 0 (SplitSigmas) hand on α·y + s·n in the known region, not a clean y."""
    prior, truth, known, mask = _problem()
    sig = _sigmas(ip.VE, 24)[:13]
    last = float(sig[-1])
    x, _ = _start(ip.VE, sig, known, 64)
    out = ip.SAMPLERS[name](prior.model(ip.VE), x, sig, known=known, mask=mask, space=ip.VE,
                            generator=torch.Generator().manual_seed(0), **ALL[name])
    k = (mask == 0).expand_as(out)
    resid = (out - known)[k]
    assert float(resid.std()) == pytest.approx(last, rel=0.05)
    assert abs(float(resid.mean())) < 4 * last / math.sqrt(resid.numel())


@pytest.mark.parametrize("name", ["pigdm", "mcg"])
def test_gradient_methods_run_under_inference_mode(name):
    """ComfyUI runs nodes under torch.inference_mode(): the VJP must still work (inputs made inside it)."""
    prior, truth, known, mask = _problem()
    sig = _sigmas(ip.VE, 8)
    x, _ = _start(ip.VE, sig, known, 2)
    run = lambda xx, kk, mm: ip.SAMPLERS[name](prior.model(ip.VE), xx, sig, known=kk, mask=mm, space=ip.VE,
                                               generator=torch.Generator().manual_seed(0))
    want = run(x, known, mask)
    with torch.inference_mode():
        got = run(x.clone(), known.clone(), mask.clone())
    assert torch.equal(got, want)
