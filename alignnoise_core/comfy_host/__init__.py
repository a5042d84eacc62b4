"""ComfyUI-aware code of the pack: one module per feature, each importing ``comfy`` at module top.

Only ``nodes/`` imports this package (ComfyUI is then already initialised); everything else in
``alignnoise_core`` is host-free and imports without ComfyUI.

- ``common``: NOISE objects, progress/interrupt, model facts, the gradient session, one sampling pass.
- ``stage1``: AlignNoise stage 1 (attention balance) as a ComfyUI host of ``recipes``.
- ``stage2``: AlignNoise stage 2 (FrequencyNoiseRefine) NOISE.
- ``zoom``: the infinite-zoom keyframe loop.
- ``nmg``: Noise Map Guidance inversion and GUIDER.
- ``freesize``: FreeSizeOutpaint, one sampling pass per native-size window.
- ``inpaint_samplers``: the training-free inpainting samplers (RePaint, DDNM, DiffPIR, ΠGDM, MCG) as SAMPLERs.
"""
