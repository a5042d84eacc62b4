"""The catalogue of bad inputs the pack refuses: (id, where, bad input, message).

The README's "Bad input" table is this list (a host-free test keeps the two identical), and every
row is executed by ``test_bad_inputs.py`` (host-free: the CLI and the core checks the nodes call)
or ``test_comfy_bad_inputs.py`` (the nodes inside ComfyUI), which assert the message.
"""

CASES = [
    # id, where, bad input, message (a fragment of the error)
    ("pad_nan", "OutpaintPad", "NaN in `image`", "'image' contains 1 NaN or Inf value(s)"),
    ("pad_rank", "OutpaintPad", "`image` that is not [B,H,W,C]", "image must have shape [B,H,W,C]"),
    ("pad_grey", "OutpaintPad", "1-channel `image`", "must be RGB (C=3) or RGBA (C=4)"),
    ("pad_mask_size", "OutpaintPad", "`mask` of another size", "does not match the image size"),
    ("pad_mask_batch", "OutpaintPad", "`mask` batch 3 for 2 images", "does not match the image batch"),
    ("pad_mask_nan", "OutpaintPad", "NaN in `mask`", "'mask' contains"),
    ("pad_target", "OutpaintPad", "target smaller than the image", "smaller than the source"),
    ("balance_nan", "AttentionBalanceNoiseOptimize", "NaN in `latent_image`",
     "the 'latent_image' LATENT contains"),
    ("balance_no_mask", "AttentionBalanceNoiseOptimize", "no `mask` and no noise_mask",
     "needs to know which region is outpainted"),
    ("balance_full_mask", "AttentionBalanceNoiseOptimize", "all-ones mask", "covers the whole image (all ones)"),
    ("balance_mask_batch", "AttentionBalanceNoiseOptimize", "mask batch 3 for a batch-2 latent",
     "has batch 3 but the image/latent has batch 2"),
    ("balance_sigmas", "AttentionBalanceNoiseOptimize", "SIGMAS starting at 0", "the sigmas are empty or start at 0"),
    ("balance_model", "AttentionBalanceNoiseOptimize", "a model that is not SD1.x/SD2.x/SDXL",
     "supports SD1.x, SD2.x and SDXL"),
    ("refine_nan", "FrequencyNoiseRefine", "NaN in `samples`", "the 'samples' LATENT contains"),
    ("refine_noise_nan", "FrequencyNoiseRefine", "a NOISE with NaN values", "the 'noise' NOISE contains"),
    ("refine_noise_shape", "FrequencyNoiseRefine", "a NOISE made for another latent size", "was made for a latent"),
    ("refine_mask_nan", "FrequencyNoiseRefine", "NaN in `mask`", "'mask' contains"),
    ("refine_sigmas", "FrequencyNoiseRefine", "SIGMAS starting at 0", "start at 0: nothing to re-noise"),
    ("invert_mask", "NMGInvert", "a latent with a noise_mask", "inverts the whole latent"),
    ("invert_sigmas", "NMGInvert", "SIGMAS that do not end at 0", "SIGMAS that end at 0"),
    ("invert_nan", "NMGInvert", "NaN in `latent_image`", "the 'latent_image' LATENT contains"),
    ("guidance_maps", "NMGGuidance", "`noise_maps` not from NMGInvert", "noise_maps must come from NMGInvert"),
    ("guidance_sampler", "NMGGuidance", "an ancestral/SDE sampler", "injects fresh noise"),
    ("guidance_latent", "NMGGuidance", "a latent of another size than the inversion",
     "noise maps were inverted from a latent of shape"),
    ("guidance_noise", "NMGGuidance", "RandomNoise instead of DisableNoise", "connect DisableNoise"),
    ("zoom_batch", "ZoomOutpaintKeyframes", "a batch of 2 start images", "takes ONE start image"),
    ("zoom_nan", "ZoomOutpaintKeyframes", "NaN in `image`", "'image' contains"),
    ("zoom_size", "ZoomOutpaintKeyframes", "a start image whose sides are not multiples of 8",
     "must be multiples of 8"),
    ("interp_empty", "ZoomInterpolate", "an empty `keyframes` batch", "'keyframes' has 0 image(s) but at least 1"),
    ("interp_nan", "ZoomInterpolate", "NaN in `keyframes`", "'keyframes' contains"),
    ("interp_zoom", "ZoomInterpolate", "zoom_factor 1", "zoom factor must be > 1"),
    ("inpaint_no_mask", "RePaintSampler (all five inpainting SAMPLERs)", "a LATENT without noise_mask",
     "the LATENT has no noise_mask, so there is no known region to keep"),
    ("inpaint_full_mask", "RePaintSampler (all five)", "an all-ones noise_mask", "the noise_mask is all ones"),
    ("inpaint_empty_mask", "RePaintSampler (all five)", "an all-zeros noise_mask", "the noise_mask is all zeros"),
    ("inpaint_nan", "RePaintSampler (all five)", "NaN in the LATENT", "the known latent contains"),
    ("inpaint_sigmas", "RePaintSampler, DDNMSampler", "SIGMAS not longer than the jump length",
     "too short for jump_length 10"),
    ("inpaint_model", "RePaintSampler (all five)", "a model that samples neither as eps/v nor as flow",
     "model samples with"),
    ("inpaint_sampler", "RePaintSampler", "`sampler` = dpm_adaptive", "dpm_fast / dpm_adaptive plan over the whole schedule"),
    ("cli_missing", "CLI", "an image file that does not exist", "not found"),
    ("cli_not_inpaint", "CLI", "a 4-channel (non-inpainting) model", "4-channel UNet, not an inpainting UNet"),
    ("cli_passes", "CLI", "`--passes 0`", "passes must be a number in [1, 8]"),
    ("cli_nothing", "CLI", "no pads and no target size", "Nothing to outpaint"),
    ("cli_lr", "CLI", "`--balance-lr 5`", "balance learning rate must be a number in [0.0, 1.0]"),
]

IDS = [c[0] for c in CASES]
MESSAGES = {c[0]: c[3] for c in CASES}
