"""Write one bundle (DESIGN §4) and publish it atomically.

``export_bundle`` stages everything in ``out/.tmp-<random>/<version>/``: the ONNX graphs, the FAISS indexes,
the id maps, the popularity lists, then proves parity and writes ``manifest.json`` last. Only a bundle whose
every graph passed parity and which ``verify`` accepts is published: one ``rename`` moves the finished
directory to ``out/<version>`` (same filesystem, so a reader sees all of it or nothing), and ``current`` is
switched by ``os.replace`` of a fresh symlink over it (a reader resolves either the old or the new version).
A failed export leaves nothing behind but an error that says which check failed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import onnx
import onnxruntime
import torch

from core.manifest import (
    CURRENT,
    FORMAT,
    MANIFEST,
    DomainSpec,
    FileSpec,
    GraphSpec,
    IndexSpec,
    Manifest,
    sha256_file,
)
from export import onnx_graph
from export.added_items import fold_added
from export.index import BuiltIndex, IndexOptions, build_index
from export.parity import (
    Inputs,
    ParityOptions,
    check_parity,
    concat,
    random_inputs,
    real_inputs,
    run_torch,
    trim_difference,
)
from export.quantize import GateOptions, Validation, gate
from export.text_items import text_graphs, write_text_items
from export.towers import ExportError, Graph
from export.verify import verify
from training import checkpoint

if TYPE_CHECKING:
    from training.data.interactions import Interactions

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class DomainItems:
    """One domain's catalogue: external id of model item r + 1 at ``ids[r]``; interaction counts if known."""

    ids: list[str]
    counts: np.ndarray | None = None  # (n_items,) interactions per item, same order as ids
    histories: dict[int, np.ndarray] = field(default_factory=dict)  # user -> model item ids, oldest first


@dataclass
class ExportOptions:
    opset: int = 17
    index: IndexOptions = field(default_factory=IndexOptions)
    parity: ParityOptions = field(default_factory=ParityOptions)
    popular_k: int = 1000
    threads: int = 1  # onnxruntime intra-op threads for the parity (the service's per-worker setting)
    version: str | None = None
    switch_current: bool = True
    added_items: dict[str, dict[str, str]] = field(default_factory=dict)  # domain -> id -> text (POST /v1/items)
    # int8 variants of the one-vector user encoders of these target domains, gated on their validation examples
    # (export/quantize.py); empty: fp32 only
    quantize: dict[str, Validation] = field(default_factory=dict)
    gate: GateOptions = field(default_factory=GateOptions)


def domains_from_data(data: Interactions) -> dict[str, DomainItems]:
    """Per-domain external ids, popularity (all interactions) and every user's history, oldest first."""
    out: dict[str, DomainItems] = {}
    frame = data.frame
    for d in data.domains:
        ids = [str(x) for x in data.item_ids[d][1:]]
        items = frame.loc[frame["domain"] == d, "item"].to_numpy()
        counts = np.bincount(items, minlength=len(ids) + 1)[1:]
        out[d] = DomainItems(ids, counts, {u: seq for u, (seq, _) in data.sequences(d).items()})
    return out


def domains_from_checkpoint(items: dict[str, checkpoint.Catalogue]) -> dict[str, DomainItems]:
    """The same, from the catalogue a (format 2) checkpoint carries: its histories are a sample of users."""
    return {
        d: DomainItems(list(c.ids), np.asarray(c.counts, np.int64),
                       {u: np.asarray(s, np.int64) for u, s in c.histories.items()})
        for d, c in items.items()
    }


def first_difference(
    have: list[str], want: list[str], here: str = "the checkpoint", there: str = "the data"
) -> str | None:
    """None when the two id lists are equal, else where they first differ (model item r + 1 is ids[r])."""
    for r, (a, b) in enumerate(zip(have, want, strict=False)):
        if a != b:
            return f"model item {r + 1} is {a!r} in {here} but {b!r} in {there}"
    if len(have) != len(want):
        r = min(len(have), len(want))
        extra, side = (have[r], here) if len(have) > r else (want[r], there)
        return f"{here} has {len(have)} items, {there} {len(want)}: model item {r + 1} ({extra!r}) is only in {side}"
    return None


def check_checkpoint_ids(path: Path, items: dict[str, checkpoint.Catalogue], domains: dict[str, DomainItems]) -> None:
    """Refuse a checkpoint whose item ids are not the data's (``domains``), naming the first id that differs."""
    for d, c in items.items():
        if d not in domains:
            raise ExportError(f"{path}: the checkpoint reads domain {d!r}, which the data does not have "
                              f"(it has {sorted(domains)})")
        diff = first_difference(c.ids, domains[d].ids)
        if diff is not None:
            raise ExportError(f"{path}: the {d} item ids are not the data's ({diff}): was it trained on this data?")


