"""ComfyUI-aware glue, one module per feature (imported only by ``nodes/``)."""
