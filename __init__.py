"""alignnoise: ComfyUI nodes for consistent outpainting, real-image editing and infinite zoom.

ComfyUI imports this folder by file path and calls ``comfy_entrypoint`` (V3 API). There is
deliberately no ``NODE_CLASS_MAPPINGS``: its presence would make ComfyUI ignore the V3 entry point.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import AlignNoiseExtension

    return AlignNoiseExtension()
