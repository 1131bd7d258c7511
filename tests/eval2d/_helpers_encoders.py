"""The ONE table of tiny encoder builds for the 2D end-to-end tests: encoder name -> constructor kwargs.

Every registered encoder (``available_encoders()``) must have a row; the tests skip an encoder without one LOUDLY,
naming this file, so rows can be added after merging new encoders. Rows use the tiny official-format checkpoints of
``<golden>/<encoder>/model`` (read-only; files that are stored compressed are unpacked into a temporary folder) and,
where an encoder needs a text tower that has no tiny golden copy (SigLIP2 for the RADIO family), a tiny random one
written here.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any, Callable


from _helpers.golden import require_golden
from _helpers.tiny_siglip2 import write_tiny_siglip2


def tiny_siglip2(folder: Path) -> str:
    """A tiny random SigLIP2 (text width 32 = the tiny RADIO's siglip2 summary width) with a word-level tokenizer."""
    if (folder / "config.json").is_file():
        return str(folder)
    from ovmap.encoders.radseg import canonicalize_prompt
    from ovmap.encoders.templates import OPENAI_IMAGENET_TEMPLATES

    write_tiny_siglip2(folder, {w for t in OPENAI_IMAGENET_TEMPLATES for w in canonicalize_prompt(t.format("x")).split()})
    return str(folder)


def _radio(tmp: Path) -> dict[str, Any]:
    model = require_golden("radseg") / "model"
    return {"checkpoint": str(model / "tiny_c-radio_v3.safetensors"), "text_model": tiny_siglip2(tmp / "siglip2")}


def _radseg_plus(tmp: Path) -> dict[str, Any]:
    return {**_radio(tmp), "sam_checkpoint": str(require_golden("radseg") / "model" / "tiny_sam.safetensors")}


def _unpacked(src: Path, tmp: Path) -> str:
    dst = tmp / src.name.removesuffix(".gz")
    if not dst.is_file():
        tmp.mkdir(parents=True, exist_ok=True)
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return str(dst)


def _trident(tmp: Path) -> dict[str, Any]:
    import json

    model = require_golden("trident") / "model"
    spec = json.loads((model / "tiny_models.json").read_text())
    files = {k: _unpacked(model / v, tmp / "trident") for k, v in spec["files"].items()}
    return {"clip_checkpoint": files["clip"], "dino_checkpoint": files["dino"], "sam_checkpoint": files["sam"],
            **spec["build_kwargs"]}


def _textregion(tmp: Path) -> dict[str, Any]:
    model = require_golden("textregion") / "model"
    return {"clip_checkpoint": str(model / "tiny_clip_vit-b-16.pt"), "mask_model": "sam2",
            "sam2_checkpoint": str(model / "tiny_sam21_hiera.pt"), "clip_heads": 4, "clip_text_heads": 2,
            "points_per_side": 4}


def _scclip(tmp: Path) -> dict[str, Any]:
    return {"clip_checkpoint": str(require_golden("scclip") / "model" / "tiny_clip_vit_b16_w64.pt")}


def _talk2dino(tmp: Path) -> dict[str, Any]:
    import json

    root = require_golden("talk2dino")
    model = next(iter(json.loads((root / "cases.json").read_text()).values()))["model"]
    return {"dinov2_checkpoint": str(root / "model" / "tiny_dinov2_vitb14_reg4_pretrain.pth"),
            "clip_checkpoint": str(root / "model" / "tiny_ViT-B-16.pt"),
            "projection_checkpoint": str(root / "model" / "tiny_proj_mlp_infonce.pth"),
            "dino_heads": model["dinov2_heads"], "clip_text_heads": model["clip_text_heads"]}


#: encoder name -> (temporary folder -> tiny constructor kwargs); the eval2d budget adds the window arguments.
TINY_ENCODERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "oracle": lambda tmp: {},
    "radseg": _radio,
    "naradio": _radio,
    "radseg_plus": _radseg_plus,
    "trident": _trident,
    "textregion": _textregion,
    "scclip": _scclip,
    "talk2dino": _talk2dino,
}
