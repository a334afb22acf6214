"""The ``transformer`` backbone plugin: HuBERT/MERT architecture with the HF weight layout.

* :mod:`.params`   -- ``TransformerParams`` and the tiny/small/base/large presets;
* :mod:`.layers`   -- the building blocks (named like ``transformers.HubertModel``);
* :mod:`.backbone` -- ``TransformerBackbone``, the registered component;
* :mod:`.hf`       -- Hugging Face config/weight mapping (``TransformerBackbone.load_hf``/``save_hf``).
"""

from mertlab.hookspecs import hookimpl

from .backbone import TransformerBackbone
from .params import PRESETS, TransformerParams

__all__ = ["PRESETS", "TransformerBackbone", "TransformerParams"]


@hookimpl
def register_backbones(register):
    register(TransformerBackbone)
