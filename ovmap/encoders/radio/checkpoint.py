"""Loading RADIO checkpoints (official ``.pth.tar`` or ``.safetensors`` + ``<stem>.args.json``) and adaptors.

Official format: a pickle ``{'state_dict' (or 'state_dict_ema'): {...}, 'args': argparse.Namespace, ...}`` with
keys ``base_model.*`` (the ViT), ``input_conditioner.norm_{mean,std}``, ``_heads.<name|index>.*`` (summary
MLPs), ``_feature_projections.<name|index>.*`` (feature MLPs) and optionally ``_feature_normalizer.{mean,tx}``.
It is read with ``torch.load(weights_only=True)`` with ``argparse.Namespace`` allow-listed.

The golden format stores the same state dict as safetensors, and the args as JSON next to it
(``tiny_c-radio_v3.safetensors`` + ``tiny_c-radio_v3.args.json``).

Versions (``c-radio_v3-b`` ...) resolve to the official Hugging Face files, downloaded once into the torch hub
cache (``$TORCH_HOME/hub/checkpoints``); offline, a clear error names the file and where to put it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ovmap.encoders.radio.adaptors import MLP2
from ovmap.encoders.radio.vit import RadioArch, RadioModel, infer_patch_size
from ovmap.fileio import StateDict, key_mismatch_error, read_checkpoint

#: The layout :func:`load_raw_checkpoint` expects, for error messages.
RADIO_LAYOUT = (
    "an official RADIO .pth.tar ({'state_dict' or 'state_dict_ema': base_model.*, 'args': Namespace}) or a "
    ".safetensors with base_model.* keys and a sibling <stem>.args.json"
)

log = logging.getLogger(__name__)

#: Official checkpoint files of the RADIO versions RADSeg can use: version -> (Hugging Face repo, file name).
RADIO_RESOURCES: dict[str, tuple[str, str]] = {
    "c-radio_v3-b": ("nvidia/C-RADIOv3-B", "c-radio_v3-b_half.pth.tar"),
    "c-radio_v3-l": ("nvidia/C-RADIOv3-L", "c-radio_v3-l_half.pth.tar"),
    "c-radio_v3-h": ("nvidia/C-RADIOv3-H", "c-radio_v3-h_half.pth.tar"),
    "c-radio_v3-g": ("nvidia/C-RADIOv3-g", "c-radio_v3-g_half.pth.tar"),
    "radio_v2.5-b": ("nvidia/RADIO", "radio-v2.5-b_half.pth.tar"),
    "radio_v2.5-l": ("nvidia/RADIO", "radio-v2.5-l_half.pth.tar"),
    "radio_v2.5-h": ("nvidia/RADIO", "radio_v2.5-h.pth.tar"),
    "radio_v2.5-g": ("nvidia/RADIO", "radio_v2.5-g.pth.tar"),
}

#: Heads of timm ViT names (used when the checkpoint's args have no ``num_heads``).
_TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 16, "gigantic": 16}

_OFFLINE_ENV = ("OVMAP_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


# --- raw files -------------------------------------------------------------------------------------------------
def load_raw_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a RADIO checkpoint file.

    Args:
        path: an official ``.pth.tar``/``.pth``/``.pt`` pickle, or a ``.safetensors`` file with a sibling
            ``<stem>.args.json``.

    Returns:
        (state_dict, args): the flat state dict (``module.`` prefixes removed) and the args as a dict.

    Raises:
        FileNotFoundError: the file (or the sibling args JSON) is missing.
        ValueError: the file is not a RADIO checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"RADIO checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        args_path = path.with_name(path.name[: -len(".safetensors")] + ".args.json")
        if not args_path.is_file():
            raise FileNotFoundError(
                f"{path} needs its RADIO args next to it as {args_path.name} (JSON of the checkpoint's 'args')"
            )
        state = read_checkpoint(path, "RADIO checkpoint", RADIO_LAYOUT)
        try:
            args = json.loads(args_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"cannot read RADIO args {args_path}: {str(e).splitlines()[0]}; expected JSON") from None
        if not isinstance(args, dict):
            raise ValueError(f"RADIO args {args_path} must hold a JSON object, got {type(args).__name__}")
    else:
        chk = read_checkpoint(path, "RADIO checkpoint", RADIO_LAYOUT, safe_globals=[argparse.Namespace])
        if not isinstance(chk, dict) or "args" not in chk or not (
            "state_dict" in chk or "state_dict_ema" in chk
        ):
            keys = f"keys {list(map(str, chk))[:5]}" if isinstance(chk, dict) else f"a {type(chk).__name__}"
            raise ValueError(f"{path} is not an official RADIO checkpoint: expected {RADIO_LAYOUT}; it holds {keys}")
        state = chk["state_dict_ema"] if "state_dict_ema" in chk else chk["state_dict"]
        args = chk["args"]
        args = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    out = StateDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())
    out.source = path
    if not any(k.startswith("base_model.") for k in out):
        raise ValueError(
            f"{path} is not a RADIO checkpoint: no base_model.* keys (expected {RADIO_LAYOUT}); it holds "
            f"keys {list(out)[:5]}"
        )
    return out, args


def _prefixed(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def teacher_names(args: dict[str, Any]) -> list[str]:
    """Teacher names in checkpoint order (``args['teachers'][i]['name']``)."""
    names = []
    for t in args.get("teachers") or []:
        t = vars(t) if isinstance(t, argparse.Namespace) else t
        names.append(str(t.get("name")))
    return names


# --- backbone --------------------------------------------------------------------------------------------------
def arch_from_checkpoint(sd: dict[str, Tensor], args: dict[str, Any]) -> RadioArch:
    """Read the ViT architecture from the checkpoint's ``args`` and ``base_model.*`` tensor shapes."""
    base = _prefixed(sd, "base_model.")
    src = getattr(sd, "source", None) or "(state dict)"
    for key in ("patch_generator.embedder.weight", "patch_generator.pos_embed"):
        if key not in base:
            raise ValueError(
                f"RADIO checkpoint {src} has no 'base_model.{key}': not a RADIO ViT with the CPE patch generator "
                f"(model={args.get('model')!r}); expected {RADIO_LAYOUT}"
            )
    embed_dim, emb_in = base["patch_generator.embedder.weight"].shape
    depth = len({int(m.group(1)) for k in base if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise ValueError(f"RADIO checkpoint {src} has no 'base_model.blocks.*' keys; expected {RADIO_LAYOUT}")
    kwargs = dict(args.get("model_kwargs") or {})
    if kwargs.get("embed_dim") not in (None, embed_dim):
        raise ValueError(f"args embed_dim {kwargs['embed_dim']} != checkpoint width {embed_dim}")
    num_heads = kwargs.get("num_heads")
    if num_heads is None:
        model_name = str(args.get("model", ""))
        num_heads = next((h for size, h in _TIMM_HEADS.items() if f"_{size}_" in model_name), embed_dim // 64)
    pos = base["patch_generator.pos_embed"]
    grid = int(round(pos.shape[1] ** 0.5))
    if grid * grid != pos.shape[1]:
        raise ValueError(f"pos_embed has {pos.shape[1]} positions, not a square grid")
    prefix = base.get("patch_generator.cls_token.token")
    num_prefix = 0 if prefix is None else int(prefix.shape[0])
    names = teacher_names(args)
    if args.get("cls_token_per_teacher", False) and names:
        num_cls = len(dict.fromkeys(names))
    else:
        num_cls = 1
    num_cls = min(num_cls, num_prefix)
    return RadioArch(
        embed_dim=int(embed_dim),
        depth=depth,
        num_heads=int(num_heads),
        patch_size=infer_patch_size(int(emb_in)),
        mlp_hidden=int(base["blocks.0.mlp.fc1.weight"].shape[0]),
        num_prefix=num_prefix,
        num_cls=num_cls,
        pos_grid=grid,
        qkv_bias="blocks.0.attn.qkv.bias" in base,
        embedder_bias="patch_generator.embedder.bias" in base,
        layer_scale="blocks.0.ls1.gamma" in base,
        qk_norm="blocks.0.attn.q_norm.weight" in base,
        final_norm=bool(args.get("model_norm", False)) and "norm.weight" in base,
    )


def build_radio(sd: dict[str, Tensor], args: dict[str, Any], dtype: torch.dtype = torch.float32) -> RadioModel:
    """Build a :class:`RadioModel` from a checkpoint's state dict and args and load its weights.

    Raises:
        ValueError: missing or unexpected backbone keys (listed).
    """
    arch = arch_from_checkpoint(sd, args)
    names = teacher_names(args)
    summary_idxs = []
    for i, t in enumerate(args.get("teachers") or []):
        t = vars(t) if isinstance(t, argparse.Namespace) else t
        if t.get("use_summary", True):
            summary_idxs.append(i)
    has_fn = "_feature_normalizer.mean" in sd
    model = RadioModel(arch, feature_normalizer=has_fn, teacher_names=names, summary_idxs=summary_idxs)

    base = _prefixed(sd, "base_model.")
    ignored = [k for k in base if k.startswith("norm.") and not arch.final_norm]
    ignored += [k for k in base if k.startswith("head.") or k == "summary_idxs"]
    if ignored:
        log.info("RADIO checkpoint: ignoring %s (unused at inference, as in the official loader)", ignored)
    base = {k: v for k, v in base.items() if k not in ignored}
    missing, unexpected = model.model.load_state_dict(base, strict=False)
    if missing or unexpected:
        raise key_mismatch_error(
            "RADIO checkpoint", getattr(sd, "source", None),
            f"the architecture read from it: {arch.embed_dim}-d, {arch.depth} blocks, {arch.num_heads} heads, "
            f"patch {arch.patch_size}",
            ["base_model." + k for k in missing], ["base_model." + k for k in unexpected],
        )
    cond = _prefixed(sd, "input_conditioner.")
    if cond:
        model.input_conditioner.norm_mean.copy_(cond["norm_mean"].reshape(3, 1, 1).float())
        model.input_conditioner.norm_std.copy_(cond["norm_std"].reshape(3, 1, 1).float())
    else:
        log.warning("RADIO checkpoint has no input_conditioner: using the OpenAI-CLIP mean/std")
    if has_fn and model.feature_normalizer is not None:
        model.feature_normalizer.mean.copy_(sd["_feature_normalizer.mean"].float())
        model.feature_normalizer.tx.copy_(sd["_feature_normalizer.tx"].float())
    return model.to(dtype).eval()


# --- adaptors --------------------------------------------------------------------------------------------------
def available_adaptors(sd: dict[str, Tensor], args: dict[str, Any]) -> list[str]:
    """Teacher names that have a summary head or feature projection in the checkpoint."""
    names = teacher_names(args)
    out = []
    for i, name in enumerate(names):
        if any(k.startswith((f"_heads.{name}.", f"_heads.{i}.", f"_feature_projections.{name}.",
                             f"_feature_projections.{i}.")) for k in sd):
            out.append(name)
    return out


def load_adaptor_mlp(sd: dict[str, Tensor], args: dict[str, Any], name: str, kind: str = "summary") -> MLP2:
    """Adaptor MLP of teacher ``name``.

    Args:
        sd: checkpoint state dict.
        args: checkpoint args.
        name: teacher name (``siglip2``, ``sam``, ...).
        kind: ``"summary"`` (``_heads.<name|index>``, the adaptor's ``head_mlp``) or ``"feature"``
            (``_feature_projections.<name|index>``, the adaptor's ``feat_mlp``).

    Raises:
        KeyError: no teacher ``name``, or it has no such head (the available adaptors are listed).
    """
    group = {"summary": "_heads", "feature": "_feature_projections"}[kind]
    names = teacher_names(args)
    if name not in names:
        raise KeyError(
            f"RADIO checkpoint has no adaptor '{name}'. Available adaptors: {available_adaptors(sd, args)}"
        )
    idx = names.index(name)
    for key in (name, str(idx)):
        prefix = f"{group}.{key}."
        if any(k.startswith(prefix) for k in sd):
            return MLP2.from_state_dict(sd, prefix).eval()
    raise KeyError(
        f"RADIO checkpoint has teacher '{name}' but no '{group}.{name}.*' or '{group}.{idx}.*' weights. "
        f"Available adaptors: {available_adaptors(sd, args)}"
    )


# --- hub resolution --------------------------------------------------------------------------------------------
def radio_cache_dir() -> Path:
    """Where downloaded RADIO checkpoints live: the torch hub cache ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_checkpoint(version: str | None = None, checkpoint: str | os.PathLike | None = None,
                       download: bool = True) -> Path:
    """Local path of the RADIO checkpoint to load.

    Args:
        version: an official version (key of :data:`RADIO_RESOURCES`), used when ``checkpoint`` is None.
        checkpoint: explicit local file (takes precedence).
        download: allow downloading the official file once into :func:`radio_cache_dir` (skipped when
            ``OVMAP_OFFLINE``/``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set).

    Raises:
        FileNotFoundError: the file is absent and cannot be downloaded (the message names the file, the URL
            and where to put it).
        KeyError: unknown version.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"RADIO checkpoint not found: {path}")
        return path
    if version is None:
        raise ValueError("give a RADIO checkpoint path (checkpoint=<path>) or an official version")
    if version not in RADIO_RESOURCES:
        raise KeyError(f"unknown RADIO version '{version}'. Known versions: {sorted(RADIO_RESOURCES)}")
    repo, filename = RADIO_RESOURCES[version]
    url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    path = radio_cache_dir() / filename
    if path.is_file():
        return path
    offline = any(os.environ.get(v, "").strip() not in ("", "0", "false", "False") for v in _OFFLINE_ENV)
    hint = (
        f"RADIO checkpoint '{filename}' for version '{version}' is not available locally. Download it from "
        f"{url} and either put it at {path} or pass checkpoint=<path to {filename}>."
    )
    if not download or offline:
        raise FileNotFoundError(hint + " (downloading is disabled)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        log.info("downloading %s to %s", url, path)
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
        tmp.replace(path)
    except Exception as err:  # noqa: BLE001 - any network failure becomes the same clear message
        if tmp.exists():
            tmp.unlink()
        raise FileNotFoundError(hint + f" (download failed: {err})") from err
    return path


def load_checkpoint_source(
    checkpoint: str | os.PathLike | dict | None, version: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any], Path | None]:
    """State dict, args and file of a RADIO checkpoint given as a path, an official ``version`` or a loaded dict.

    Args:
        checkpoint: a local file (see :func:`load_raw_checkpoint`), an already loaded ``{"state_dict", "args"}``
            (e.g. random weights), or None to resolve ``version`` (see :func:`resolve_checkpoint`).
        version: official RADIO version used when ``checkpoint`` is None.

    Returns:
        (state_dict, args as a dict, the checkpoint file or None for an in-memory checkpoint).
    """
    if isinstance(checkpoint, dict):
        args = checkpoint["args"]
        args = vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else dict(args)
        return checkpoint["state_dict"], args, None
    path = resolve_checkpoint(version=version, checkpoint=checkpoint)
    sd, args = load_raw_checkpoint(path)
    return sd, args, Path(path)
