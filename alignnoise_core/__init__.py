"""alignnoise_core: host-free math of the alignnoise pack.

Padding and masks, the AlignNoise attention-balance loss and noise optimiser, FreeInit-style
frequency refinement, Noise Map Guidance, infinite-zoom interpolation, training-free inpainting
samplers and Poisson blending, written as plain torch functions. The methods' control flow is in
``recipes`` (written once); ``comfy_host/`` is the ComfyUI host (the only code that imports comfy,
used only by the pack's nodes), ``diffusers_bridge``/``pipeline`` the diffusers host of the CLI.
"""

__version__ = "0.1.0"
