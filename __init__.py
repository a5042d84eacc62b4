"""alignnoise: ComfyUI nodes for consistent outpainting, real-image editing and infinite zoom.

ComfyUI imports this folder by file path and calls ``comfy_entrypoint`` (V3 API). There is
deliberately no ``NODE_CLASS_MAPPINGS``: its presence would make ComfyUI ignore the V3 entry point.

The host-free core is always imported under its plain name ``alignnoise_core`` (the name the
command line, a ``pip install -e`` of this folder and the tests use), never a second time as
``<path>.alignnoise_core``: one copy of every module, so types are shared (NMGGuidance
``isinstance``-checks the noise maps of NMGInvert whoever imported the core first). The node files
therefore import ``alignnoise_core`` absolutely.
"""

import importlib.util
import os
import sys

WEB_DIRECTORY = "./web"


def _load_core() -> None:
    here = os.path.realpath(os.path.join(os.path.dirname(__file__), "alignnoise_core"))
    plain = sys.modules.get("alignnoise_core")
    if plain is not None:
        if os.path.realpath(os.path.dirname(plain.__file__)) != here:
            raise ImportError(f"another 'alignnoise_core' is already imported (from {plain.__file__}); this pack's own "
                              f"copy is {here}. Uninstall the other copy (pip uninstall alignnoise) or install this "
                              f"folder with 'pip install -e'.")
        return
    spec = importlib.util.spec_from_file_location("alignnoise_core", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    core = importlib.util.module_from_spec(spec)
    sys.modules["alignnoise_core"] = core
    spec.loader.exec_module(core)


_load_core()


async def comfy_entrypoint():
    from .nodes import AlignNoiseExtension

    return AlignNoiseExtension()
