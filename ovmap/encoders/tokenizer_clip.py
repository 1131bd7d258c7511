"""The CLIP byte-pair-encoding tokenizer (OpenAI CLIP / OpenCLIP text towers), written from the spec.

``shared/specs/baselines.md`` §2.3. The vocabulary ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI, MIT licence, see
``data/LICENSE_CLIP_BPE.txt``) ships with ovmap as package data, so tokenisation works offline.

* Cleaning: ``ftfy.fix_text`` (when ftfy is installed; identity on plain ASCII prompts), HTML-unescape twice, strip,
  collapse whitespace runs to one space, lower-case.
* Pre-tokenisation: the two special tokens, the contractions 's 't 're 've 'm 'll 'd, runs of letters, single
  digits, runs of other non-space symbols (case-insensitive; needs the ``regex`` package for ``\\p{L}``/``\\p{N}``).
* Each piece -> UTF-8 bytes -> the byte-to-unicode table, ``</w>`` appended to its last symbol, BPE merges by rank.
* Vocabulary (49,408): the 256 byte symbols, the same with ``</w>``, the 48,894 merged symbols (lines 1..48,894 of
  the file), ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407.
* Sequence: SOT, tokens, EOT, zero-padded to the context length 77. Too long raises (default) or truncates with
  EOT forced into the last slot (open_clip's behaviour).
"""

from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path

import torch
from torch import Tensor

VOCAB_FILE = Path(__file__).resolve().parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48,894
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable unicode character table (in the vocabulary's order).

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the remaining
    68 bytes map to chr(256 + n) in increasing byte order. Dict order = the printable bytes first, then the rest.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def clean_text(text: str) -> str:
    """ftfy (if available) + double HTML unescape + strip, whitespace collapsed, lower-cased."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """CLIP BPE tokenizer: ``tokenizer(texts) -> (N, 77) int64`` ids.

    Args:
        vocab_file: the ``bpe_simple_vocab_16e6.txt.gz`` file (default: the bundled copy).
        context_length: sequence length (77).
        truncate: False (default) raises on too-long prompts naming them; True truncates and puts EOT last.
    """

    def __init__(self, vocab_file: str | Path | None = None, context_length: int = CONTEXT_LENGTH,
                 truncate: bool = False) -> None:
        try:
            import regex
        except ImportError as err:  # pragma: no cover
            raise ImportError("the CLIP tokenizer needs the `regex` package (pip install regex)") from err
        path = Path(vocab_file) if vocab_file is not None else VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP BPE vocabulary not found: {path}. It ships with ovmap (ovmap/encoders/data/); otherwise take "
                "bpe_simple_vocab_16e6.txt.gz from https://github.com/openai/CLIP (clip/) and pass vocab_file=<path>."
            )
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path} is not the CLIP BPE vocabulary (expected {NUM_MERGES} merge lines)")
        self.byte_encoder = byte_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.byte_decoder = {u: b for b, u in self.byte_encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.context_length = int(context_length)
        self.truncate = bool(truncate)
        self._pattern = regex.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE,
        )
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> list[str]:
        """BPE symbols of one byte-mapped piece (its last symbol carries ``</w>``)."""
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without SOT/EOT."""
        ids = []
        for piece in self._pattern.findall(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(mapped))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (SOT/EOT/padding dropped, ``</w>`` -> space)."""
        text = "".join(self.decoder[i] for i in ids if i not in (0, self.sot_id, self.eot_id))
        words = [bytearray(self.byte_decoder[c] for c in w).decode("utf-8", errors="replace")
                 for w in text.split("</w>")]
        return " ".join(w for w in words if w)

    def __call__(self, texts: str | list[str]) -> Tensor:
        """(N, context_length) int64 ids: SOT, tokens, EOT, zero padding."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > self.context_length:
                if not self.truncate:
                    raise ValueError(
                        f"prompt {text!r} is {len(ids)} tokens long, more than the context length "
                        f"{self.context_length}; shorten it (or build the tokenizer with truncate=True)"
                    )
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@functools.lru_cache(maxsize=2)
def default_tokenizer() -> CLIPTokenizer:
    """The bundled CLIP tokenizer (cached)."""
    return CLIPTokenizer()
