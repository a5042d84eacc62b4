"""Host-free tests of SeamlessComposite (``alignnoise_core.seamless``, ``poisson``, ``poisson_rect``).

Exactness anchors are closed-form solutions of the discrete 5-point Poisson problem (Pérez et al. 2003):
an offset that is discrete-harmonic everywhere is reproduced exactly, and a cosine offset along an
outpaint seam decays with the separable cosh profile.
"""

import math

import pytest
import torch

from alignnoise_core import poisson, poisson_rect, seamless

SOLVERS = ("auto", "multigrid")


def rand_image(B, H, W, C=3, seed=0, lo=0.2, hi=0.8):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(B, H, W, C, generator=g)


def grid(H, W):
    return torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")


def blob_mask(H, W, cy, cx, r):
    """An irregular (non-rectangular) hole: a disc with a notch."""
    i, j = grid(H, W)
    m = ((i - cy) ** 2 + (j - cx) ** 2 <= r * r) & ~((i > cy) & (j > cx + r / 3))
    return m.float()[None]


def frame_mask(H, W, top, bottom, left, right):
    m = torch.ones(1, H, W)
    m[:, top:H - bottom, left:W - right] = 0
    return m


def residual_of(out, dst, src, mask):
    """max |5-point Poisson residual| of ``out`` for the poisson method, per the module's equations."""
    f = out.movedim(-1, 1).double()
    g = src.movedim(-1, 1).double()
    U = (mask > 0).unsqueeze(1)
    H, W = f.shape[-2:]
    A = poisson.neighbour_count(H, W, f.device, f.dtype) * (f - g) - poisson.neighbour_sum(f - g)
    return float((A * U).abs().max())


# --------------------------------------------------------------------------------------------------
# Exactness against closed forms
# --------------------------------------------------------------------------------------------------


HARMONIC = {
    "constant": lambda i, j: 0.05 + 0 * i,
    "affine": lambda i, j: 0.002 * i - 0.003 * j + 0.01,
    "quadratic": lambda i, j: 2e-5 * (i * i - j * j),
    "product": lambda i, j: 3e-5 * i * j,
}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("offset", list(HARMONIC))
def test_hole_reproduces_discrete_harmonic_offset(offset, solver):
    H, W = 40, 52
    src = rand_image(1, H, W)
    i, j = grid(H, W)
    phi = HARMONIC[offset](i - 20, j - 26).float()
    dst = src + phi[None, :, :, None]
    mask = blob_mask(H, W, 20, 26, 13)
    out, changed, info = seamless.seamless_composite(dst, src, mask, "poisson", solver=solver)
    inside = mask[0] > 0
    err = (out - (src + phi[None, :, :, None]))[0][inside].abs().max()
    assert err <= 1e-5
    assert info["residual"] <= 1e-5
    assert torch.equal(out[0][~inside], dst[0][~inside])


@pytest.mark.parametrize("solver", ("auto", "multigrid"))
@pytest.mark.parametrize("sides", [(0, 0, 0, 9), (7, 0, 0, 0), (5, 6, 7, 8), (0, 5, 9, 0), (6, 0, 8, 7)])
def test_outpaint_border_reproduces_constant_offset(sides, solver):
    H, W = 36, 44
    src = rand_image(2, H, W, seed=1)
    dst = src + torch.tensor([0.07, -0.04, 0.02])
    mask = frame_mask(H, W, *sides)
    out, _, info = seamless.seamless_composite(dst, src, mask, "poisson", solver=solver)
    assert (out - dst).abs().max() <= 1e-5
    assert info["solver"].startswith("direct" if solver == "auto" else "multigrid")


