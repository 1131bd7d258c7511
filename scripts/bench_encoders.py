#!/usr/bin/env python
"""Parameter count and latency of RADSeg and RADSeg+ at real C-RADIOv3-B size (random weights).

Builds the ovmap port with random weights shaped like C-RADIOv3-B (ViT-B/16, 768-d, 12 blocks, 12 heads, CPE grid
128², 4 CLS + 4 register tokens assumed), its SigLIP2 summary head (768 -> 1536) and SAM feature head (768 -> 1280),
and SAM-H's neck / prompt encoder / mask decoder (256-d, 8 heads). Times ``predict`` (the whole RADSeg / RADSeg+
path, all windows in one batch) per image size and dtype, and checks bfloat16 numerics against float32.

Example:
    python scripts/bench_encoders.py --sizes 336x448 480x640 --dtypes float32 bfloat16 --repeats 3
    python scripts/bench_encoders.py --device cuda --compile   # GPU figures, torch.compile of the ViT blocks
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovmap.encoders.radio.adaptors import MLP2  # noqa: E402
from ovmap.encoders.radio.sam import (  # noqa: E402
    MaskDecoder,
    PromptEncoder,
    SamDecoder,
    TwoWayTransformer,
    make_neck,
)
from ovmap.encoders.radio.vit import RadioArch, RadioModel  # noqa: E402
from ovmap.encoders.radseg import RADSegEncoder, RADSegPlusEncoder, sliding_resize_hw, window_boxes  # noqa: E402

TEACHERS = [{"name": n, "type": n, "use_summary": n != "sam"} for n in ("clip", "siglip2", "dino_v2", "sam")]


def random_radio_checkpoint(embed: int = 768, depth: int = 12, heads: int = 12, head_hidden: int = 1536,
                            lang_dim: int = 1536, sam_dim: int = 1280, seed: int = 0) -> dict:
    """An in-memory ``{'state_dict', 'args'}`` checkpoint of C-RADIOv3-B size with random weights."""
    torch.manual_seed(seed)
    arch = RadioArch(embed_dim=embed, depth=depth, num_heads=heads, num_prefix=8, num_cls=4, pos_grid=128)
    model = RadioModel(arch)
    with torch.no_grad():
        model.model.patch_generator.pos_embed.normal_(0, 0.02)
        model.model.patch_generator.cls_token.token.normal_(0, 0.02)
    sd = {f"base_model.{k}": v for k, v in model.model.state_dict().items()}
    sd.update({f"input_conditioner.{k}": v for k, v in model.input_conditioner.state_dict().items()})
    sd.update({f"_heads.siglip2.{k}": v for k, v in MLP2(embed, head_hidden, lang_dim, 1).state_dict().items()})
    sd.update({f"_feature_projections.sam.{k}": v for k, v in MLP2(embed, head_hidden, sam_dim, 1).state_dict().items()})
    args = {"model": "vit_base_patch16_224", "model_kwargs": {"embed_dim": embed, "depth": depth, "num_heads": heads},
            "teachers": TEACHERS, "cls_token_per_teacher": True, "cpe_max_size": 2048, "cpe_num_registers": 4,
            "model_norm": False, "mlp_version": "v2"}
    return {"state_dict": sd, "args": args}


def random_sam_h_decoder(in_dim: int = 1280, dim: int = 256) -> SamDecoder:
    """SAM-H neck + prompt encoder + mask decoder with random weights."""
    return SamDecoder(make_neck(in_dim, dim), PromptEncoder(dim, (64, 64), (1024, 1024), 16),
                      MaskDecoder(dim, TwoWayTransformer(2, dim, 8, 2048, dim // 2), 3, 3, 256)).eval()


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def synthetic_image(h: int, w: int, device: str) -> torch.Tensor:
    """Piecewise-constant scene (large blobs) so that RADSeg+ finds prompt regions."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(1, 3, 4, 6, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="nearest")
    return (img * 0.9 + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1).to(device)


def time_call(fn, repeats: int, device: str) -> float:
    """Median wall time (ms) of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["336x448", "480x640"], help="input H x W")
    ap.add_argument("--crop", type=int, default=336)
    ap.add_argument("--stride", type=int, default=224, help="224 (2D defaults) or 112 (3D eval configs)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the ViT blocks (GPU)")
    ap.add_argument("--no-plus", action="store_true", help="skip RADSeg+")
    opts = ap.parse_args()
    if opts.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    ckpt = random_radio_checkpoint()
    sam = random_sam_h_decoder()
    text = torch.nn.functional.normalize(torch.randn(10, 1536), dim=-1).to(opts.device)
    print(f"device: {opts.device} ({torch.cuda.get_device_name() if opts.device.startswith('cuda') else 'CPU'}), "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, crop {opts.crop} stride {opts.stride}")
    header = (f"{'encoder':<12} {'dtype':<9} {'H x W':<9} {'windows':>7} {'params (M)':>10} {'latency (ms)':>12} "
              f"{'plus/base':>9}")
    print(header)
    print("-" * len(header))
    reference: dict = {}
    for dtype in opts.dtypes:
        kw = dict(checkpoint=ckpt, slide_crop=opts.crop, slide_stride=opts.stride, device=opts.device, dtype=dtype)
        base = RADSegEncoder(**kw)
        plus = None if opts.no_plus else RADSegPlusEncoder(sam_checkpoint=sam, **kw)
        if opts.compile:
            for enc in filter(None, (base, plus)):
                enc.radio.model.blocks = torch.nn.ModuleList([torch.compile(b) for b in enc.radio.model.blocks])
        p_base = n_params(base.radio, base.lang_head)
        p_plus = p_base + n_params(sam, plus.sam_feat_head) if plus is not None else 0
        for size in opts.sizes:
            h, w = (int(v) for v in size.lower().split("x"))
            x = synthetic_image(h, w, opts.device)
            hh, ww = sliding_resize_hw(h, w, opts.crop, opts.stride)
            n_win = len(window_boxes(hh, ww, opts.crop, opts.stride)[0])
            t_base = time_call(lambda: base.predict(x, text), opts.repeats, opts.device)
            print(f"{'RADSeg':<12} {dtype:<9} {size:<9} {n_win:>7} {p_base / 1e6:>10.1f} {t_base:>12.1f} {'':>9}")
            if plus is not None:
                t_plus = time_call(lambda: plus.predict(x, text), opts.repeats, opts.device)
                print(f"{'RADSeg+':<12} {dtype:<9} {size:<9} {n_win:>7} {p_plus / 1e6:>10.1f} {t_plus:>12.1f} "
                      f"{t_plus / t_base:>9.2f}")
            feats = base.encode_image(x).float()
            labels = base.predict(x, text)[1]
            if dtype == "float32":
                reference[size] = (feats, labels)
            elif size in reference:
                f32, l32 = reference[size]
                rel = float((feats - f32).abs().max() / f32.abs().max())
                agree = float((labels == l32).float().mean())
                print(f"{'':<12} numerics vs float32: features max rel err {rel:.2e}, label agreement {agree:.2%}")
        del base, plus


if __name__ == "__main__":
    main()
