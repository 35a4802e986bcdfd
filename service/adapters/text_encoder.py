"""``OnnxTextEncoder``: a bundle's text item graph (item text -> item vector) in an onnxruntime session.

Texts are tokenized by core.text (the ``tokenizers`` library and the bundle's ``tokenizer.json``, set up from
the manifest exactly as the export's parity set it up), in chunks sorted by length so a short title is never
padded to a long description's length. Like ``OnnxEncoder`` it is a blocking native call that releases the
GIL; ``POST /v1/items`` runs it off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.manifest import TextItemsSpec
from core.text import TextTokenizer
from service.adapters.onnx_encoder import session_options
from service.ports import FloatArray


class OnnxTextEncoder:
    def __init__(
        self, bundle: Path, spec: TextItemsSpec, threads: int = 1, optimization_level: str = "ORT_ENABLE_ALL"
    ) -> None:
        self.tokenizer = TextTokenizer.from_spec(bundle, spec)
        self._session = ort.InferenceSession(
            str(Path(bundle) / spec.graph),
            session_options(threads, optimization_level),
            providers=["CPUExecutionProvider"],
        )
        self._outputs = [spec.outputs[0].name]
        self.dim = spec.dim
        self.chunk = 32

    def __call__(self, texts: Sequence[str]) -> FloatArray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.chunk):
            rows = order[start : start + self.chunk]
            feeds = self.tokenizer([texts[i] for i in rows])
            out[rows] = np.asarray(self._session.run(self._outputs, feeds)[0], dtype=np.float32)
        return out
