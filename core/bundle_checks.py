"""The bundle checks (DESIGN §4): ``verify_bundle``, the one load-time check of a bundle (export and service).

It reads the manifest (core.manifest, the schema) and checks the files against it. onnxruntime, faiss and
tokenizers are imported inside the deep checks, so the service (which has them all) runs every check, and a
caller without them may pass ``deep=False`` for the file, schema, id-map and hash checks only. Export adds
ONNX-level checks (opset, checker) on top, in export/verify.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Final

from core.manifest import MANIFEST, BundleError, Manifest, read_manifest, sha256_file


def _check_json_files(bundle: Path, m: Manifest, problems: list[str]) -> None:
    for name, dom in m.domains.items():
        try:
            ids = json.loads((bundle / dom.ids_file).read_text())
        except (OSError, ValueError) as exc:  # ValueError: bad JSON, and bytes that are not UTF-8
            problems.append(f"{dom.ids_file}: not readable JSON ({exc})")
            continue
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            problems.append(f"{dom.ids_file}: not a JSON list of string item ids")
            continue
        if len(ids) != dom.n_items:
            problems.append(f"{dom.ids_file}: {len(ids)} ids but the manifest says {name} has {dom.n_items}")
        if len(set(ids)) != len(ids):
            problems.append(f"{dom.ids_file}: item ids repeat")
        if dom.popular_file:
            try:
                popular = json.loads((bundle / dom.popular_file).read_text())
                unknown = set(popular["item_ids"]) - set(ids)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{dom.popular_file}: not a popularity list ({exc!r})")
                continue
            if unknown:
                problems.append(f"{dom.popular_file}: {len(unknown)} item ids not in {dom.ids_file}")


_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


def _check_graphs(bundle: Path, m: Manifest, problems: list[str]) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        problems.append("onnxruntime is not installed: cannot check the ONNX graphs (deep=False skips them)")
        return
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    declared = [(g.file, g.inputs, g.outputs) for g in m.graphs]
    declared += [(t.graph, t.inputs, t.outputs) for t in m.text_items.values()]
    for file, inputs, outputs in declared:
        try:
            session = ort.InferenceSession(str(bundle / file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            problems.append(f"{file}: onnxruntime cannot load it ({str(exc).strip()[:200]})")
            continue
        for role, want_specs, actual in (
            ("input", inputs, session.get_inputs()),
            ("output", outputs, session.get_outputs()),
        ):
            got = [(a.name, _ORT_DTYPES.get(a.type, a.type), list(a.shape)) for a in actual]
            want = [(t.name, t.dtype, list(t.shape)) for t in want_specs]
            if got != want:
                problems.append(f"{file}: the graph's {role}s are {got} but the manifest says {want}")


TEXT_INPUTS: Final = ("input_ids", "attention_mask")


def _check_text_items(bundle: Path, m: Manifest, problems: list[str]) -> None:
    """The text item graphs take exactly (input_ids, attention_mask) and their tokenizers load."""
    if not m.text_items:
        return
    for domain, t in m.text_items.items():
        names = tuple(i.name for i in t.inputs)
        if names != TEXT_INPUTS or any(i.dtype != "int64" for i in t.inputs):
            problems.append(f"{t.graph}: text item inputs are {names}, expected int64 {TEXT_INPUTS} ({domain})")
        if len(t.outputs) != 1 or t.outputs[0].dtype != "float32" or t.outputs[0].shape[-1:] != [t.dim]:
            problems.append(f"{t.graph}: the output is not one float32 (batch, {t.dim}) item vector ({domain})")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        problems.append("tokenizers is not installed: cannot check the text item tokenizers (deep=False skips)")
        return
    for t in m.text_items.values():
        try:
            Tokenizer.from_file(str(bundle / t.tokenizer))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            problems.append(f"{t.tokenizer}: the tokenizers library cannot load it ({str(exc).strip()[:200]})")


def _check_indexes(bundle: Path, m: Manifest, problems: list[str]) -> None:
    try:
        import faiss
    except ImportError:
        problems.append("faiss is not installed: cannot check the item indexes (pass deep=False to skip)")
        return
    kinds = {"flat": "IndexFlat", "hnsw": "IndexHNSW", "ivf": "IndexIVF"}
    for key, spec in m.indexes.items():
        try:
            index = faiss.read_index(str(bundle / spec.file))
        except Exception as exc:  # faiss raises RuntimeError with a C++ message for a bad file
            problems.append(f"{spec.file}: faiss cannot read it ({str(exc).strip()[:200]})")
            continue
        if index.d != spec.dim:
            problems.append(f"{spec.file}: index dim is {index.d} but the manifest says {spec.dim} ({key!r})")
        if index.ntotal != spec.count:
            problems.append(f"{spec.file}: index holds {index.ntotal} vectors, the manifest {spec.count}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            problems.append(f"{spec.file}: index metric is not inner product")
        if not type(index).__name__.startswith(kinds[spec.type]):
            problems.append(f"{spec.file}: index is a {type(index).__name__}, the manifest says {spec.type}")


def verify_bundle(path: Path, deep: bool = True, hashes: bool = True) -> Manifest:
    """Check a bundle before serving it; return its manifest or raise ``BundleError`` naming what disagrees.

    Always: the manifest parses and is self-consistent, its version names the directory, every listed file is
    present, the id maps have one unique id per indexed item, the popularity lists name known items. ``deep``:
    the ONNX graphs (text item graphs too) load in onnxruntime with exactly the manifest's inputs and outputs,
    the text tokenizers load, the FAISS indexes have its dims, counts, metric and type. ``hashes``: every
    file's sha256 matches the manifest.
    """
    bundle = Path(path)
    if not bundle.is_dir():
        raise BundleError(bundle, ["not a directory"])
    bundle = bundle.resolve()
    m = read_manifest(bundle)
    problems: list[str] = []
    if m.version != bundle.name:
        problems.append(f"{MANIFEST} says version {m.version!r} but the directory is {bundle.name!r}")
    missing = sorted(name for name in m.files if not (bundle / name).is_file())
    problems += [f"{name} is missing" for name in missing]
    if missing:
        raise BundleError(bundle, problems)
    for name, spec in m.files.items():
        size = os.path.getsize(bundle / name)
        if size != spec.bytes:
            problems.append(f"{name}: {size} bytes but the manifest says {spec.bytes}")
    _check_json_files(bundle, m, problems)
    if deep:
        _check_graphs(bundle, m, problems)
        _check_text_items(bundle, m, problems)
        _check_indexes(bundle, m, problems)
    if hashes:
        for name, spec in m.files.items():
            if sha256_file(bundle / name) != spec.sha256:
                problems.append(f"{name}: sha256 differs from the manifest (file changed after export)")
    if problems:
        raise BundleError(bundle, problems)
    return m