def read_catalogue(path: Path) -> tuple[dict[str, checkpoint.Catalogue] | None, dict[str, object]]:
    """A checkpoint's catalogue (None: format 1, written before checkpoints carried one) and its metadata."""
    try:
        ck = checkpoint.read(path)
    except checkpoint.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    return ck.items, ck.meta


def domains_from_checkpoints(paths: list[Path]) -> tuple[dict[str, DomainItems], str | None]:
    """Every domain's catalogue from the checkpoints themselves (`cdrec export` without --data) and the data
    name they were trained on. Checkpoints that read one domain must agree on its ids."""
    domains: dict[str, DomainItems] = {}
    origin: dict[str, Path] = {}
    names: set[str] = set()
    for path in paths:
        items, meta = read_catalogue(path)
        if items is None:
            raise ExportError(
                f"{path}: this checkpoint was written before checkpoints carried their item ids "
                "(cdrec-checkpoint/1), so export cannot tell which external id each row is: pass --data with the "
                "data it was trained on, or retrain it with `cdrec train ...` (which writes cdrec-checkpoint/2)"
            )
        if meta.get("data"):
            names.add(str(meta["data"]))
        for d, found in domains_from_checkpoint(items).items():
            if d not in domains:
                domains[d], origin[d] = found, path
                continue
            diff = first_difference(found.ids, domains[d].ids, str(path), str(origin[d]))
            if diff is not None:
                raise ExportError(f"{path}: its {d} item ids are not those of {origin[d]} ({diff})")
    if len(names) > 1:
        raise ExportError(f"the checkpoints were trained on different data: {sorted(names)}")
    return domains, next(iter(names), None)


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def libraries() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
    }


def new_version(out: Path, commit: str | None) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}-{commit[:7]}" if commit else stamp
    version, n = base, 1
    while (out / version).exists():
        n += 1
        version = f"{base}.{n}"
    return version


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, out: Path, switch_current: bool = True) -> Path:
    """Move a finished ``staged`` bundle directory to ``out/<its name>`` and point ``out/current`` at it."""
    final = out / staged.name
    for f in staged.iterdir():
        _fsync(f)
    _fsync(staged)
    if final.exists():
        raise ExportError(f"{final} already exists: a published version is never overwritten")
    os.rename(staged, final)  # atomic within one filesystem: readers see the whole bundle or none
    _fsync(out)
    if switch_current:
        switch(out, staged.name)
    return final


def switch(out: Path, version: str) -> None:
    """Point ``out/current`` at ``out/<version>`` atomically: a new relative symlink renamed over the old."""
    link = out / CURRENT
    if link.exists() and not link.is_symlink():
        raise ExportError(f"{link} exists and is not a symlink; refusing to replace it")
    tmp = out / f".{CURRENT}-{uuid.uuid4().hex}"
    os.symlink(version, tmp)
    os.replace(tmp, link)
    _fsync(out)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False) + "\n")


def _check_catalogues(graphs: list[Graph], domains: dict[str, DomainItems], data_name: str | None) -> None:
    names = [g.name for g in graphs]
    if len(set(names)) != len(names):
        raise ExportError(f"two graphs with the same name: {names}")
    for g in graphs:
        if g.data and data_name and g.data != data_name:
            raise ExportError(f"{g.name}: the checkpoint was trained on {g.data!r} but the data is {data_name!r}")
        for dom, n in ((g.target_domain, g.n_target_items), (g.source_domain, g.n_source_items)):
            if dom is None or n is None:
                continue
            if dom not in domains:
                raise ExportError(f"{g.name}: no item ids for domain {dom!r} (the data has {sorted(domains)})")
            if len(domains[dom].ids) != n:
                raise ExportError(
                    f"{g.name}: the model has {n} {dom} items but the data has {len(domains[dom].ids)}: "
                    "was it trained on this data?"
                )


def _real_inputs(g: Graph, domains: dict[str, DomainItems], n: int, rng: np.random.Generator) -> Inputs | None:
    tgt = domains[g.target_domain].histories
    src = domains[g.source_domain].histories if g.source_domain in domains else {}
    users = sorted(src) if g.kind == "bridge" else sorted(tgt)
    if not users or n <= 0:
        return None
    pick = rng.choice(np.asarray(users), size=min(n, len(users)), replace=False)
    empty = np.zeros(0, np.int64)
    t_hist = [tgt.get(int(u), empty) for u in pick]
    s_hist = [src.get(int(u), empty) for u in pick]
    return real_inputs(g, t_hist, s_hist)


