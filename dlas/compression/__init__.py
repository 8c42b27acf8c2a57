"""Layer 3 of the stack: model optimizations, each followed by fine-tuning.

One door ``get_compression(name, **kwargs)``; every compression validates its knobs
in the constructor, so a bad ``amount`` fails before any training starts.
"""

from __future__ import annotations

from dlas.compression.base import Compression, Finetune
from dlas.compression.channel_prune import ChannelPrune
from dlas.compression.fp16 import HalfPrecision
from dlas.compression.none import NoCompression
from dlas.compression.prune import UnstructuredPrune
from dlas.compression.quant import Int8Quantization
from dlas.registry import Registry

COMPRESSIONS: Registry[Compression] = Registry("compression")
for _cls in (NoCompression, UnstructuredPrune, ChannelPrune, Int8Quantization, HalfPrecision):
    COMPRESSIONS.register(_cls.name)(_cls)


def get_compression(name: str, **kwargs) -> Compression:
    return COMPRESSIONS.build(name, **kwargs)


__all__ = ["COMPRESSIONS", "Compression", "Finetune", "get_compression"]
