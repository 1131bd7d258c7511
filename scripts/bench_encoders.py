#!/usr/bin/env python
"""Parameter counts and latency of every ovmap encoder at real size (random weights), in one run.

Part 1, parameter counts (vision side, as RADSeg Table A.3 counts them): every module is built by the project's own
classes at the published sizes on the ``meta`` device (no memory, no forward) and counted next to the paper's figure:

* RADSeg base: C-RADIOv3-B (ViT-B/16, 768-d, 12 blocks, 12 heads, CPE grid 128², 4 CLS + 4 registers) + SigLIP2
  summary head (MLP v2 768 -> 1536 -> 1536, 1 inner block: the real head's hidden size is an assumption).
* RADSeg+: RADSeg base + the ``sam`` feature head (768 -> 1280) + SAM-H neck, prompt encoder and mask decoder.
* NARADIO: RADIO v2.5-B / -H + SigLIP summary head (-> 1152; RADSeg's "RayFronts" rows), and C-RADIOv3-B + SigLIP2
  (RADSeg Tab. 5, the same modules as RADSeg base).
* Trident base / huge: CLIP ViT-B/16 (H/14) vision + DINO ViT-B/16 + SAM ViT-B (H) incl. prompt encoder and decoder.
* SC-CLIP: CLIP ViT-B/16 vision (A.3: 86M). Talk2DINO: DINOv2 ViT-B/14-reg4 (A.3: 86M; the 0.98M text projection
  head and the CLIP text tower are text side and not counted).
* TextRegion base / huge: CLIP ViT-B/16 (H/14) vision + SAM 2.1 hiera-b+ (L), counted as the official checkpoint
  total (ovmap's SAM 2.1 image path plus the video-only parameters the checkpoints carry).

Part 2, latency: every encoder on the same synthetic image (``--size``, default 480x640) and the same K random text
embeddings of the right dimension (no text towers), median of ``--runs`` after one warm-up, with the encoders
interleaved round-robin in every run so that background load hits all alike, for ``encode_image`` (feature path, what
the 3D map stores) and ``predict`` (probability path), with the ratio to RADSeg in the same dtype. Random weights at real sizes: the timings are real, the outputs meaningless. Trident and TextRegion are built
from random real-size checkpoints written in the original key layouts to a temporary directory (deleted at exit),
through their normal loaders. TextRegion runs on ovmap's SAM 2.1 hiera-b+ (``mask_model=sam2``); its mask generator's
cost depends on how many random masks survive the filters. SC-CLIP (224/112
windows, one at a time) and Talk2DINO (448/224 windows, stretched) run their own official windows on the same image,
built from random real-size OpenAI-layout CLIP, DINOv2-reg hub and projection files. bfloat16 applies to
the RADIO encoders (RADSeg, RADSeg+, NARADIO); Trident, TextRegion, SC-CLIP and Talk2DINO are float32 only and are
skipped in bf16.
Numerics of RADSeg in bfloat16 are checked against float32.

Examples:
    python scripts/bench_encoders.py                                   # all encoders, fp32, 480x640, CPU
    python scripts/bench_encoders.py --encoders radseg radseg_plus naradio --dtypes float32 bfloat16 --runs 5
    python scripts/bench_encoders.py --skip-huge --params-only
    python scripts/bench_encoders.py --encoders radseg scclip talk2dino --size 240x320 --runs 1
    python scripts/bench_encoders.py --device cuda --compile --runs 20  # GPU figures (synchronised timings)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovmap.encoders.backbones.sam_vit import SAM_VIT_CONFIGS, SamImageEncoder, sam_parameter_count  # noqa: E402
from ovmap.encoders.backbones.dinov2 import DinoV2  # noqa: E402
from ovmap.encoders.clip import CLIP, CLIP_CONFIGS  # noqa: E402
from ovmap.encoders.dino import DinoViT  # noqa: E402
from ovmap.encoders.radio.adaptors import MLP2  # noqa: E402
from ovmap.encoders.backbones.sam_decoder import (  # noqa: E402
    MaskDecoder,
    PromptEncoder,
    SamDecoder,
    TwoWayTransformer,
    make_neck,
)
from ovmap.encoders.radio.vit import RadioArch, RadioModel  # noqa: E402
from ovmap.encoders.radseg import RADSegEncoder, RADSegPlusEncoder, sliding_resize_hw, window_boxes  # noqa: E402
from ovmap.encoders.talk2dino import ProjectionLayer  # noqa: E402

ENCODERS = ("radseg", "radseg_plus", "naradio", "trident", "textregion", "scclip", "talk2dino")
LABELS = {"radseg": "RADSeg", "radseg_plus": "RADSeg+", "naradio": "NARADIO", "trident": "Trident",
          "textregion": "TextRegion", "scclip": "SC-CLIP", "talk2dino": "Talk2DINO"}
FLOAT32_ONLY = ("trident", "textregion", "scclip", "talk2dino")

# RADSeg Table A.3 (vision side, millions; RADSeg-base 105M from the abstract). RADSeg+ has no figure in the specs.
PAPER_PARAMS_M = {"radseg": 105, "radseg_plus": None, "naradio_b": 103, "naradio_h": 661, "naradio_v3b": None,
                  "trident_b": 264, "trident_h": 1349, "textregion_b": 167, "textregion_h": 857, "scclip": 86,
                  "talk2dino": 86}
# RADSeg A.3 latency per image, V100, fp32, mid resolution; RADSeg's own is not in the paper's table.
PAPER_LATENCY_S = {"naradio": 0.111, "trident": 0.454, "textregion": 0.682, "scclip": 0.147, "talk2dino": 0.165}
# SAM 2.1 totals measured with the official sam2 package: the fallback if ovmap's SAM 2.1 module cannot count them.
SPEC_SAM21_M = {"hiera_b+": 80.85, "hiera_l": 224.45}

TEACHERS_V3 = [{"name": n, "type": n, "use_summary": n != "sam"} for n in ("clip", "siglip2", "dino_v2", "sam")]


# --- module construction -------------------------------------------------------------------------------------------
def radio_arch(embed: int = 768, depth: int = 12, heads: int = 12) -> RadioArch:
    return RadioArch(embed_dim=embed, depth=depth, num_heads=heads, num_prefix=8, num_cls=4, pos_grid=128)


def random_radio_checkpoint(embed: int = 768, depth: int = 12, heads: int = 12, head_hidden: int = 1536,
                            lang_dim: int = 1536, sam_dim: int = 1280, seed: int = 0) -> dict:
    """An in-memory ``{'state_dict', 'args'}`` checkpoint of C-RADIOv3-B size with random weights."""
    torch.manual_seed(seed)
    model = RadioModel(radio_arch(embed, depth, heads))
    with torch.no_grad():
        model.model.patch_generator.pos_embed.normal_(0, 0.02)
        model.model.patch_generator.cls_token.token.normal_(0, 0.02)
    sd = {f"base_model.{k}": v for k, v in model.model.state_dict().items()}
    sd.update({f"input_conditioner.{k}": v for k, v in model.input_conditioner.state_dict().items()})
    sd.update({f"_heads.siglip2.{k}": v for k, v in MLP2(embed, head_hidden, lang_dim, 1).state_dict().items()})
    sd.update({f"_feature_projections.sam.{k}": v for k, v in MLP2(embed, head_hidden, sam_dim, 1).state_dict().items()})
    args = {"model": "vit_base_patch16_224", "model_kwargs": {"embed_dim": embed, "depth": depth, "num_heads": heads},
            "teachers": TEACHERS_V3, "cls_token_per_teacher": True, "cpe_max_size": 2048, "cpe_num_registers": 4,
            "model_norm": False, "mlp_version": "v2"}
    return {"state_dict": sd, "args": args}


def random_sam_h_decoder(in_dim: int = 1280, dim: int = 256) -> SamDecoder:
    """SAM-H neck + prompt encoder + mask decoder with random weights."""
    return SamDecoder(make_neck(in_dim, dim), PromptEncoder(dim, (64, 64), (1024, 1024), 16),
                      MaskDecoder(dim, TwoWayTransformer(2, dim, 8, 2048, dim // 2), 3, 3, 256)).eval()


def sam_v1_state_dict(variant: str = "vit_b") -> dict[str, torch.Tensor]:
    """Random SAM v1 checkpoint (``image_encoder.* / prompt_encoder.* / mask_decoder.*``, the official layout)."""
    cfg = SAM_VIT_CONFIGS[variant]
    trunk = SamImageEncoder(cfg)
    with torch.no_grad():
        trunk.pos_embed.normal_(0, 0.02)
        for blk in trunk.blocks:
            blk.attn.rel_pos_h.normal_(0, 0.02)
            blk.attn.rel_pos_w.normal_(0, 0.02)
    g = cfg.image_size // cfg.patch_size
    sd = {f"image_encoder.{k}": v for k, v in trunk.state_dict().items()}
    sd.update({f"image_encoder.neck.{k}": v for k, v in make_neck(cfg.embed_dim, 256).state_dict().items()})
    sd.update({f"prompt_encoder.{k}": v for k, v in
               PromptEncoder(256, (g, g), (cfg.image_size, cfg.image_size), 16).state_dict().items()})
    dec = MaskDecoder(256, TwoWayTransformer(2, 256, 8, 2048, 128), 3, 3, 256)
    sd.update({f"mask_decoder.{k}": v for k, v in dec.state_dict().items()})
    return sd


def _random_dinov2() -> DinoV2:
    """DINOv2 ViT-B/14-reg4 with random tokens and positional table (the zero init would be degenerate)."""
    model = DinoV2()
    with torch.no_grad():
        for t in (model.cls_token, model.pos_embed, model.register_tokens):
            t.normal_(0, 0.02)
    return model


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# --- part 1: parameter counts --------------------------------------------------------------------------------------
def _sam2_module() -> Any | None:
    """ovmap's SAM 2.1 backbone module (None if it cannot be imported or lacks the counting API)."""
    try:
        mod = importlib.import_module("ovmap.encoders.backbones.sam2")
    except ImportError:
        return None
    return mod if callable(getattr(mod, "parameter_counts", None)) and callable(getattr(mod, "build_sam2", None)) \
        else None


