"""Pure-torch RADIO (v2.5 / C-RADIOv3) backbone, checkpoint loading and adaptor heads.

See ``README.md`` in this folder.
"""

from ovmap.encoders.radio.adaptors import MLP2
from ovmap.encoders.radio.checkpoint import (
    RADIO_RESOURCES,
    arch_from_checkpoint,
    available_adaptors,
    build_radio,
    load_adaptor_mlp,
    load_raw_checkpoint,
    resolve_checkpoint,
    teacher_names,
)
from ovmap.encoders.radio.vit import (
    CLIP_MEAN,
    CLIP_STD,
    Attention,
    RadioArch,
    RadioModel,
    RadioViT,
    cpe_position_embedding,
    patchify,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MLP2",
    "RADIO_RESOURCES",
    "Attention",
    "RadioArch",
    "RadioModel",
    "RadioViT",
    "arch_from_checkpoint",
    "available_adaptors",
    "build_radio",
    "cpe_position_embedding",
    "load_adaptor_mlp",
    "load_raw_checkpoint",
    "patchify",
    "resolve_checkpoint",
    "teacher_names",
]
