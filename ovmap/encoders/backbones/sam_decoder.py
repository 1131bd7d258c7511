"""SAM v1's neck, prompt encoder and mask decoder, in pure torch with the official SAM state-dict key names.

Shared by RADSeg+ (behind RADIO's ``sam`` feature adaptor), Trident and TextRegion (behind
:mod:`ovmap.encoders.backbones.sam_vit`) and SAM 2.1 (:mod:`ovmap.encoders.backbones.sam2` reuses the prompt
encoder, two-way transformer and heads):

* ``image_encoder.neck``: 1×1 conv (no bias) -> LayerNorm2d -> 3×3 conv (no bias) -> LayerNorm2d (eps 1e-6),
  (B, C_enc, 64, 64) -> (B, C, 64, 64) image embedding;
* ``prompt_encoder``: random-Fourier positional encoding of points/box corners, learned point-type embeddings,
  mask downscaling for the dense mask prompt;
* ``mask_decoder``: two-way transformer between prompt tokens and the image embedding, upscaling, hypernetwork
  MLPs and the IoU head.

Written from the SAM architecture description (no segment-anything code). Dimensions are read from the
checkpoint shapes; the number of decoder attention heads (not in the shapes) from ``<stem>.config.json`` when
present, else SAM's 8.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _Seq(nn.Module):
    """Module holding children under numeric names (official ``nn.Sequential`` indices) applied in order."""

    def __init__(self, layers: dict[str, nn.Module | None], order: list) -> None:
        super().__init__()
        for name, mod in layers.items():
            self.add_module(name, mod)
        self.order = order

    def forward(self, x: Tensor) -> Tensor:
        for step in self.order:
            x = step(x) if callable(step) and not isinstance(step, str) else getattr(self, step)(x)
        return x


def make_neck(in_ch: int, out_ch: int) -> nn.Module:
    """SAM image-encoder neck (keys ``0``..``3``)."""
    return _Seq({"0": nn.Conv2d(in_ch, out_ch, 1, bias=False), "1": LayerNorm2d(out_ch),
                 "2": nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), "3": LayerNorm2d(out_ch)},
                ["0", "1", "2", "3"])


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding with buffer ``positional_encoding_gaussian_matrix`` (2, F)."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def _pe(self, coords: Tensor) -> Tensor:
        """(..., 2) coords in [0, 1] -> (..., 2F) [sin, cos] of 2π·(2c − 1)·G."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, size: tuple[int, int]) -> Tensor:
        """(2F, h, w) encoding of pixel centres of an (h, w) grid."""
        h, w = size
        dev, dt = self.positional_encoding_gaussian_matrix.device, self.positional_encoding_gaussian_matrix.dtype
        ys = (torch.arange(h, device=dev, dtype=dt) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=dt) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self._pe(coords).permute(2, 0, 1)

    def with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """(B, N, 2) (x, y) pixel coords in an image of ``image_size`` (h, w) -> (B, N, 2F)."""
        coords = coords.clone().float()
        coords[..., 0] = coords[..., 0] / image_size[1]
        coords[..., 1] = coords[..., 1] / image_size[0]
        return self._pe(coords)