@pytest.mark.parametrize("solver", SOLVERS)
def test_outpaint_strip_cosine_offset_closed_form(solver):
    """f − g = cos(π(i+½)/H)·cosh(θ(W−½−x))/cosh(θ(W−½−x₀)), cosh θ = 2 − cos(π/H), x₀ = last known column."""
    H, W, x0 = 24, 40, 15
    src = rand_image(1, H, W, seed=2)
    i, x = grid(H, W)
    wave = torch.cos(math.pi * (i + 0.5) / H)
    theta = math.acosh(2 - math.cos(math.pi / H))
    expected = wave * torch.cosh(theta * (W - 0.5 - x)) / math.cosh(theta * (W - 0.5 - x0))
    dst = src + (0.1 * wave).float()[None, :, :, None]
    mask = torch.zeros(1, H, W)
    mask[:, :, x0 + 1:] = 1
    out, _, _ = seamless.seamless_composite(dst, src, mask, "poisson", solver=solver)
    got = (out - src)[0, :, x0 + 1:, 0].double()
    assert (got - 0.1 * expected[:, x0 + 1:]).abs().max() <= 1e-5
    assert got[:, -1].abs().max() < got[:, 0].abs().max()   # it does decay towards the far border


@pytest.mark.parametrize("rect", [(5, 30, 7, 40), (0, 30, 0, 53), (10, 37, 12, 53), (5, 6, 7, 40), (5, 7, 7, 40),
                                  (0, 37, 20, 30), (3, 30, 0, 40)])
def test_direct_solver_matches_multigrid(rect):
    H, W = 37, 53
    U = torch.ones(1, 1, H, W, dtype=torch.bool)
    r0, r1, c0, c1 = rect
    U[..., r0:r1, c0:c1] = False
    assert poisson_rect.known_rectangle(U) == rect
    b = torch.randn(2, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * U
    direct, _ = seamless.solve_correction(b, U, tol=1e-12)
    mg, info = seamless.solve_correction(b, U, tol=1e-11, max_iter=300, solver="multigrid")
    assert info["residual"] <= 1e-11
    assert (direct - mg).abs().max() <= 1e-9


def test_known_rectangle_rejects_other_shapes():
    U = torch.ones(2, 1, 20, 20, dtype=torch.bool)
    U[:, :, 5:15, 5:15] = False
    assert poisson_rect.known_rectangle(U) == (5, 15, 5, 15)
    V = U.clone()
    V[1, :, 6, 6] = True       # items differ
    assert poisson_rect.known_rectangle(V) is None
    V[0, :, 6, 6] = True       # known set no longer a rectangle
    assert poisson_rect.known_rectangle(V) is None


def test_source_equal_destination_gives_destination():
    dst = rand_image(2, 30, 34, seed=4)
    for mask in (blob_mask(30, 34, 15, 17, 9), frame_mask(30, 34, 4, 4, 4, 4)):
        for method in seamless.METHODS:
            out, changed, _ = seamless.seamless_composite(dst, dst.clone(), mask, method)
            assert torch.equal(out, dst), method
            assert changed.sum() == 0


def test_maximum_principle_bounds_the_correction():
    H, W = 48, 48
    src = rand_image(1, H, W, seed=5)
    noise = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(6)) * 0.2 - 0.05
    dst = src + noise
    for mask in (blob_mask(H, W, 24, 24, 15), frame_mask(H, W, 9, 9, 9, 9)):
        out, _, _ = seamless.seamless_composite(dst, src, mask, "poisson")
        U = mask[0] > 0
        ring = (poisson.neighbour_sum(U.float()) > 0) & ~U
        for ch in range(3):
            e = noise[0, ..., ch][ring]
            c = (out - src)[0, ..., ch][U]
            assert c.min() >= e.min() - 1e-5 and c.max() <= e.max() + 1e-5
            assert c.max() - c.min() > 0.01          # a real, non-constant correction


def test_residual_target_on_random_data():
    H, W = 64, 80
    src, dst = rand_image(1, H, W, seed=7), rand_image(1, H, W, seed=8)
    mask = blob_mask(H, W, 30, 40, 22)
    out, _, info = seamless.seamless_composite(dst, src, mask, "poisson", tol=1e-6)
    assert info["residual"] <= 1e-6
    assert residual_of(out, dst, src, mask) <= 2e-6


