"""Torch-free text pre- and post-processing shared by training, evaluation and serving.

Training encodes its data with :class:`TextEncoder` too, so the ids a model was trained on
and the ids the service feeds it come from the same code and the same ``tokenizer.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


@dataclass
class EncodedText:
    """One text as model ids (with [CLS]/[SEP], truncated) plus drift features."""

    ids: list[int]
    token_count: int  # word pieces before truncation, special tokens excluded
    unknown_tokens: int  # [UNK] pieces among those

    @property
    def unknown_rate(self) -> float:
        return self.unknown_tokens / self.token_count if self.token_count else 0.0


class TextEncoder:
    """Wraps a `tokenizers` JSON file: encode, truncate to ``max_length``, pad batches."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_token_id: int, unk_token_id: int | None):
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {max_length}")
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.cls_id = tokenizer.token_to_id(CLS)
        self.sep_id = tokenizer.token_to_id(SEP)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int, pad_token_id: int | None = None, unk_token_id: int | None = None):
        tok = Tokenizer.from_file(str(path))
        pad = tok.token_to_id(PAD) if pad_token_id is None else pad_token_id
        unk = tok.token_to_id(UNK) if unk_token_id is None else unk_token_id
        if pad is None:
            raise ValueError(f"{path}: tokenizer has no {PAD} token")
        return cls(tok, max_length, pad, unk)

    def encode_batch(self, texts: list[str]) -> list[EncodedText]:
        """Encode texts without their special tokens, count, then truncate and add [CLS]/[SEP]."""
        out = []
        # encode_batch_fast skips character offsets (unused here): about 20% less CPU per text
        for enc in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False):
            ids = enc.ids
            unk = sum(1 for i in ids if i == self.unk_token_id) if self.unk_token_id is not None else 0
            body = ids[: self.max_length - 2]
            out.append(EncodedText(ids=[self.cls_id, *body, self.sep_id], token_count=len(ids), unknown_tokens=unk))
        return out

    def pad(self, encoded: list[EncodedText]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 arrays padded to the longest item of the batch."""
        width = max(len(e.ids) for e in encoded)
        ids = np.full((len(encoded), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        return ids, mask