def _sam2_count(variant: str) -> tuple[float, str]:
    """SAM 2.1 parameters (M) as A.3 counts them (whole model, memory modules included).

    With ovmap's backbone: ``official_total``, its image path (measured) plus the video-only parameters the
    official checkpoints carry (memory modules and object-pointer / temporal embeddings), which ovmap does not
    build. Without it: the spec's measured total.
    """
    mod = _sam2_module()
    if mod is not None:
        try:
            total = mod.parameter_counts({"hiera_b+": "b+", "hiera_l": "l"}[variant])["official_total"] / 1e6
            return total, "ovmap (SAM 2.1 image path + video-only parameters of the checkpoint)"
        except Exception:  # noqa: BLE001 - an API this script does not know
            pass
    return SPEC_SAM21_M[variant], "ovmap + spec (SAM 2.1)"


def parameter_rows(skip_huge: bool) -> list[tuple[str, str, float, int | None, str]]:
    """(row, components, measured M, A.3 M or None, source) for every encoder."""
    with torch.device("meta"):
        radio_b = n_params(RadioModel(radio_arch()))
        siglip2_head_b = n_params(MLP2(768, 1536, 1536, 1))
        siglip_head_b = n_params(MLP2(768, 1536, 1152, 1))
        sam_feat_head_b = n_params(MLP2(768, 1536, 1280, 1))
        sam_h_dec = n_params(random_sam_h_decoder())
        clip_b = n_params(CLIP(CLIP_CONFIGS["ViT-B/16"]).visual)
        dino_b16 = n_params(DinoViT())
        dinov2_b14 = n_params(DinoV2())
        prompt = n_params(PromptEncoder(256, (64, 64), (1024, 1024), 16))
        dec = n_params(MaskDecoder(256, TwoWayTransformer(2, 256, 8, 2048, 128), 3, 3, 256))
        if not skip_huge:
            radio_h = n_params(RadioModel(radio_arch(1280, 32, 16)))
            siglip_head_h = n_params(MLP2(1280, 1536, 1152, 1))
            clip_h = n_params(CLIP(CLIP_CONFIGS["ViT-H-14"]).visual)
    sam_b = sam_parameter_count(SAM_VIT_CONFIGS["vit_b"]) + prompt + dec
    m = 1e6
    rows = [
        ("RADSeg base", "C-RADIOv3-B + SigLIP2 summary head", (radio_b + siglip2_head_b) / m, PAPER_PARAMS_M["radseg"],
         "ovmap"),
        ("RADSeg+ base", "RADSeg + sam feat head + SAM-H neck/prompt enc/mask dec",
         (radio_b + siglip2_head_b + sam_feat_head_b + sam_h_dec) / m, PAPER_PARAMS_M["radseg_plus"], "ovmap"),
        ("NARADIO base", "RADIO v2.5-B + SigLIP summary head", (radio_b + siglip_head_b) / m, PAPER_PARAMS_M["naradio_b"],
         "ovmap"),
        ("NARADIO v3-B", "C-RADIOv3-B + SigLIP2 summary head (Tab. 5)", (radio_b + siglip2_head_b) / m,
         PAPER_PARAMS_M["naradio_v3b"], "ovmap"),
        ("Trident base", "CLIP B/16 vis + DINO B/16 + SAM-B", (clip_b + dino_b16 + sam_b) / m,
         PAPER_PARAMS_M["trident_b"], "ovmap"),
    ]
    rows += [("SC-CLIP", "CLIP B/16 vis", clip_b / m, PAPER_PARAMS_M["scclip"], "ovmap"),
             ("Talk2DINO", "DINOv2 B/14-reg4 (projection 0.98M not counted)", dinov2_b14 / m,
              PAPER_PARAMS_M["talk2dino"], "ovmap")]
    sam2_bp, src_bp = _sam2_count("hiera_b+")
    rows.append(("TextRegion base", "CLIP B/16 vis + SAM 2.1 hiera-b+", clip_b / m + sam2_bp,
                 PAPER_PARAMS_M["textregion_b"], src_bp))
    if not skip_huge:
        sam_h = sam_parameter_count(SAM_VIT_CONFIGS["vit_h"]) + prompt + dec
        sam2_l, src_l = _sam2_count("hiera_l")
        rows[3:3] = [("NARADIO huge", "RADIO v2.5-H + SigLIP summary head", (radio_h + siglip_head_h) / m,
                      PAPER_PARAMS_M["naradio_h"], "ovmap")]
        rows.insert(6, ("Trident huge", "CLIP H/14 vis + DINO B/16 + SAM-H", (clip_h + dino_b16 + sam_h) / m,
                        PAPER_PARAMS_M["trident_h"], "ovmap"))
        rows.append(("TextRegion huge", "CLIP H/14 vis + SAM 2.1 hiera-L", clip_h / m + sam2_l,
                     PAPER_PARAMS_M["textregion_h"], src_l))
    return rows