# --------------------------------------------------------------------------------------------------
# Soft masks, band, bit-exactness, the other methods
# --------------------------------------------------------------------------------------------------


def test_soft_mask_is_corrected_source_alpha_composited():
    H, W = 40, 40
    src, dst = rand_image(1, H, W, seed=9), rand_image(1, H, W, seed=10)
    i, j = grid(H, W)
    r = ((i - 20) ** 2 + (j - 20) ** 2).sqrt()
    soft = ((14 - r) / 4).clamp(0, 1).float()[None]          # 1 inside r ≤ 10, ramp to 0 at r = 14
    assert ((soft > 0) & (soft < 1)).any()
    out, _, _ = seamless.seamless_composite(dst, src, soft, "poisson", tol=1e-7)
    binary, _, _ = seamless.seamless_composite(dst, src, (soft > 0).float(), "poisson", tol=1e-7)
    a = soft[..., None]
    assert (out - (a * binary + (1 - a) * dst)).abs().max() <= 1e-6
    # a 0/1 float mask is exactly the binary problem (same result as any other 0/1 encoding)
    hard = (soft > 0.5).float()
    out1, _, _ = seamless.seamless_composite(dst, src, hard, "poisson")
    out2, _, _ = seamless.seamless_composite(dst, src, hard.bool().float() * 1.0, "poisson")
    assert torch.equal(out1, out2)


def test_band_changes_only_pixels_within_band():
    H, W = 40, 44
    src, dst = rand_image(1, H, W, seed=11), rand_image(1, H, W, seed=12)
    mask = blob_mask(H, W, 20, 22, 10)
    zero, changed0, _ = seamless.seamless_composite(dst, src, mask, "poisson", band=0)
    assert torch.equal(zero[0][mask[0] == 0], dst[0][mask[0] == 0])
    assert bool((changed0 <= mask).all())
    out, changed, _ = seamless.seamless_composite(dst, src, mask, "poisson", band=3)
    region = torch.nn.functional.max_pool2d(mask[None], 7, 1, 3)[0]
    assert bool((changed <= region).all())
    assert torch.equal(out[0][region[0] == 0], dst[0][region[0] == 0])
    assert (changed - mask).clamp(min=0).sum() > 0           # some known pixels near the seam did change


def test_alpha_is_image_composite_masked():
    src, dst = rand_image(2, 20, 24, seed=13), rand_image(2, 20, 24, seed=14)
    soft = torch.rand(2, 20, 24, generator=torch.Generator().manual_seed(15))
    out, _, _ = seamless.seamless_composite(dst, src, soft, "alpha")
    m = soft[..., None]
    assert torch.equal(out, m * src + (torch.ones_like(m) - m) * dst)


def test_color_match_recovers_constant_offset():
    src = rand_image(1, 32, 32, seed=16)
    dst = src + torch.tensor([0.1, -0.05, 0.03])
    mask = blob_mask(32, 32, 16, 16, 9)
    out, _, info = seamless.seamless_composite(dst, src, mask, "color_match")
    assert (out - dst).abs().max() <= 1e-6
    # with a noisy offset it is the edge-weighted mean offset on the boundary ring
    noisy = src + torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(17)) * 0.1
    out, _, _ = seamless.seamless_composite(noisy, src, mask, "color_match")
    U = mask[0] > 0
    w = poisson.neighbour_sum(U.float()) * (~U)
    expect = ((noisy - src)[0] * w[..., None]).sum((0, 1)) / w.sum()
    assert torch.allclose((out - src)[0][U], expect.expand(int(U.sum()), 3), atol=1e-6)


