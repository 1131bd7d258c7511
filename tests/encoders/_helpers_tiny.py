"""Tiny random checkpoints in the original layouts (CLIP, DINO v1, SAM v1) shared by the Trident and TextRegion tests,
and the golden-model unpacking used by their golden tests."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from torch import nn

from ovmap.encoders.backbones.sam_decoder import MaskDecoder, PromptEncoder, TwoWayTransformer, make_neck
from ovmap.encoders.backbones.sam_vit import SamImageEncoder, SamViTConfig
from ovmap.encoders.clip import CLIP, CLIPConfig
from ovmap.encoders.dino import DinoViT

TINY_CLIP = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4,
                       text_width=32, text_layers=1, text_heads=4)
TINY_SAM = SamViTConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=14,
                        image_size=1024, patch_size=16, mlp_ratio=2.0, out_chans=32)


def tiny_sam_state_dict(seed: int = 0, image_size: int = 1024) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = SamViTConfig(**{**TINY_SAM.__dict__, "image_size": image_size})
    g = image_size // 16
    trunk = SamImageEncoder(cfg)
    for p in trunk.parameters():
        nn.init.normal_(p, std=0.05)
    sd = {f"image_encoder.{k}": v for k, v in trunk.state_dict().items()}
    sd.update({f"image_encoder.neck.{k}": v for k, v in make_neck(32, 32).state_dict().items()})
    prompt = PromptEncoder(32, (g, g), (image_size, image_size), 8)
    sd.update({f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()})
    dec = MaskDecoder(32, TwoWayTransformer(2, 32, 2, 64, 16), 3, 3, 32)
    sd.update({f"mask_decoder.{k}": v for k, v in dec.state_dict().items()})
    return sd


def write_tiny_trident(folder: Path, sam_image_size: int = 1024) -> dict[str, str]:
    """Tiny CLIP / DINO / SAM checkpoints in the original layouts; returns the Trident constructor kwargs."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(CLIP(TINY_CLIP).state_dict(), folder / "clip.pt")
    torch.save(DinoViT(32, 2, 4, 8, 32).state_dict(), folder / "dino.pth")
    torch.save(tiny_sam_state_dict(image_size=sam_image_size), folder / "sam.pth")
    return dict(clip_checkpoint=str(folder / "clip.pt"), dino_checkpoint=str(folder / "dino.pth"),
                sam_checkpoint=str(folder / "sam.pth"), clip_heads=4, clip_text_heads=4, dino_heads=4, sam_heads=2,
                sam_decoder_heads=2, slide_crop=32, slide_stride=16)


def gunzip_to(src: Path, folder: Path) -> Path:
    """``src`` (``*.gz``) unpacked into ``folder`` (once); returns the unpacked path."""
    dst = folder / src.name[:-3]
    if not dst.is_file():
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return dst
