"""torch module -> ONNX file with dynamic batch and length axes, plus the graph repairs onnxruntime needs.

The classic TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is used: the dynamo exporter needs
onnxscript, which the trainer image does not carry. Its deprecation, tracer and LSTM-batch warnings are
expected (shapes read from tensors are recorded as graph ops; an LSTM starts from zeros at any batch size),
the parity at batch 1 and 64 and several lengths proves them harmless, and they are silenced here only,
around the call.

Two repairs run on every exported graph, each proven by the parity check rather than trusted (the models
themselves avoid the ops onnxruntime gets wrong: see models/layers.py on boolean EyeLike and descending Range):

* An input the module ignores (SASRec's ``source_seq``) is dropped by the exporter; it is put back, unused, so
  every user encoder has the one serving signature ``(target_seq, source_seq)``.

``save_optimized`` writes onnxruntime's own optimized graph beside it (issue 16): the level is
ORT_ENABLE_EXTENDED, the fusions of the CPU provider (FusedMatMul, LayerNormalization, BiasGelu ...), not
ORT_ENABLE_ALL, whose layout transforms may be specific to the exporting machine's CPU (onnxruntime's "Graph
Optimizations" docs: an offline-optimized model is portable only up to the extended level, and onnxruntime
warns when saving above it). The service opens that file with optimization off (``LOADED_LEVEL``), so
workers do not optimize again at start; the parity is measured on it, opened that way.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from core.manifest import OrtSpec, TensorSpec
from export.towers import Graph

OUTPUT = "user_vector"
TRACER_WARNING: type[Warning] = torch.jit.TracerWarning  # type: ignore[attr-defined]
ORT_LEVEL = "ORT_ENABLE_ALL"  # what the service runs with, so the parity is measured on the same graph


def input_names(graph: Graph) -> list[str]:
    return ["target_seq", "source_seq"] if graph.kind == "user_encoder" else ["source_seq"]


def dummy_inputs(graph: Graph, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Trace inputs at full length: one left-padded row, one full row (ids within each vocabulary)."""
    gen = torch.Generator().manual_seed(0)

    def seq(n_items: int, length: int) -> torch.Tensor:
        x = torch.randint(1, max(2, n_items + 1), (batch, length), generator=gen)
        x[0, : length // 2] = 0
        return x

    src = seq(graph.n_source_items or 1, graph.source_max_len)
    if graph.kind == "bridge":
        return (src,)
    assert graph.target_max_len is not None
    return seq(graph.n_target_items, graph.target_max_len), src


def export_onnx(graph: Graph, path: Path, opset: int = 17) -> None:
    """Write ``graph.module`` to ``path`` in eval mode with dynamic batch and sequence-length axes."""
    if opset < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    names = input_names(graph)
    axes = {n: {0: "batch", 1: n.replace("_seq", "_len")} for n in names} | {OUTPUT: {0: "batch"}}
    module = graph.module.eval()
    args = dummy_inputs(graph)
    with warnings.catch_warnings():
        # LSTMs without h0/c0 inputs start from zeros at any batch size: the parity at batch 1 and 64 proves it
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1", UserWarning)
        dim = trace_to_onnx(module, args, path, opset, names, axes)
    model = onnx.load(str(path))
    _restore_inputs(model, names)
    pin_output(model, dim, graph.intents)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def trace_to_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    names: list[str],
    axes: dict[str, dict[int, str]],
    output: str = OUTPUT,
    quiet: tuple[type[Warning], ...] = (),
) -> int:
    """The one ``torch.onnx.export`` call (TorchScript tracer, constant folding, one output named ``output``)
    of every graph cdrec exports; returns the output width D. The tracer's own warnings are silenced (parity
    proves the traced graph), and so are ``quiet``'s categories."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based ONNX export"
        warnings.simplefilter("ignore", TRACER_WARNING)  # shapes read from tensors while tracing
        for category in quiet:
            warnings.simplefilter("ignore", category)
        dim = int(module(*args).shape[-1])
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return dim


def pin_output(model: onnx.ModelProto, dim: int, intents: int | None = None) -> None:
    """Declare the output (batch, D) with D concrete: after a concat the tracer leaves it symbolic; a K-vector
    user encoder (DSS) declares (batch, K, D)."""
    out = model.graph.output[0].type.tensor_type.shape
    del out.dim[:]
    out.dim.add().dim_param = "batch"
    if intents is not None:
        out.dim.add().dim_value = intents
    out.dim.add().dim_value = dim


def _restore_inputs(model: onnx.ModelProto, names: list[str]) -> None:
    present = {i.name: i for i in model.graph.input}
    if all(n in present for n in names):
        return
    ordered = [
        present.get(n) or helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", n.replace("_seq", "_len")])
        for n in names
    ]
    others = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend([*ordered, *others])


SAVED_LEVEL = "ORT_ENABLE_EXTENDED"  # the optimized graph export writes: portable across CPUs (see above)
LOADED_LEVEL = "ORT_DISABLE_ALL"  # how the service opens that graph: already optimized, nothing to redo


def _options(level: str, threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def session(path: Path, threads: int = 1, level: str = ORT_LEVEL) -> ort.InferenceSession:
    """An onnxruntime session configured as the service configures it (``level``: LOADED_LEVEL for a graph
    ``save_optimized`` wrote)."""
    return ort.InferenceSession(str(path), _options(level, threads), providers=["CPUExecutionProvider"])


def save_optimized(src: Path, dst: Path, threads: int = 1) -> None:
    """onnxruntime's graph of ``src`` optimized at SAVED_LEVEL, written to ``dst`` (a session does it)."""
    options = _options(SAVED_LEVEL, threads)
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def ort_spec(threads: int = 1) -> OrtSpec:
    return OrtSpec(graph_optimization_level=ORT_LEVEL, intra_op_num_threads=threads)


_DTYPES: dict[str, Literal["int64", "float32"]] = {"tensor(int64)": "int64", "tensor(float)": "float32"}


def describe(graph: Graph, sess: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as the manifest records them (read back from onnxruntime)."""
    domains = {"target_seq": graph.target_domain, "source_seq": graph.source_domain}
    lengths = {"target_seq": graph.target_max_len, "source_seq": graph.source_max_len}
    inputs = [
        TensorSpec(
            name=i.name,
            dtype=_DTYPES[i.type],
            shape=list(i.shape),
            domain=domains[i.name],
            max_len=lengths[i.name],
        )
        for i in sess.get_inputs()
    ]
    outputs = [TensorSpec(name=o.name, dtype=_DTYPES[o.type], shape=list(o.shape)) for o in sess.get_outputs()]
    return inputs, outputs