def test_mixed_keeps_destination_texture_over_flat_source():
    dst = rand_image(1, 30, 30, seed=18)
    src = torch.full_like(dst, 0.5)
    mask = blob_mask(30, 30, 15, 15, 9)
    mixed, _, _ = seamless.seamless_composite(dst, src, mask, "mixed", tol=1e-7)
    plain, _, _ = seamless.seamless_composite(dst, src, mask, "poisson", tol=1e-7)
    assert (mixed - dst).abs().max() <= 1e-5
    assert (plain - dst).abs().max() > 0.1
    # and equals poisson when the destination is an offset copy of the source (equal gradients)
    dst2 = src + 0.1 * torch.rand(1, 30, 30, 3, generator=torch.Generator().manual_seed(19))
    a, _, _ = seamless.seamless_composite(dst2, dst2 - 0.05, mask, "mixed")
    b, _, _ = seamless.seamless_composite(dst2, dst2 - 0.05, mask, "poisson")
    assert (a - b).abs().max() <= 1e-6


def test_batch_items_are_independent_and_batch_one_broadcasts():
    H, W = 30, 36
    src, dst = rand_image(3, H, W, seed=20), rand_image(3, H, W, seed=21)
    masks = torch.cat([blob_mask(H, W, 15, 18, 8), frame_mask(H, W, 4, 5, 6, 7), blob_mask(H, W, 12, 14, 6)])
    out, changed, _ = seamless.seamless_composite(dst, src, masks, "poisson", tol=1e-7)
    for k in range(3):
        one, ch1, _ = seamless.seamless_composite(dst[k:k + 1], src[k:k + 1], masks[k:k + 1], "poisson", tol=1e-7)
        assert (out[k] - one[0]).abs().max() <= 2e-6
        assert torch.equal(changed[k], ch1[0])
    broadcast, _, _ = seamless.seamless_composite(dst, src[:1], masks[1], "poisson")
    single, _, _ = seamless.seamless_composite(dst[2:], src[:1], masks[1:2], "poisson")
    assert (broadcast[2] - single[0]).abs().max() <= 1e-6


def test_rgba_alpha_untouched_and_colour_as_rgb():
    src, dst = rand_image(1, 24, 28, C=4, seed=22), rand_image(1, 24, 28, C=4, seed=23)
    mask = blob_mask(24, 28, 12, 14, 7)
    out, _, _ = seamless.seamless_composite(dst, src, mask, "poisson")
    rgb, _, _ = seamless.seamless_composite(dst[..., :3], src[..., :3], mask, "poisson")
    assert torch.equal(out[..., 3], dst[..., 3])
    assert torch.equal(out[..., :3], rgb)


def test_empty_and_full_masks():
    src, dst = rand_image(2, 16, 16, seed=24), rand_image(2, 16, 16, seed=25)
    out, changed, info = seamless.seamless_composite(dst, src, torch.zeros(2, 16, 16), "poisson")
    assert torch.equal(out, dst) and changed.sum() == 0
    out, changed, info = seamless.seamless_composite(dst, src, torch.ones(16, 16), "poisson")
    assert torch.equal(out, src)
    assert any("no boundary" in n for n in info["notes"])


@pytest.mark.parametrize("bad", ["destination", "source", "mask"])
def test_nan_input_is_named(bad):
    inputs = {"destination": rand_image(1, 8, 8), "source": rand_image(1, 8, 8), "mask": torch.ones(1, 8, 8) * 0.5}
    inputs[bad] = inputs[bad].clone()
    inputs[bad].view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match=f"'{bad}'"):
        seamless.seamless_composite(inputs["destination"], inputs["source"], inputs["mask"])


def test_size_batch_method_errors():
    d = rand_image(2, 8, 8)
    with pytest.raises(ValueError, match="'source' is 9x8"):
        seamless.seamless_composite(d, rand_image(2, 8, 9), torch.ones(8, 8))
    with pytest.raises(ValueError, match="'mask' is 8x7"):
        seamless.seamless_composite(d, d, torch.ones(7, 8))
    with pytest.raises(ValueError, match="batch sizes differ"):
        seamless.seamless_composite(d, rand_image(3, 8, 8), torch.ones(8, 8))
    with pytest.raises(ValueError, match="method"):
        seamless.seamless_composite(d, d, torch.ones(8, 8), "laplace")
    with pytest.raises(ValueError, match="band"):
        seamless.seamless_composite(d, d, torch.ones(8, 8), band=-1)


