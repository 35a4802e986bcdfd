"""Item text -> token ids, the one tokenization the export's parity and the service both run (DESIGN §7.9).

A bundle's text item encoder (core.manifest.TextItemsSpec) reads ``input_ids`` and ``attention_mask`` as the
Hugging Face fast tokenizer in the bundle's ``tokenizer.json`` makes them, configured from the manifest:
truncation to ``max_tokens`` (the sentence model's ``max_seq_length``, which is what sentence-transformers
truncates to, not the 128 some tokenizer files carry) and right padding to the longest text of the batch with
``pad_id``. The ``tokenizers`` library is imported inside ``load_tokenizer`` so core stays dependency-light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from core.manifest import TextItemsSpec

IntArray = npt.NDArray[np.int64]


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` set up as the manifest says; ``__call__`` gives the graph's two inputs."""

    def __init__(self, path: Path, max_tokens: int, pad_id: int, lowercase: bool = False) -> None:
        from tokenizers import Tokenizer

        tok: Any = Tokenizer.from_file(str(path))
        pad_token = tok.id_to_token(pad_id)
        if pad_token is None:
            raise ValueError(f"{path}: the padding id {pad_id} is not in the tokenizer's vocabulary")
        # the file's own settings (e.g. fixed padding to 128) are replaced, never trusted
        tok.no_truncation()
        tok.no_padding()
        tok.enable_truncation(max_length=max_tokens)
        tok.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
        self._tok = tok
        self.max_tokens = max_tokens
        self.lowercase = lowercase

    @classmethod
    def from_spec(cls, bundle: Path, spec: TextItemsSpec) -> TextTokenizer:
        return cls(Path(bundle) / spec.tokenizer, spec.max_tokens, spec.pad_id, spec.lowercase)

    def __call__(self, texts: Sequence[str]) -> dict[str, IntArray]:
        """``input_ids`` and ``attention_mask``, both (B, L) int64, L = the longest text's token count."""
        if not texts:
            raise ValueError("no texts to tokenize")
        batch = [t.lower() if self.lowercase else t for t in texts]
        encodings = self._tok.encode_batch(batch)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}
