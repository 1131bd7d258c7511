"""Every checkpoint loader answers a bad file with ONE line naming the file and the expected layout.

Bad files: random bytes, empty, a malicious pickle (must never execute), a wrong-format file and a state dict with
wrong keys (the message lists the first missing / unexpected keys).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ovmap.datasets.labels_io import read_external_gt
from ovmap.encoders.backbones.sam2 import load_sam2
from ovmap.encoders.backbones.sam_vit import SAM_LAYOUT, load_sam_image_encoder
from ovmap.encoders.clip import CLIP, CLIP_LAYOUT, CLIPConfig, load_clip
from ovmap.encoders.dino import DINO_LAYOUT, load_dino
from ovmap.encoders.radio.checkpoint import load_raw_checkpoint
from ovmap.encoders.backbones.sam_decoder import load_sam_decoder
from ovmap.encoders.trident import TridentEncoder, _read_sam
from ovmap.fileio import read_checkpoint


def _load_sam(path):
    return load_sam_image_encoder(_read_sam(path))


LOADERS = {
    "clip": (load_clip, ".pt", "CLIP checkpoint"),
    "dino": (load_dino, ".pth", "DINO checkpoint"),
    "sam": (_load_sam, ".pth", "SAM checkpoint"),
    "sam2": (load_sam2, ".pt", "SAM 2.1 checkpoint"),
    "sam_decoder": (load_sam_decoder, ".pth", "SAM checkpoint"),
    "radio": (load_raw_checkpoint, ".pth.tar", "RADIO checkpoint"),
    "external_gt": (read_external_gt, ".pt", "external GT file"),
    "clip_safetensors": (load_clip, ".safetensors", "CLIP checkpoint"),
}


class _Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line(exc_info, path: Path) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize("kind", ["random", "empty", "malicious", "text", "npz"])
def test_unreadable_checkpoint_gives_one_line(tmp_path, name, kind):
    load, suffix, what = LOADERS[name]
    path = tmp_path / f"bad{suffix}"
    marker = tmp_path / "PWNED"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "malicious":
        # protocol 2 (torch.save's): the GLOBAL posix.system opcode is what would run the command
        path.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        np.savez(open(path, "wb"), a=np.zeros(3))
    with pytest.raises(ValueError) as e:
        load(path)
    msg = _one_line(e, path)
    assert msg.startswith(f"cannot read {what} {path}: "), msg
    assert "; expected " in msg
    assert not marker.exists(), "the malicious pickle was executed"
    assert "weights_only" not in msg and "allow_pickle" not in msg  # never suggest unsafe loading
    if kind == "empty":
        assert "the file is empty (0 bytes)" in msg
    if kind == "malicious" and not suffix.endswith(".safetensors"):
        assert "refused by the safe loader, nothing was executed: " in msg and "GLOBAL posix.system)" in msg


def _tiny_clip_sd() -> dict[str, torch.Tensor]:
    cfg = CLIPConfig(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                     with_text=False)
    torch.manual_seed(0)
    return CLIP(cfg).state_dict()


def test_clip_wrong_keys_lists_missing_and_unexpected(tmp_path):
    sd = _tiny_clip_sd()
    bad = dict(sd)
    del bad["visual.ln_post.weight"]
    bad["visual.extra.weight"] = torch.zeros(1)
    path = tmp_path / "clip_bad.pt"
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        load_clip(path)
    msg = _one_line(e, path)
    assert msg == (
        f"CLIP checkpoint {path} does not match the expected layout ({CLIP_LAYOUT}): "
        "missing keys ['visual.ln_post.weight']; unexpected keys ['visual.extra.weight']"
    )
    torch.save(sd, path)  # the same file with the right keys loads
    assert isinstance(load_clip(path), CLIP)


def test_trident_with_a_wrong_keys_clip_names_file_layout_and_keys(tmp_path):
    path = tmp_path / "not_clip.pt"
    torch.save({f"encoder.layer{i}.weight": torch.zeros(2) for i in range(7)}, path)
    with pytest.raises(ValueError) as e:
        TridentEncoder(clip_checkpoint=str(path), dino_checkpoint="dino.pth", sam_checkpoint="sam.pth")
    msg = _one_line(e, path)
    assert msg == (
        f"CLIP checkpoint {path} does not match the expected layout ({CLIP_LAYOUT}): missing keys "
        "['visual.conv1.weight', 'visual.positional_embedding', 'visual.proj']; it holds "
        "['encoder.layer0.weight', 'encoder.layer1.weight', 'encoder.layer2.weight', 'encoder.layer3.weight', "
        "'encoder.layer4.weight'] (+2 more)"
    )


def test_dino_and_sam_wrong_keys(tmp_path):
    path = tmp_path / "dino.pth"
    torch.save({"head.weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError) as e:
        load_dino(path)
    assert _one_line(e, path) == (
        f"DINO checkpoint {path} does not match the expected layout ({DINO_LAYOUT}): missing keys "
        "['patch_embed.proj.weight', 'pos_embed']; it holds ['head.weight']"
    )
    sam = tmp_path / "sam.pth"
    torch.save({"image_encoder.neck.0.weight": torch.zeros(2), "prompt_encoder.x": torch.zeros(1)}, sam)
    with pytest.raises(ValueError) as e:
        _load_sam(sam)
    assert _one_line(e, sam).startswith(
        f"SAM checkpoint {sam} does not match the expected layout ({SAM_LAYOUT}): missing keys "
        "['image_encoder.patch_embed.proj.weight', 'image_encoder.blocks.0.mlp.lin1.weight']"
    )
    torch.save({"image_encoder.x": torch.zeros(1), "decoder.a": torch.zeros(1), "decoder.b": torch.zeros(1)}, sam)
    with pytest.raises(ValueError) as e:
        _read_sam(sam)
    assert _one_line(e, sam).endswith("unexpected keys ['decoder.a', 'decoder.b']")


def test_wrong_format_dicts(tmp_path):
    path = tmp_path / "radio.pth.tar"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(ValueError) as e:
        load_raw_checkpoint(path)
    assert "is not an official RADIO checkpoint" in _one_line(e, path) and "it holds keys ['model']" in str(e.value)
    sam2 = tmp_path / "sam2.pt"
    torch.save({"model": {"image_encoder.neck.x": torch.zeros(1)}}, sam2)
    with pytest.raises(ValueError) as e:
        load_sam2(sam2)
    assert "is not a SAM 2.1 checkpoint" in _one_line(e, sam2)
    clip = tmp_path / "clip.pt"
    torch.save([torch.zeros(1)], clip)
    with pytest.raises(ValueError) as e:
        load_clip(clip)
    assert _one_line(e, clip) == f"CLIP checkpoint {clip} holds a list, not a state dict; expected {CLIP_LAYOUT}"


def test_read_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="x.pt"):
        read_checkpoint(tmp_path / "x.pt", "thing", "a thing")