def print_parameter_table(skip_huge: bool) -> None:
    rows = parameter_rows(skip_huge)
    print("\nParameters, vision side (random init at published sizes; A.3 = RADSeg Table A.3)")
    header = f"{'model':<16} {'components':<56} {'measured (M)':>12} {'A.3 (M)':>8} {'diff (M)':>9}  source"
    print(header)
    print("-" * len(header))
    for name, comp, meas, paper, src in rows:
        p = f"{paper:>8d}" if paper is not None else f"{'n/a':>8}"
        d = f"{meas - paper:>+9.1f}" if paper is not None else f"{'':>9}"
        print(f"{name:<16} {comp:<56} {meas:>12.1f} {p} {d}  {src}")
    print("Notes: RADIO heads' hidden size (1536, 1 inner block) and v2.5's prefix tokens are assumptions (no real "
          "checkpoint here);\n       RADSeg+ and NARADIO v3-B have no A.3 figure in the specs; 'spec' = figures "
          "measured with the sam2 package (baselines.md §8).")


# --- part 2: latency -----------------------------------------------------------------------------------------------
def synthetic_image(h: int, w: int, device: str) -> torch.Tensor:
    """Piecewise-constant scene (large blobs) so that RADSeg+ finds prompt regions."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(1, 3, 4, 6, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="nearest")
    return (img * 0.9 + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], runs: int, device: str) -> float:
    """Median wall time (ms) of ``fn()`` over ``runs`` runs (the caller does the warm-up; synchronised on CUDA)."""
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def compile_blocks(enc: Any) -> None:
    """torch.compile every transformer block except the last (which some encoders modify per call)."""
    for path in ("radio.model.blocks", "clip.visual.transformer.resblocks", "dino.blocks", "sam_encoder.blocks"):
        obj = enc
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        for i in range(len(obj) - 1):
            obj[i] = torch.compile(obj[i])


class Builder:
    """Builds each encoder once per dtype from shared random real-size weights."""

    def __init__(self, opts: argparse.Namespace, tmp: Path) -> None:
        self.opts, self.tmp = opts, tmp
        self._radio_ckpt: dict | None = None
        self._sam_h: SamDecoder | None = None
        self._files: dict[str, str] = {}

    @property
    def radio_ckpt(self) -> dict:
        if self._radio_ckpt is None:
            self._radio_ckpt = random_radio_checkpoint()
        return self._radio_ckpt

    def file(self, name: str) -> str:
        """Random real-size checkpoints in the original layouts, written once to the temporary directory."""
        if name not in self._files:
            torch.manual_seed(0)
            path = self.tmp / {"clip": "clip_vit_b16.pt", "dino": "dino_vitb16.pth", "sam": "sam_vit_b.pth",
                               "sam2": "sam2.1_hiera_base_plus.pt", "dinov2": "dinov2_vitb14_reg4_pretrain.pth",
                               "proj": "vitb_mlp_infonce.pth"}[name]
            sd = {"clip": lambda: CLIP(CLIP_CONFIGS["ViT-B/16"]).state_dict(), "dino": lambda: DinoViT().state_dict(),
                  "dinov2": lambda: _random_dinov2().state_dict(),
                  "proj": lambda: ProjectionLayer(512, 768).state_dict(),
                  "sam": lambda: sam_v1_state_dict("vit_b"),
                  "sam2": lambda: {"model": _sam2_module().build_sam2("b+").state_dict()}}[name]()
            torch.save(sd, path)
            self._files[name] = str(path)
        return self._files[name]

    def build(self, name: str, dtype: str) -> Any:
        o = self.opts
        if name in ("radseg", "radseg_plus"):
            kw = dict(checkpoint=self.radio_ckpt, slide_crop=o.crop, slide_stride=o.stride, device=o.device,
                      dtype=dtype)
            if name == "radseg":
                return RADSegEncoder(**kw)
            if self._sam_h is None:
                torch.manual_seed(0)
                self._sam_h = random_sam_h_decoder()
            return RADSegPlusEncoder(sam_checkpoint=self._sam_h, **kw)
        if name == "naradio":
            from ovmap.encoders.naradio import NARadioEncoder

            return NARadioEncoder(checkpoint=self.radio_ckpt, lang_adaptor="siglip2", device=o.device, dtype=dtype)
        if name == "trident":
            from ovmap.encoders.trident import TridentEncoder

            return TridentEncoder(clip_checkpoint=self.file("clip"), dino_checkpoint=self.file("dino"),
                                  sam_checkpoint=self.file("sam"), slide_crop=o.crop, slide_stride=o.stride,
                                  device=o.device)
        if name == "textregion":
            from ovmap.encoders.textregion import TextRegionEncoder

            kw = dict(clip_checkpoint=self.file("clip"), points_per_side=o.points_per_side, device=o.device)
            if _sam2_module() is not None:  # the paper's SAM 2.1 hiera-b+, when ovmap has it
                try:
                    enc = TextRegionEncoder(mask_model="sam2", mask_checkpoint=self.file("sam2"), **kw)
                    self.textregion_mask = "SAM 2.1 hiera-b+ (mask_model=sam2)"
                    return enc
                except Exception as err:  # noqa: BLE001 - fall back to the documented substitute, and say so
                    self.textregion_mask_error = f"{type(err).__name__}: {err}"
            self.textregion_mask = ("SAM ViT-B, the documented substitute for SAM 2.1 (mask_model=sam)"
                                    + (f"; SAM 2.1 failed: {self.textregion_mask_error}"
                                       if hasattr(self, "textregion_mask_error") else "; SAM 2.1 not in ovmap"))
            return TextRegionEncoder(mask_model="sam", mask_checkpoint=self.file("sam"), **kw)
        if name == "scclip":
            from ovmap.encoders.scclip import SCCLIPEncoder

            return SCCLIPEncoder(clip_checkpoint=self.file("clip"), device=o.device)
        if name == "talk2dino":
            from ovmap.encoders.talk2dino import Talk2DINOEncoder

            return Talk2DINOEncoder(dinov2_checkpoint=self.file("dinov2"), clip_checkpoint=self.file("clip"),
                                    projection_checkpoint=self.file("proj"), device=o.device)
        raise ValueError(name)


def run_latency(opts: argparse.Namespace) -> None:
    h, w = (int(v) for v in opts.size.lower().split("x"))
    x = synthetic_image(h, w, opts.device)
    hh, ww = sliding_resize_hw(h, w, opts.crop, opts.stride)
    n_win = len(window_boxes(hh, ww, opts.crop, opts.stride)[0])
    print(f"\nLatency, {h}x{w} RGB, K={opts.k} random text embeddings, one warm-up + median of {opts.runs} "
          f"interleaved runs "
          f"(crop {opts.crop}, stride {opts.stride}: {n_win} RADSeg windows; Trident/TextRegion points "
          f"{opts.points_per_side}x{opts.points_per_side})")
    header = (f"{'encoder':<11} {'dtype':<9} {'params (M)':>10} {'build (s)':>9} {'encode_image (ms)':>17} "
              f"{'x RADSeg':>8} {'predict (ms)':>12} {'x RADSeg':>8} {'A.3 V100 (s)':>12}")
    print(header)
    print("-" * len(header))
    reference: dict = {}
    with tempfile.TemporaryDirectory(prefix="ovmap_bench_") as tmp:
        builder = Builder(opts, Path(tmp))
        for dtype in opts.dtypes:
            # build every encoder, warm each up, then time them round-robin (encoders interleaved in every round)
            # so that a varying background load affects all of them alike
            built: dict[str, dict] = {}
            for name in opts.encoders:
                if name in FLOAT32_ONLY and dtype != "float32":
                    print(f"{LABELS[name]:<11} {dtype:<9} float32-only encoder: skipped")
                    continue
                t0 = time.perf_counter()
                try:
                    enc = builder.build(name, dtype)
                except Exception as err:  # noqa: BLE001 - report and go on with the others
                    print(f"{LABELS[name]:<11} {dtype:<9} build failed: {type(err).__name__}: {err}")
                    continue
                t_build = time.perf_counter() - t0
                if opts.compile:
                    compile_blocks(enc)
                dim = getattr(enc, "language_dim", None) or 1536
                g = torch.Generator().manual_seed(2)
                text = torch.nn.functional.normalize(torch.randn(opts.k, dim, generator=g), dim=-1).to(opts.device)
                mods = [m for m in (getattr(enc, a, None) for a in ("radio", "lang_head", "sam_feat_head", "sam",
                                                                      "sam2", "clip", "dino", "sam_encoder"))
                        if isinstance(m, nn.Module)]
                if name in ("trident", "textregion", "scclip"):  # vision side only
                    mods = [m.visual if isinstance(m, CLIP) else m for m in mods]
                if name == "talk2dino":  # vision side only (the CLIP text tower and the projection are text side)
                    mods = [enc.dino]
                with torch.inference_mode():
                    enc.predict(x, text)  # warm-up (runs encode_image too)
                    sync(opts.device)
                built[name] = {"enc": enc, "text": text, "params": n_params(*mods) / 1e6, "build": t_build,
                               "encode": [], "predict": []}
            with torch.inference_mode():
                for r in range(opts.runs):
                    for b in built.values():
                        b["encode"].append(time_call(lambda e=b["enc"]: e.encode_image(x), 1, opts.device))
                        b["predict"].append(time_call(lambda e=b["enc"], t=b["text"]: e.predict(x, t), 1,
                                                      opts.device))
                    print(f"  [{dtype}] round {r + 1}/{opts.runs} done, load {os.getloadavg()[0]:.2f}",
                          file=sys.stderr, flush=True)
                if "radseg" in built:
                    enc, text = built["radseg"]["enc"], built["radseg"]["text"]
                    feats, labels = enc.encode_image(x).float(), enc.predict(x, text)[1]
                    if dtype == "float32":
                        reference["radseg"] = (feats, labels)
                    elif "radseg" in reference:
                        f32, l32 = reference["radseg"]
                        rel = float((feats - f32).abs().max() / f32.abs().max())
                        agree = float((labels == l32).float().mean())
                        reference.setdefault("notes", []).append(
                            f"RADSeg {dtype} vs float32: features max rel err {rel:.2e}, labels agree {agree:.2%}")
            med = {n: (statistics.median(b["encode"]), statistics.median(b["predict"])) for n, b in built.items()}
            base_t = med.get("radseg")
            for name, b in built.items():
                t_enc, t_pred = med[name]
                r_enc = f"{t_enc / base_t[0]:>8.2f}" if base_t else f"{'':>8}"
                r_pred = f"{t_pred / base_t[1]:>8.2f}" if base_t else f"{'':>8}"
                a3 = f"{PAPER_LATENCY_S[name]:>12.3f}" if name in PAPER_LATENCY_S else f"{'':>12}"
                print(f"{LABELS[name]:<11} {dtype:<9} {b['params']:>10.1f} {b['build']:>9.1f} {t_enc:>17.0f} {r_enc} "
                      f"{t_pred:>12.0f} {r_pred} {a3}", flush=True)
            del built
    for note in reference.get("notes", []):
        print(note)
    print("params = the modules the built encoder holds (vision side); A.3 V100 = RADSeg Table A.3 latency per image "
          "(V100, fp32)")
    if "textregion" in opts.encoders and hasattr(builder, "textregion_mask"):
        print(f"TextRegion masks: {builder.textregion_mask}")
    if "naradio" in opts.encoders:
        print("NARADIO: C-RADIOv3-B + SigLIP2 head (the RADSeg weights; v2.5-B is the same ViT-B), one pass at the "
              "frame size")
    if "trident" in opts.encoders:
        print("Trident: predict without SAM refinement (sam_refine=false, the encoder's default)")
    if "scclip" in opts.encoders or "talk2dino" in opts.encoders:
        print("SC-CLIP: 224/112 windows one at a time; Talk2DINO: 448/224 windows stretched to 448x448 (their official "
              "settings, not --crop/--stride); both without PAMR and background cleaning (their defaults)")
    if "radseg_plus" in opts.encoders:
        print("RADSeg+: predict includes the RADIO-SAM refinement (RADIO at SAM's 1024 long side + SAM-H decoder)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=ENCODERS, help="encoders to time")
    ap.add_argument("--size", default="480x640", help="input H x W (RADSeg's mid resolution: 480x640)")
    ap.add_argument("--k", type=int, default=20, help="number of random text embeddings")
    ap.add_argument("--crop", type=int, default=336)
    ap.add_argument("--stride", type=int, default=224, help="224 (2D defaults) or 112 (3D eval configs)")
    ap.add_argument("--points-per-side", type=int, default=0,
                    help="TextRegion mask-generator grid; 0 = the paper's 16 on GPU, 4 on CPU (16 takes minutes)")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--runs", type=int, default=2, help="timed runs per call after one warm-up (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks (GPU)")
    ap.add_argument("--skip-huge", action="store_true", help="leave the huge models out of the parameter table")
    ap.add_argument("--params-only", action="store_true", help="print the parameter table only")
    ap.add_argument("--no-params", action="store_true", help="skip the parameter table")
    opts = ap.parse_args()
    if opts.points_per_side <= 0:
        opts.points_per_side = 16 if opts.device.startswith("cuda") else 4
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.device.startswith("cuda"):
        if not torch.cuda.is_available():
            ap.error("--device cuda requested but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    load0 = os.getloadavg()
    dev = torch.cuda.get_device_name(opts.device) if opts.device.startswith("cuda") else "CPU"
    print(f"device: {opts.device} ({dev}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"os.cpu_count {os.cpu_count()}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    if not opts.no_params:
        print_parameter_table(opts.skip_huge)
    if not opts.params_only:
        run_latency(opts)
    load1 = os.getloadavg()
    print(f"load average at the end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
