"""`cdrec export verify BUNDLE`: the service's load-time checks (core.bundle_checks.verify_bundle) and more.

On top of the core checks (files, hashes, id maps, ONNX inputs/outputs through onnxruntime, index dims,
counts and type, text item graphs and tokenizers), export also has the ``onnx`` package: every graph (text
item graphs included) passes ``onnx.checker`` and declares the opset the manifest records, every graph's
recorded parity passed, the saved optimized and int8 graphs load with the raw graph's inputs and outputs, and an
approximate index carries the search parameter the manifest says was measured.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import onnx

from core.bundle_checks import verify_bundle
from core.manifest import BundleError, Manifest, read_manifest
from export import onnx_graph


def _onnx_problems(bundle: Path, m: Manifest) -> list[str]:
    problems = []
    checked = [(g.name, g.file, g.opset, g.parity.passed) for g in m.graphs]
    checked += [(f"item_text.{d}", t.graph, t.opset, t.parity.passed) for d, t in m.text_items.items()]
    for name, file, opset_want, passed in checked:
        if not passed:
            problems.append(f"{name}: its recorded parity did not pass")
        path = bundle / file
        if not path.is_file():
            continue
        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # onnx raises DecodeError, ValidationError, ... for a damaged file
            problems.append(f"{file}: not a valid ONNX model ({str(exc).strip().splitlines()[0][:200]})")
            continue
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset != opset_want:
            problems.append(f"{file}: the graph has opset {opset} but the manifest says {opset_want}")
    for g in m.graphs:  # the graphs the service opens instead of ``file``: they load and keep its signature
        for served in (g.optimized_file, g.quantized.file if g.quantized else None):
            if served is None or not (bundle / served).is_file():
                continue
            try:
                sess = onnx_graph.session(bundle / served, 1, onnx_graph.LOADED_LEVEL)
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
                problems.append(f"{served}: onnxruntime cannot load it ({str(exc).strip()[:200]})")
                continue
            names = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
            if names != ([t.name for t in g.inputs], [t.name for t in g.outputs]):
                problems.append(f"{served}: inputs/outputs {names} are not {g.file}'s")
    for key, spec in m.indexes.items():
        path = bundle / spec.file
        if spec.type == "flat" or not path.is_file():
            continue
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            continue  # reported by the core checks
        if isinstance(index, faiss.IndexHNSW):
            param, got = "efSearch", index.hnsw.efSearch
        else:
            param, got = "nprobe", faiss.extract_index_ivf(index).nprobe
        if spec.params.get(param) != got:
            problems.append(f"{spec.file}: {param} is {got} but the manifest measured {spec.params} ({key!r})")
    return problems


def verify(path: Path) -> Manifest:
    """Every check; return the manifest or raise ``BundleError`` listing everything that disagrees."""
    bundle = Path(path)
    if not bundle.is_dir():
        raise BundleError(bundle, ["not a directory"])
    problems: list[str] = []
    try:
        manifest = verify_bundle(bundle)
    except BundleError as exc:
        problems = exc.problems
        manifest = read_manifest(bundle)  # raises itself when the manifest is what is broken
    problems += _onnx_problems(bundle.resolve(), manifest)
    if problems:
        raise BundleError(bundle, problems)
    return manifest
