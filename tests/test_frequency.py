"""Host-free tests of AlignNoise stage 2 (``alignnoise_core.frequency``); anchors from ``WHUIR/AlignNoise`` ``utils/fi_utils.py``."""

import math

import pytest
import torch

from alignnoise_core import frequency as fq

# --------------------------------------------------------------------------------------------------
# Reference filters: the upstream Python loops (AlignNoise fi_utils 2-D, FreeInit freeinit_utils 3-D)
# --------------------------------------------------------------------------------------------------


def ref_filter_2d(H, W, kind, d_s=0.25, n=4, legacy_ideal=False):
    mask = torch.zeros(H, W)
    if d_s == 0:
        return mask
    if kind == "box":
        thr = round(int(H // 2) * d_s)  # reference: H for both axes
        mask[H // 2 - thr:H // 2 + thr, W // 2 - thr:W // 2 + thr] = 1.0
        return mask
    for h in range(H):
        for w in range(W):
            d2 = (2 * h / H - 1) ** 2 + (2 * w / W - 1) ** 2
            if kind == "butterworth":
                mask[h, w] = 1 / (1 + (d2 / d_s**2) ** n)
            elif kind == "gaussian":
                mask[h, w] = math.exp(-1 / (2 * d_s**2) * d2)
            else:
                mask[h, w] = 1 if d2 <= (d_s * 2 if legacy_ideal else d_s**2) else 0
    return mask


def ref_filter_3d(T, H, W, kind, d_s=0.25, d_t=0.25, n=4):
    mask = torch.zeros(T, H, W)
    if kind == "box":
        ts, tt = round(int(H // 2) * d_s), round(T // 2 * d_t)
        mask[T // 2 - tt:T // 2 + tt, H // 2 - ts:H // 2 + ts, W // 2 - ts:W // 2 + ts] = 1.0
        return mask
    for t in range(T):
        for h in range(H):
            for w in range(W):
                d2 = ((d_s / d_t) * (2 * t / T - 1)) ** 2 + (2 * h / H - 1) ** 2 + (2 * w / W - 1) ** 2
                if kind == "butterworth":
                    mask[t, h, w] = 1 / (1 + (d2 / d_s**2) ** n)
                elif kind == "gaussian":
                    mask[t, h, w] = math.exp(-1 / (2 * d_s**2) * d2)
                else:
                    mask[t, h, w] = 1 if d2 <= d_s**2 else 0
    return mask


def ref_freq_mix(x, noise, lpf, dims):
    """The reference ``freq_mix_2D``/``freq_mix_3d`` (fftshift layout), float64 for a tight comparison."""
    X = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=dims), dim=dims)
    N = torch.fft.fftshift(torch.fft.fftn(noise.double(), dim=dims), dim=dims)
    L = lpf.double()
    mixed = X * L + N * (1 - L)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real


# --------------------------------------------------------------------------------------------------
# Filter anchors (the reference's get_freq_filter statistics)
# --------------------------------------------------------------------------------------------------


def test_butterworth_anchors_64():
    L = fq.low_pass_filter((64, 64), "butterworth", d_s=0.25, order=4)
    assert L.shape == (64, 64) and L.dtype == torch.float32
    assert L[32, 32].item() == 1.0
    assert L[32, 24].item() == pytest.approx(0.5, abs=1e-7)
    assert L[32, 40].item() == pytest.approx(0.5, abs=1e-7)
    assert L[0, 0].item() == pytest.approx(9.5e-7, rel=0.01)
    assert L.sum().item() == pytest.approx(223.3137, abs=1e-3)
    assert (L > 0.5).float().mean().item() == pytest.approx(0.0471, abs=1e-4)
    row = [0.5, .7443, .909, .9772, .9961, .9996, 1, 1, 1, 1, 1, .9996, .9961, .9772, .909, .7443, .5]
    assert torch.allclose(L[32, 24:41], torch.tensor(row), atol=6e-5)


def test_gaussian_sum_64():
    L = fq.low_pass_filter((64, 64), "gaussian", d_s=0.25)
    assert L.sum().item() == pytest.approx(402.07, abs=5e-3)
    assert L[32, 32].item() == 1.0


def test_box_window_64():
    L = fq.low_pass_filter((64, 64), "box", d_s=0.25)
    expected = torch.zeros(64, 64)
    expected[24:40, 24:40] = 1.0
    assert torch.equal(L, expected)
    assert L.mean().item() == pytest.approx(0.0625)


def test_ideal_uses_fixed_radius_not_reference_typo():
    L = fq.low_pass_filter((64, 64), "ideal", d_s=0.25)
    assert L.mean().item() == pytest.approx(0.048, abs=1e-3)  # d² <= d_s²: radius 0.25
    legacy = ref_filter_2d(64, 64, "ideal", legacy_ideal=True)
    assert legacy.mean().item() == pytest.approx(0.393, abs=1e-3)  # the reference's d² <= 2·d_s
    assert torch.equal(L, ref_filter_2d(64, 64, "ideal"))


@pytest.mark.parametrize("kind", fq.FILTER_TYPES)
def test_zero_stop_frequency_is_all_zero(kind):
    assert torch.count_nonzero(fq.low_pass_filter((16, 24), kind, d_s=0.0)) == 0
    assert torch.count_nonzero(fq.low_pass_filter((4, 16, 16), kind, d_s=0.25, d_t=0.0)) == 0


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal"])
@pytest.mark.parametrize("hw", [(64, 64), (32, 48), (40, 24)])
def test_vectorised_equals_reference_loop_2d(kind, hw):
    L = fq.low_pass_filter(hw, kind, d_s=0.25, order=4)
    ref = ref_filter_2d(*hw, kind)
    assert torch.allclose(L, ref, rtol=0, atol=1e-7)


def test_box_equals_reference_for_square_and_uses_w_for_width():
    assert torch.equal(fq.low_pass_filter((32, 32), "box", d_s=0.25), ref_filter_2d(32, 32, "box"))
    L = fq.low_pass_filter((32, 64), "box", d_s=0.25)  # H=32 -> thr 4 rows; W=64 -> thr 8 columns
    rows, cols = torch.nonzero(L, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (12, 19)
    assert (cols.min().item(), cols.max().item()) == (24, 39)


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal", "box"])
def test_vectorised_equals_reference_triple_loop_3d(kind):
    L = fq.low_pass_filter((8, 16, 12), kind, d_s=0.25, order=4, d_t=0.5)
    ref = ref_filter_3d(8, 16, 12, kind, d_s=0.25, d_t=0.5)
    if kind == "box":  # reference box uses H for W too: compare on a square grid
        L = fq.low_pass_filter((8, 16, 16), kind, d_s=0.25, d_t=0.5)
        ref = ref_filter_3d(8, 16, 16, kind, d_s=0.25, d_t=0.5)
    assert torch.allclose(L, ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape", [(75, 63), (5, 9, 7), (1, 8, 8)])
def test_odd_sizes_centred_on_dc_and_hermitian(shape):
    L = fq.low_pass_filter(shape, "butterworth", d_s=0.25, d_t=0.25)
    centre = tuple(n // 2 for n in shape)
    assert L[centre].item() == 1.0 and L.max().item() == 1.0
    U = fq.low_pass_filter(shape, "butterworth", d_s=0.25, d_t=0.25, shifted=False)
    assert U.flatten()[0].item() == 1.0  # DC at index 0 in the raw FFT layout
    # Real, even filter: L(k) == L(-k) (mod n), so the mixed latent has no imaginary part to drop.
    mirrored = torch.roll(torch.flip(U, dims=tuple(range(U.ndim))), shifts=(1,) * U.ndim, dims=tuple(range(U.ndim)))
    assert torch.equal(U, mirrored)


def test_filter_cache_per_shape_and_params():
    a = fq.low_pass_filter((20, 28), "gaussian", 0.3)
    b = fq.low_pass_filter((20, 28), "gaussian", 0.3)
    c = fq.low_pass_filter((20, 30), "gaussian", 0.3)
    assert a is b and a is not c
    assert fq.low_pass_filter((20, 28), "gaussian", 0.4) is not a


def test_filter_validation():
    with pytest.raises(ValueError, match="Unknown filter"):
        fq.low_pass_filter((8, 8), "hann")
    with pytest.raises(ValueError, match="d_s"):
        fq.low_pass_filter((8, 8), "gaussian", d_s=-0.1)
    with pytest.raises(ValueError, match="shape"):
        fq.low_pass_filter((8,), "gaussian")


# --------------------------------------------------------------------------------------------------
# Frequency mix
# --------------------------------------------------------------------------------------------------


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("shape", [(2, 4, 16, 16), (1, 3, 15, 21), (1, 16, 4, 8, 10)])
def test_lpf_identities(shape):
    x, n = _pair(shape)
    spatial = shape[2:]
    ones, zeros = torch.ones(spatial), torch.zeros(spatial)
    assert (fq.freq_mix(x, n, ones) - x).abs().max() < 1e-6
    assert (fq.freq_mix(x, n, zeros) - n).abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal"])
@pytest.mark.parametrize("shape", [(2, 4, 32, 32), (1, 4, 33, 27), (1, 2, 6, 16, 12)])
def test_spectrum_identity(kind, shape):
    x, n = _pair(shape, 1)
    dims = fq.filter_dims(len(shape))
    L = fq.low_pass_filter(shape[2:], kind, d_s=0.3, d_t=0.3)
    mix = fq.freq_mix(x.double(), n.double(), L)
    lhs = torch.fft.fftshift(torch.fft.fftn(mix, dim=dims), dim=dims)
    X = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=dims), dim=dims)
    N = torch.fft.fftshift(torch.fft.fftn(n.double(), dim=dims), dim=dims)
    rhs = X * L.double() + N * (1 - L.double())
    assert (lhs - rhs).abs().max() < 1e-9
    # and equal to the reference implementation in float32 up to rounding
    assert (fq.freq_mix(x, n, L) - ref_freq_mix(x, n, L, dims)).abs().max() < 1e-5


def test_spectrum_identity_box_uses_hermitian_part():
    # The reference's half-open box window is not symmetric; taking .real (as the reference does)
    # applies its Hermitian-symmetrised version (L(k)+L(-k))/2. Documented, tested exactly here.
    x, n = _pair((1, 4, 32, 32), 2)
    L = fq.low_pass_filter((32, 32), "box", d_s=0.25, shifted=False).double()
    Ls = (L + torch.roll(torch.flip(L, (0, 1)), (1, 1), (0, 1))) / 2
    mix = fq.freq_mix(x.double(), n.double(), L, shifted=False)
    lhs = torch.fft.fftn(mix, dim=(-2, -1))
    rhs = torch.fft.fftn(x.double(), dim=(-2, -1)) * Ls + torch.fft.fftn(n.double(), dim=(-2, -1)) * (1 - Ls)
    assert (lhs - rhs).abs().max() < 1e-9


def test_mix_std_anchor():
    x, n = _pair((16, 4, 64, 64), 3)
    L = fq.low_pass_filter((64, 64))
    std = fq.freq_mix(x, n, L).std().item()
    predicted = math.sqrt(float((L**2 + (1 - L) ** 2).mean()))
    assert predicted == pytest.approx(0.9863, abs=1e-4)
    assert std == pytest.approx(predicted, abs=3e-3)


def test_5d_uses_3d_fft_over_time():
    x, n = _pair((1, 4, 8, 16, 16), 4)
    L3 = fq.low_pass_filter((8, 16, 16), "gaussian", d_s=0.25, d_t=0.25)
    mix = fq.freq_mix(x, n, L3)
    assert (mix - ref_freq_mix(x, n, L3, (-3, -2, -1))).abs().max() < 1e-5
    # not the same as filtering each frame separately in 2-D
    L2 = fq.low_pass_filter((16, 16), "gaussian", d_s=0.25)
    per_frame = fq.freq_mix(x.permute(0, 2, 1, 3, 4).reshape(8, 4, 16, 16), n.permute(0, 2, 1, 3, 4).reshape(8, 4, 16, 16), L2)
    assert (mix - per_frame.reshape(1, 8, 4, 16, 16).permute(0, 2, 1, 3, 4)).abs().max() > 0.1


# --------------------------------------------------------------------------------------------------
# Re-noising (sigma parameterisation)
# --------------------------------------------------------------------------------------------------

SD_SIGMA_MAX = 14.614640235900879  # ComfyUI ModelSamplingDiscrete, scaled_linear 0.00085..0.012


def test_renoise_matches_reference_add_noise_coefficients():
    x0 = torch.ones(1, 4, 2, 2)
    z = torch.zeros(1, 4, 2, 2)
    assert fq.renoise(x0, z, SD_SIGMA_MAX)[0, 0, 0, 0].item() == pytest.approx(0.06826, abs=2e-5)
    assert fq.renoise(z, x0, SD_SIGMA_MAX)[0, 0, 0, 0].item() == pytest.approx(0.99767, abs=2e-5)
    assert fq.alpha_bar(SD_SIGMA_MAX) == pytest.approx(0.0046601, rel=1e-3)


@pytest.mark.parametrize("kind,max_denoise", [("eps", True), ("eps", False), ("flow", False)])
def test_noise_for_start_inverts_sampler_noise_scaling(kind, max_denoise):
    x_start, latent = _pair((2, 4, 8, 8), 5)
    sigma = 1.0 if kind == "flow" else 7.3
    if kind == "flow":
        sigma = 0.97
    n = fq.noise_for_start(x_start, latent, sigma, kind, max_denoise)
    assert torch.allclose(fq.noise_scaling(sigma, n, latent, kind, max_denoise), x_start, atol=1e-5)


def test_sampler_start_roundtrip_eps():
    z, _ = _pair((1, 4, 8, 8), 6)
    x = fq.sampler_start(z, SD_SIGMA_MAX)
    assert torch.allclose(x * fq.vp_scale(SD_SIGMA_MAX), z, atol=1e-6)
    # with an empty latent and max_denoise the NOISE is the normalised latent itself
    assert torch.allclose(fq.noise_for_start(x, torch.zeros_like(x), SD_SIGMA_MAX), z, atol=1e-6)


def test_renoise_validation():
    with pytest.raises(ValueError, match="parameterization"):
        fq.renoise(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), 1.0, "v")
    with pytest.raises(ValueError, match="sigma"):
        fq.renoise(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), 0.0)


def test_fast_sampling_steps():
    assert fq.fast_sampling_steps(50, 2) == [25, 50]


# --------------------------------------------------------------------------------------------------
# The whole refinement
# --------------------------------------------------------------------------------------------------


def _outpaint_mask(h, w, border):
    m = torch.ones(1, h, w)
    m[:, border:h - border, border:w - border] = 0
    return m


def test_refine_source_region_keeps_renoised_latent_exactly():
    x0, noise = _pair((2, 4, 16, 16), 7)
    mask = _outpaint_mask(128, 128, 32)  # pixel mask, 8 px per latent cell
    x0c, noisec, maskc = x0.clone(), noise.clone(), mask.clone()
    out = fq.refine(x0, noise, SD_SIGMA_MAX, mask=mask, seed=3)
    z_t = fq.renoise(x0, noise, SD_SIGMA_MAX)
    m = fq.mask_to_latent(mask, x0).expand_as(x0)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out[m == 0], z_t[m == 0])
    mixed = fq.freq_mix(z_t, fq.fresh_noise(x0.shape, 3), fq.low_pass_filter((16, 16)))
    assert torch.equal(out[m == 1], mixed[m == 1])
    assert (out[m == 1] - z_t[m == 1]).abs().mean() > 0.1
    assert torch.equal(x0, x0c) and torch.equal(noise, noisec) and torch.equal(mask, maskc)  # inputs untouched


def test_refine_deterministic_by_seed_and_independent_of_global_rng():
    x0, noise = _pair((1, 4, 16, 16), 8)
    mask = _outpaint_mask(16, 16, 4)
    torch.manual_seed(0)
    a = fq.refine(x0, noise, SD_SIGMA_MAX, mask=mask, seed=11)
    torch.manual_seed(123)
    b = fq.refine(x0, noise, SD_SIGMA_MAX, mask=mask, seed=11)
    c = fq.refine(x0, noise, SD_SIGMA_MAX, mask=mask, seed=12)
    assert torch.equal(a, b)
    m = fq.mask_to_latent(mask, x0).expand_as(x0)
    assert torch.equal(a[m == 0], c[m == 0]) and not torch.equal(a[m == 1], c[m == 1])


def test_refine_without_mask_is_freeinit_and_empty_mask_is_renoise():
    x0, noise = _pair((1, 4, 12, 12), 9)
    z_t = fq.renoise(x0, noise, SD_SIGMA_MAX)
    whole = fq.refine(x0, noise, SD_SIGMA_MAX, mask=None, seed=1)
    assert torch.equal(whole, fq.freq_mix(z_t, fq.fresh_noise(x0.shape, 1), fq.low_pass_filter((12, 12))))
    assert torch.equal(fq.refine(x0, noise, SD_SIGMA_MAX, mask=torch.zeros(1, 96, 96), seed=1), z_t)


@pytest.mark.parametrize("shape", [(1, 16, 13, 17), (3, 3, 9, 9), (2, 4, 4, 10, 6)])
def test_refine_any_channels_odd_sizes_batch_and_5d(shape):
    x0, noise = _pair(shape, 10)
    spatial = shape[-2:]
    mask = torch.zeros(1, 1, *spatial) if len(shape) == 5 else torch.zeros(1, *spatial)
    mask[..., :, : spatial[1] // 2] = 1
    out = fq.refine(x0, noise, SD_SIGMA_MAX, mask=mask, seed=2, d_t=0.25)
    assert out.shape == x0.shape and torch.isfinite(out).all()
    m = fq.mask_to_latent(mask, x0).expand_as(x0)
    z_t = fq.renoise(x0, noise, SD_SIGMA_MAX)
    assert torch.equal(out[m == 0], z_t[m == 0])
    if len(shape) == 5:
        L = fq.low_pass_filter(shape[2:], "butterworth", 0.25, 4, 0.25)
        mixed = ref_freq_mix(z_t, fq.fresh_noise(shape, 2), L, (-3, -2, -1))
        assert (out[m == 1] - mixed[m == 1].float()).abs().max() < 1e-5


def test_refine_flow_parameterisation():
    x0, noise = _pair((1, 4, 8, 8), 12)
    out = fq.refine(x0, noise, 1.0, mask=None, d_s=1.0, filter_type="ideal", parameterization="flow")
    # sigma = 1 in flow models is pure noise: z_T = ẑ; an all-pass-ish ideal filter keeps most of it
    assert torch.allclose(fq.renoise(x0, noise, 1.0, "flow"), noise)
    assert out.shape == x0.shape


def test_mask_to_latent_and_validation():
    lat = torch.zeros(2, 4, 8, 8)
    assert fq.mask_to_latent(torch.ones(64, 64), lat).shape == (2, 1, 8, 8)
    assert fq.mask_to_latent(torch.ones(2, 1, 8, 8), lat).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="batch"):
        fq.mask_to_latent(torch.ones(3, 64, 64), lat)
    with pytest.raises(ValueError, match="initial noise"):
        fq.refine(lat, torch.zeros(1, 4, 8, 8), SD_SIGMA_MAX)
    with pytest.raises(ValueError, match="4-D"):
        fq.refine(torch.zeros(4, 8, 8), torch.zeros(4, 8, 8), SD_SIGMA_MAX)
