"""Shared fixtures: tiny random diffusers models, fabricated conditioning, synthetic images, and the
ComfyUI integration layer (``comfy_env``; skipped with a printed reason when COMFYUI_PATH is unset)."""

from __future__ import annotations

import pytest
import torch

import comfy_harness
import tiny_models


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Every model in the suite is tiny: one intra-op thread is fastest and does not thrash a shared
    2-core machine (measured 3-5x faster than 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_unet4():
    return tiny_models.make_tiny_unet(in_channels=4)


@pytest.fixture(scope="session")
def tiny_unet9():
    return tiny_models.make_tiny_unet(in_channels=9)


@pytest.fixture(scope="session")
def tiny_vae():
    return tiny_models.make_tiny_vae()


@pytest.fixture
def fake_cond():
    """ComfyUI-style CONDITIONING made without CLIP: ``[[randn(1, 77, 768), {}]]``."""
    return comfy_harness.fake_conditioning()


@pytest.fixture
def synthetic_image():
    """``synthetic_image(batch, height, width, seed=0)`` -> IMAGE [B,H,W,3] in 0..1."""
    return comfy_harness.synthetic_image


@pytest.fixture
def comfy_env():
    """The initialised ComfyUI layer (see tests/comfy_harness.py); skips without COMFYUI_PATH."""
    comfy_harness.require_comfyui()
    return comfy_harness


@pytest.fixture
def inference_mode():
    """Run the test body as ComfyUI runs nodes: under torch.inference_mode()."""
    with torch.inference_mode():
        yield
