"""alignnoise_core: host-free math of the alignnoise pack.

Padding and masks, the AlignNoise attention-balance loss and noise optimiser, FreeInit-style
frequency refinement, Noise Map Guidance, and infinite-zoom interpolation, written as plain torch
functions. ``comfy_bridge`` is the only module that talks to ComfyUI (lazily); ``diffusers_bridge``
drives the same code on a diffusers UNet.
"""

__version__ = "0.1.0"
