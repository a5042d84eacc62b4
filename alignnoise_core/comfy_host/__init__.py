"""ComfyUI-aware glue, one module per feature (imports ``comfy`` at module top; imported by ``nodes/`` only)."""