def _assign_indexes(graphs: list[Graph]) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Graph name -> index key, and each index's item vectors. A domain's first item space (the user
    encoder's, if any) is ``<domain>``; a graph scored against different vectors gets ``<domain>.<kind>``."""
    by_graph: dict[str, str] = {}
    vectors: dict[str, np.ndarray] = {}
    domain_of: dict[str, str] = {}
    for g in sorted(graphs, key=lambda g: g.kind != "user_encoder"):
        vecs = g.item_vectors().numpy()
        same = [
            k
            for k, v in vectors.items()
            if domain_of[k] == g.target_domain and v.shape == vecs.shape and np.allclose(v, vecs, atol=1e-6)
        ]
        if same:
            by_graph[g.name] = same[0]
            continue
        key = g.target_domain if g.target_domain not in vectors else f"{g.target_domain}.{g.kind}"
        if key in vectors:
            raise ExportError(f"{g.name}: a third item space for domain {g.target_domain}; one bundle holds two")
        by_graph[g.name], vectors[key], domain_of[key] = key, vecs, g.target_domain
    return by_graph, vectors


def export_bundle(
    graphs: list[Graph],
    out: Path,
    domains: dict[str, DomainItems],
    opts: ExportOptions,
    data_name: str | None = None,
) -> Path:
    """Export ``graphs`` into a new bundle under ``out`` and publish it; return the bundle's directory."""
    if not graphs:
        raise ExportError("nothing to export: give at least one checkpoint")
    _check_catalogues(graphs, domains, data_name)
    for g in graphs:  # a tower that ignores its source ids still gets realistic random ones in the parity
        if g.n_source_items is None and g.source_domain in domains:
            g.n_source_items = len(domains[g.source_domain].ids)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    version = opts.version or new_version(out, commit)
    if not VERSION_RE.match(version) or version == CURRENT:
        raise ExportError(f"bad version name {version!r}: letters, digits, '.', '_', '-' and not {CURRENT!r}")
    if (out / version).exists():
        raise ExportError(f"{out / version} already exists: a published version is never overwritten")
    staging = out / f".tmp-{uuid.uuid4().hex}"
    bundle = staging / version
    bundle.mkdir(parents=True)
    try:
        _build(graphs, bundle, domains, opts, version, commit, data_name)
        verify(bundle)  # the checks `cdrec export verify` and the service run, before anyone can see it
        return publish(bundle, out, opts.switch_current)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build(
    graphs: list[Graph],
    bundle: Path,
    domains: dict[str, DomainItems],
    opts: ExportOptions,
    version: str,
    commit: str | None,
    data_name: str | None,
) -> Manifest:
    rng = np.random.default_rng(opts.parity.seed)
    torch.set_num_threads(max(1, opts.threads))
    index_of, vectors = _assign_indexes(graphs)
    texts = text_graphs(graphs)
    # items added through the service by text join their domain after the model's own (export/added_items.py)
    new_ids = fold_added(texts, opts.added_items, index_of, vectors, {d: it.ids for d, it in domains.items()})
    model_items = {d: len(domains[d].ids) for d in new_ids}
    domains = dict(domains)
    for d, ids in new_ids.items():
        old = domains[d]
        counts = None if old.counts is None else np.concatenate([old.counts, np.zeros(len(ids), old.counts.dtype)])
        domains[d] = DomainItems([*old.ids, *ids], counts, old.histories)

    # inputs: random + real users' histories; torch vectors of the real ones are the recall queries
    inputs: dict[str, Inputs] = {}
    queries: dict[str, list[np.ndarray]] = {k: [] for k in vectors}
    for g in graphs:
        rand = random_inputs(g, opts.parity.random_sequences, rng)
        real = _real_inputs(g, domains, opts.parity.real_sequences, rng)
        inputs[g.name] = rand if real is None else concat(rand, real)
        if real is not None:
            feeds = {"source_seq": real.source} | ({} if real.target is None else {"target_seq": real.target})
            vecs = run_torch(g, feeds)  # (N, D), or (N, K, D) for a K-vector encoder: each intent is a query
            queries[index_of[g.name]].append(vecs.reshape(-1, vecs.shape[-1]))

    built: dict[str, BuiltIndex] = {}
    index_specs: dict[str, IndexSpec] = {}
    for key, vecs in vectors.items():
        q = np.concatenate(queries[key]) if queries[key] else np.zeros((0, vecs.shape[1]), np.float32)
        built[key] = b = build_index(vecs, q, opts.index)
        dom = next(g.target_domain for g in graphs if index_of[g.name] == key)
        file = f"items.{key}.faiss"
        faiss.write_index(b.index, str(bundle / file))
        index_specs[key] = IndexSpec(
            domain=dom,
            file=file,
            ids_file=f"items.{dom}.ids.json",
            type=b.type,
            description=b.description,
            metric="inner_product",
            dim=int(vecs.shape[1]),
            count=int(vecs.shape[0]),
            params=b.params,
            recall_at_10=b.recall_at_10,
            recall_queries=b.recall_queries,
            build_s=round(b.build_s, 4),
        )

    graph_specs: list[GraphSpec] = []
    failures: list[str] = []
    for g in graphs:
        file, optimized = f"{g.name}.onnx", f"{g.name}.opt.onnx"
        onnx_graph.export_onnx(g, bundle / file, opts.opset)
        onnx_graph.save_optimized(bundle / file, bundle / optimized, opts.threads)
        sess = onnx_graph.session(bundle / optimized, opts.threads, onnx_graph.LOADED_LEVEL)  # what serves
        try:
            report = check_parity(g, sess, built[index_of[g.name]].index, inputs[g.name], opts.parity)
            trim = trim_difference(g, sess, inputs[g.name])  # may the service cut leading padding? (parity.py)
        except Exception as exc:  # onnxruntime rejects an input shape the torch module accepts
            failures.append(f"{g.name}: onnxruntime failed on the parity inputs ({str(exc).strip()[:300]})")
            continue
        if not report.passed:
            failures.append(
                f"{g.name}: max |torch - onnxruntime| {report.max_abs_diff:.3g} "
                f"(tolerance {report.tolerance}), top-10 overlap {report.top10_overlap:.4f} "
                f"(required {report.required_overlap}), all-padding finite {report.all_padding_finite}"
            )
        quantized = None
        if g.kind == "user_encoder" and g.intents is None and g.target_domain in opts.quantize:
            index = built[index_of[g.name]].index
            valid = opts.quantize[g.target_domain]
            quantized = gate(g, bundle, file, sess, index, inputs[g.name], valid, opts.gate, opts.threads)
        ins, outs = onnx_graph.describe(g, sess)
        graph_specs.append(
            GraphSpec(
                name=g.name,
                kind=g.kind,
                file=file,
                target_domain=g.target_domain,
                source_domain=g.source_domain,
                model=g.model,
                checkpoint_sha256=g.checkpoint_sha256,
                inputs=ins,
                outputs=outs,
                dim=int(outs[0].shape[-1]),
                index=index_of[g.name],
                opset=opts.opset,
                parity=report,
                intents=g.intents,
                intent_score=g.intent_score if g.intents else None,
                trims_padding=trim <= opts.parity.tolerance,
                trim_max_abs_diff=trim if np.isfinite(trim) else None,
                optimized_file=optimized,
                optimized_level=onnx_graph.SAVED_LEVEL,
                quantized=quantized,
                serving_variant="int8" if quantized is not None and quantized.passed else "fp32",
            )
        )
    # text models: the text item graph (text -> item vector) and its tokenizer, with their own parity
    text_specs, text_failures = write_text_items(
        texts, bundle, index_of, opts.opset, opts.threads, opts.parity.tolerance
    )
    failures += text_failures
    if failures:
        raise ExportError("parity failed, the bundle is not published:\n  " + "\n  ".join(failures))

    used = {g.target_domain for g in graphs} | {g.source_domain for g in graphs if g.source_domain}
    domain_specs: dict[str, DomainSpec] = {}
    for d in sorted(used):
        items = domains[d]
        ids_file, popular_file = f"items.{d}.ids.json", None
        _write_json(bundle / ids_file, items.ids)
        if items.counts is not None and d in {g.target_domain for g in graphs}:
            order = np.argsort(-items.counts, kind="stable")[: opts.popular_k]
            order = order[items.counts[order] > 0]
            popular_file = f"popular.{d}.json"
            _write_json(
                bundle / popular_file,
                {
                    "domain": d,
                    "item_ids": [items.ids[i] for i in order],
                    "counts": [int(items.counts[i]) for i in order],
                },
            )
        domain_specs[d] = DomainSpec(
            n_items=len(items.ids), ids_file=ids_file, popular_file=popular_file, model_items=model_items.get(d)
        )

    files = {p.name: FileSpec(bytes=p.stat().st_size, sha256=sha256_file(p)) for p in sorted(bundle.iterdir())}
    manifest = Manifest(
        format=FORMAT,
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        git_commit=commit,
        data=data_name,
        max_len=max(max(g.target_max_len or 0, g.source_max_len) for g in graphs),
        domains=domain_specs,
        graphs=graph_specs,
        indexes=index_specs,
        onnxruntime=onnx_graph.ort_spec(opts.threads),
        libraries=libraries(),
        files=files,
        text_items=text_specs,
    )
    (bundle / MANIFEST).write_text(manifest.model_dump_json(indent=1) + "\n")
    return manifest