def test_any_aspect_and_odd_sizes():
    for H, W in ((1, 17), (17, 1), (33, 7), (65, 129)):
        src = rand_image(1, H, W, seed=26)
        dst = src + 0.03
        mask = torch.zeros(1, H, W)
        mask[:, H // 3:, W // 2:] = 1
        if mask.sum() == H * W or mask.sum() == 0:
            continue
        out, _, _ = seamless.seamless_composite(dst, src, mask, "poisson", solver="multigrid")
        assert (out - dst).abs().max() <= 1e-5, (H, W)


def test_deterministic():
    src, dst = rand_image(1, 40, 40, seed=27), rand_image(1, 40, 40, seed=28)
    mask = blob_mask(40, 40, 20, 20, 12)
    a, _, _ = seamless.seamless_composite(dst, src, mask, "poisson")
    b, _, _ = seamless.seamless_composite(dst, src, mask, "poisson")
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# Against OpenCV (dev/test-only dependency)
# --------------------------------------------------------------------------------------------------


def _cv2_clone(cv2, np, src8, dst8, mask):
    m8 = (mask * 255).to(torch.uint8).numpy()
    ys, xs = np.nonzero(m8)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    centre = (int(x0 + (x1 - x0) // 2), int(y0 + (y1 - y0) // 2))   # keeps cv2's ROI where it is in src
    out = cv2.seamlessClone(src8.numpy()[..., ::-1].copy(), dst8.numpy()[..., ::-1].copy(), m8, centre,
                            cv2.NORMAL_CLONE)[..., ::-1]
    return torch.from_numpy(out.copy()).float()


@pytest.mark.parametrize("slope", [0.0, 0.0004])
def test_agrees_with_cv2_seamless_clone_where_conventions_match(slope):
    """OpenCV erodes the mask by 3 px (3 iterations of a 3x3 erosion) and solves on the mask's bounding
    box with the destination's gradients between the eroded mask and the box, so those pixels are soft
    rather than fixed. With the eroded mask as our Ω and an offset that is constant (exactly equivalent)
    or gently sloped (nearly so), both agree within one 8-bit level."""
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    H, W = 96, 112
    i, j = grid(H, W)
    base = 0.5 + 0.2 * torch.sin(i / 9) * torch.cos(j / 13)
    src = torch.stack([base, base.roll(5, 0), base.roll(7, 1)], -1)
    mask = blob_mask(H, W, 48, 56, 26)[0]
    omega = 1 - torch.nn.functional.max_pool2d((1 - mask)[None, None], 7, 1, 3)[0, 0]
    # destination content cv2 never reads (its destination gradients stop one pixel inside Ω)
    unseen = 1 - torch.nn.functional.max_pool2d((1 - mask)[None, None], 9, 1, 4)[0, 0]
    garbage = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(29))
    offset = torch.tensor([0.08, -0.06, 0.03]) + slope * (i - j)[..., None]
    dst = torch.where(unseen[..., None] > 0, garbage, (src + offset).clamp(0, 1))
    src8, dst8 = (src * 255).round().to(torch.uint8), (dst * 255).round().to(torch.uint8)
    ref = _cv2_clone(cv2, np, src8, dst8, mask)
    out, _, _ = seamless.seamless_composite((dst8.float() / 255)[None], (src8.float() / 255)[None], omega[None])
    ours = (out[0] * 255).round()
    depth = 0 if slope == 0 else 4
    inner = torch.nn.functional.max_pool2d((1 - omega)[None, None], 2 * depth + 1, 1, depth)[0, 0] == 0
    assert inner.sum() > 500
    assert (ours - ref).abs()[inner].max() <= 1
    assert (ours - ref).abs().mean() < 0.3
