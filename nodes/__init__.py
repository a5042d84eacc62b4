"""ComfyUI V3 node glue: schemas and thin ``execute`` methods, one file per node family."""

from comfy_api.latest import ComfyExtension, io

from . import (attention_balance, freesize, frequency_refine, inpaint_samplers, nmg, nmg_edit, outpaint, seamless,
               zoom)

NODE_LIST: list[type[io.ComfyNode]] = [
    *outpaint.NODES,
    *seamless.NODES,
    *attention_balance.NODES,
    *frequency_refine.NODES,
    *nmg.NODES,
    *nmg_edit.NODES,
    *zoom.NODES,
    *freesize.NODES,
    *inpaint_samplers.NODES,
]


class AlignNoiseExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODE_LIST
