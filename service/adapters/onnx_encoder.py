"""``OnnxEncoder``: one exported graph (user encoder or bridge) in an onnxruntime session.

The optimisation level is the one the export's parity was measured with (the manifest's ``onnxruntime``
section); the thread count is per worker, from settings (onnxruntime's default would use every core, and two
workers on two cores would then fight: PERFORMANCE.md). ``run`` is a blocking native call that releases the
GIL; the Recommender calls it off the event loop.

``trim``: the graph's output does not depend on leading padding (the manifest's ``trims_padding``, measured at
export), so every input is cut to its batch's longest real row (core.sequence.trim_padding) before the run:
the encoder's cost grows with the sequence length it is fed, and most histories are far shorter than
``max_len`` (issue 16: the CDSRec tower at length 50 costs about twice what it costs at length 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.sequence import trim_padding
from service.ports import FloatArray, IntArray


def session_options(threads: int, optimization_level: str) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization_level)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if threads > 1:  # idle pool threads spinning would steal the core the event loop needs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxEncoder:
    """Feeds named int64 sequences, returns the graph's one output, (B, D) float32."""

    def __init__(
        self,
        path: Path,
        output: str,
        threads: int = 1,
        optimization_level: str = "ORT_ENABLE_ALL",
        trim: bool = False,
    ):
        self.path = Path(path)
        self.trim = trim
        self.optimization_level = optimization_level
        self._session = ort.InferenceSession(
            str(path), session_options(threads, optimization_level), providers=["CPUExecutionProvider"]
        )
        self._outputs = [output]
        self.input_names = [i.name for i in self._session.get_inputs()]

    def __call__(self, feeds: Mapping[str, IntArray]) -> FloatArray:
        if self.trim:
            feeds = {name: trim_padding(x) for name, x in feeds.items()}
        out = self._session.run(self._outputs, dict(feeds))[0]
        return np.asarray(out, dtype=np.float32)