class PromptEncoder(nn.Module):
    """SAM prompt encoder (points, boxes, dense masks)."""

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int], input_image_size: tuple[int, int],
                 mask_in_chans: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(4)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        c4 = mask_in_chans // 4
        self.mask_downscaling = _Seq(
            {"0": nn.Conv2d(1, c4, 2, stride=2), "1": LayerNorm2d(c4), "3": nn.Conv2d(c4, mask_in_chans, 2, stride=2),
             "4": LayerNorm2d(mask_in_chans), "6": nn.Conv2d(mask_in_chans, embed_dim, 1)},
            ["0", "1", F.gelu, "3", "4", F.gelu, "6"])
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> Tensor:
        """(1, C, h, w) positional encoding of the image embedding grid."""
        return self.pe_layer.grid(self.image_embedding_size)[None]

    def embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """(B, N, 2) points, (B, N) labels (1 fg, 0 bg, −1 padding) -> (B, N(+1), C)."""
        points = points + 0.5
        if pad:
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.with_coords(points, self.input_image_size)
        emb = torch.where((labels == -1)[..., None], self.not_a_point_embed.weight.expand_as(emb), emb)
        emb = emb + (labels == 0)[..., None].to(emb) * self.point_embeddings[0].weight
        emb = emb + (labels == 1)[..., None].to(emb) * self.point_embeddings[1].weight
        return emb

    def embed_boxes(self, boxes: Tensor) -> Tensor:
        """(B, 4) boxes x1, y1, x2, y2 -> (B, 2, C) corner embeddings."""
        coords = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.with_coords(coords, self.input_image_size)
        emb = emb + torch.stack([self.point_embeddings[2].weight[0], self.point_embeddings[3].weight[0]])[None]
        return emb

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None,
                masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """(sparse (B, n_tokens, C), dense (B, C, h, w)) prompt embeddings."""
        bs = points[0].shape[0] if points is not None else boxes.shape[0] if boxes is not None else masks.shape[0]
        ref = self.no_mask_embed.weight
        sparse = ref.new_zeros(bs, 0, self.embed_dim)
        if points is not None:
            sparse = torch.cat([sparse, self.embed_points(points[0], points[1], pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self.embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = ref.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense


class SamAttention(nn.Module):
    """SAM attention with optional internal downsampling (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``)."""

    def __init__(self, dim: int, num_heads: int, internal_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, internal_dim)
        self.k_proj = nn.Linear(dim, internal_dim)
        self.v_proj = nn.Linear(dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = attn.softmax(dim=-1) @ v
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class MLPBlock(nn.Module):
    """lin2(ReLU(lin1(x)))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class TwoWayBlock(nn.Module):
    """Token self-attention, token->image cross-attention, MLP, image->token cross-attention (post-norm)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, internal: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.self_attn = SamAttention(dim, heads, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = SamAttention(dim, heads, internal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = SamAttention(dim, heads, internal)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer."""

    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int, internal: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TwoWayBlock(dim, heads, mlp_dim, internal, i == 0) for i in range(depth)])
        self.final_attn_token_to_image = SamAttention(dim, heads, internal)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """image, image_pe (B, C, h, w); tokens (B, T, C) -> (tokens (B, T, C), image tokens (B, h·w, C))."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class HeadMLP(nn.Module):
    """``layers.i`` Linear layers with ReLU between them."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """SAM mask decoder."""

    def __init__(self, dim: int, transformer: TwoWayTransformer, num_multimask: int, iou_depth: int,
                 iou_hidden: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_mask_tokens = num_multimask + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = _Seq(
            {"0": nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), "1": LayerNorm2d(dim // 4),
             "3": nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2)},
            ["0", "1", F.gelu, "3", F.gelu])
        self.output_hypernetworks_mlps = nn.ModuleList(
            [HeadMLP([dim, dim, dim, dim // 8]) for _ in range(self.num_mask_tokens)])
        self.iou_prediction_head = HeadMLP([dim] + [iou_hidden] * (iou_depth - 1) + [self.num_mask_tokens])

    def forward(self, image: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                multimask: bool = False) -> tuple[Tensor, Tensor]:
        """image (1, C, h, w), image_pe (1, C, h, w), sparse (B, T, C), dense (B or 1, C, h, w)
        -> (low-res mask logits (B, M, 4h, 4w), IoU predictions (B, M))."""
        b = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)[None].expand(b, -1, -1)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        src = image.expand(b, -1, -1, -1) + dense
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src_tokens = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1:1 + self.num_mask_tokens]
        up = self.output_upscaling(src_tokens.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        bu, cu, hu, wu = up.shape
        masks = (hyper @ up.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu)
        iou = self.iou_prediction_head(iou_out)
        sl = slice(1, None) if multimask else slice(0, 1)
        return masks[:, sl], iou[:, sl]


class SamDecoder(nn.Module):
    """SAM neck + prompt encoder + mask decoder, as RADSeg+ uses them (``image_size`` 1024, 64×64 embedding)."""

    def __init__(self, neck: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                 image_size: int = 1024) -> None:
        super().__init__()
        self.neck = neck
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size

    @torch.no_grad()
    def predict(self, features: Tensor, points: Tensor, point_labels: Tensor, boxes: Tensor | None,
                mask_input: Tensor | None) -> tuple[Tensor, Tensor]:
        """``SamPredictor.predict_torch`` with ``multimask_output=False``, returning low-res logits.

        Args:
            features: (1, C, 64, 64) image embedding.
            points: (B, N, 2) (x, y) in the 1024 input frame; point_labels (B, N).
            boxes: (B, 4) or None; mask_input (B or 1, 1, 256, 256) or None.

        Returns:
            (low-res mask logits (B, 1, 256, 256), IoU predictions (B, 1)).
        """
        sparse, dense = self.prompt_encoder((points, point_labels), boxes, mask_input)
        return self.mask_decoder(features, self.prompt_encoder.dense_pe(), sparse, dense, multimask=False)

    def postprocess(self, low_res: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
        """Upsample to image_size², crop to ``input_size``, upsample to ``original_size`` (bilinear)."""
        m = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        m = m[..., : input_size[0], : input_size[1]]
        return F.interpolate(m, tuple(original_size), mode="bilinear", align_corners=False)


def load_sam_decoder(path: str | Path) -> SamDecoder:
    """Build a :class:`SamDecoder` from an official SAM checkpoint (``.pth``) or ``.safetensors``.

    ``image_encoder.blocks``/``patch_embed`` are ignored (RADSeg+ deletes them). The decoder head count comes from
    a sibling ``<stem>.config.json`` (``mask_decoder.transformer.num_heads``) when present, else 8 (SAM).

    Raises:
        FileNotFoundError: missing file. ValueError: missing/unexpected keys (listed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"SAM checkpoint not found: {path}. RADSeg+ needs the official SAM ViT-H checkpoint "
            "(sam_vit_h_4b8939.pth from https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth); "
            "pass sam_checkpoint=<path>."
        )
    from ovmap.fileio import read_state_dict

    sd = read_state_dict(path, "SAM checkpoint", "an official SAM checkpoint (image_encoder.neck.*, prompt_encoder.*, "
                         "mask_decoder.*)", nested=("model",), strip_prefixes=())
    stem = path.name.split(".")[0]
    cfg_path = path.with_name(stem + ".config.json")
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    heads = int(cfg.get("mask_decoder", {}).get("transformer", {}).get("num_heads", 8))
    image_size = int(cfg.get("image_size", 1024))
    emb_size = tuple(cfg.get("image_embedding_size", (image_size // 16, image_size // 16)))
    return build_sam_decoder(sd, heads, image_size, emb_size, name=str(path))


def build_sam_decoder(sd: dict[str, Tensor], num_heads: int = 8, image_size: int = 1024,
                      image_embedding_size: tuple[int, int] | None = None, name: str = "SAM state dict") -> SamDecoder:
    """Build a :class:`SamDecoder` from a SAM state dict (official key names); dims from tensor shapes.

    Raises:
        ValueError: missing/unexpected keys (listed).
    """
    path = name
    heads = num_heads
    emb_size = tuple(image_embedding_size or (image_size // 16, image_size // 16))
    required = ("image_encoder.neck.0.weight", "prompt_encoder.no_mask_embed.weight", "mask_decoder.iou_token.weight")
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"{path} is not a SAM checkpoint: missing keys {missing}")
    neck_out, neck_in = sd["image_encoder.neck.0.weight"].shape[:2]
    dim = sd["prompt_encoder.no_mask_embed.weight"].shape[1]
    mask_in = sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]
    depth = len({m.group(1) for k in sd if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))})
    mlp_dim = sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
    internal = sd["mask_decoder.transformer.final_attn_token_to_image.q_proj.weight"].shape[0]
    num_masks = sd["mask_decoder.mask_tokens.weight"].shape[0]
    iou_layers = sorted({int(m.group(1)) for k in sd
                         if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k))})
    iou_hidden = sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]

    model = SamDecoder(
        make_neck(neck_in, neck_out),
        PromptEncoder(dim, emb_size, (image_size, image_size), mask_in),
        MaskDecoder(dim, TwoWayTransformer(depth, dim, heads, mlp_dim, internal), num_masks - 1, len(iou_layers),
                    iou_hidden),
        image_size,
    )
    wanted = {}
    for k, v in sd.items():
        if k.startswith("image_encoder.neck."):
            wanted["neck." + k[len("image_encoder.neck."):]] = v
        elif k.startswith(("prompt_encoder.", "mask_decoder.")):
            wanted[k] = v
    missing_k, unexpected = model.load_state_dict(wanted, strict=False)
    if missing_k or unexpected:
        raise ValueError(f"SAM checkpoint {path}: missing keys {list(missing_k)}, unexpected keys {list(unexpected)}")
    return model.float().eval()
