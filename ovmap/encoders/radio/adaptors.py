"""RADIO adaptor heads: the "v2" MLP (``MLP2``) used for teacher summary heads and feature projections.

Key layout under a prefix such as ``_heads.siglip2.`` or ``_feature_projections.sam.``:

* optional ``pre_norm.0.{weight,bias}``: LayerNorm then GELU on the input;
* ``fc1.{weight,bias}`` (hidden, C_in);
* ``blocks.{i}.0.{weight,bias}`` (LayerNorm) and ``blocks.{i}.2.{weight,bias}`` (Linear hidden->hidden):
  residual inner blocks h <- h + Linear(GELU(LN(h)));
* ``final.0`` (LayerNorm) and ``final.2`` (Linear hidden->out): out = Linear(GELU(LN(h))).

LayerNorm eps 1e-5, exact GELU. Shapes: (..., C_in) -> (..., C_out).
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn


class _NormAct(nn.Module):
    """Sequential-like LN -> GELU -> (Linear) with the official indices 0 (LN) and 2 (Linear)."""

    def __init__(self, dim: int, out: int | None, eps: float = 1e-5) -> None:
        super().__init__()
        self.add_module("0", nn.LayerNorm(dim, eps=eps))
        if out is not None:
            self.add_module("2", nn.Linear(dim, out))

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(getattr(self, "0")(x))
        if hasattr(self, "2"):
            x = getattr(self, "2")(x)
        return x


class MLP2(nn.Module):
    """RADIO "v2" adaptor MLP (see module docstring). Maps (..., C_in) -> (..., C_out)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_inner: int = 0, pre_norm: bool = False,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.out_dim = in_dim, hidden, out_dim
        self.pre_norm: nn.Module | None = _NormAct(in_dim, None, eps) if pre_norm else None
        self.fc1 = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList([_NormAct(hidden, hidden, eps) for _ in range(num_inner)])
        self.final = _NormAct(hidden, out_dim, eps)

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        x = self.fc1(x)
        for block in self.blocks:
            x = x + block(x)
        return self.final(x)

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], prefix: str) -> "MLP2":
        """Build and load an MLP2 from the keys of ``sd`` under ``prefix`` (e.g. ``"_heads.siglip2."``).

        Raises:
            ValueError: if the keys do not form a v2 MLP (missing or unexpected keys are listed).
        """
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if "fc1.weight" not in sub or "final.2.weight" not in sub:
            raise ValueError(
                f"adaptor '{prefix.rstrip('.')}' is not a RADIO 'v2' MLP (need fc1.* and final.*; found keys "
                f"{sorted(sub)[:12]}). Other adaptor versions (e.g. 'attn') are not supported."
            )
        hidden, in_dim = sub["fc1.weight"].shape
        out_dim = sub["final.2.weight"].shape[0]
        inner = sorted({int(m.group(1)) for k in sub if (m := re.match(r"blocks\.(\d+)\.", k))})
        mlp = cls(in_dim, hidden, out_dim, num_inner=len(inner), pre_norm="pre_norm.0.weight" in sub)
        missing, unexpected = mlp.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"adaptor '{prefix.rstrip('.')}': missing keys {list(missing)}, unexpected keys {list(unexpected)}"
            )
        return mlp
