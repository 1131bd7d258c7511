"""Dense, language-aligned 2D encoders behind one interface.

``build_encoder(name, **cfg)`` builds the encoder registered under its Hydra config name
(``configs/encoder/<name>.yaml``); ``available_encoders()`` lists them. The interface is
``ovmap.encoders.base.Encoder``; see README.md in this folder for the available encoders and how to add one.
"""

from ovmap.encoders.base import ENCODERS, Encoder, available_encoders, build_encoder, check_rgb
from ovmap.encoders import oracle  # noqa: F401  (registers "oracle")
from ovmap.encoders import radseg  # noqa: F401  (registers "radseg" and "radseg_plus")
from ovmap.encoders import naradio  # noqa: F401  (registers "naradio")
from ovmap.encoders import trident  # noqa: F401  (registers "trident")
from ovmap.encoders import textregion  # noqa: F401  (registers "textregion")
from ovmap.encoders import scclip  # noqa: F401  (registers "scclip")
from ovmap.encoders import talk2dino  # noqa: F401  (registers "talk2dino")

__all__ = ["ENCODERS", "Encoder", "available_encoders", "build_encoder", "check_rgb"]
