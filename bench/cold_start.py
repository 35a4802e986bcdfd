"""Cold-start users: PTUPCDR protocol on Douban ratings + the inductive bridge on Art-Office, one run.

    python -m bench.cold_start --data-root ../shared/data [--seeds 0 1 2] [--betas 0.2 0.5 0.8]
    python -m bench.cold_start --datasets douban --seeds 0 1 2 3 4 5 6 7 8 9 --print-only  (more seeds, one part)

Ratings (Douban, book->music and music->book, each beta, each seed): a random beta of the overlapping users
have all their target ratings hidden; 10% of them select every model's epochs (valid), the rest are reported
once (test): MAE and RMSE of global-mean, item-mean, TGT, CMF, EMCDR and PTUPCDR (training/train_bridge.py).
Ranking (Art-Office, art->office at beta = 0.2): full-ranking HR@10 / NDCG@10 / MRR of a cold user's target
item from the source items before it, for two target items (TARGETS: "first" = entering the target domain,
"last"): popularity, cross-domain item co-occurrence counts (cooc, a non-neural check of the signal), the
EMCDR-style shared bridge and the inductive personal bridge with either source representation: mean of source
item embeddings (bridge-inductive) or the GUR of a GURU trained on the same train frame (bridge-inductive-guru);
training/train_bridge_inductive.py. Every model is selected on the valid cold users' "first" examples. Each is
also scored on the test users with their source histories shuffled among them: does it read anything personal?
Writes docs/results.json (bench "cold_start"), the tables and a plot (docs/cold_start.png) into docs/results.md;
``--print-only`` prints the tables and the done-when lines and writes nothing (needed with one of ``--datasets``:
the bench's records hold both).
"""

from __future__ import annotations

import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.results import (
    DOCS,
    SHUFFLED,
    data_parser,
    ratio_cell,
    record,
    table,
    tested,
    update_json,
    update_markdown,
)
from training.args import MFArgs
from training.baselines import CrossCooccurrence, Popularity
from training.data.loaders import load_art_office, load_douban
from training.data.splits import cold_start_split
from training.evaluation import evaluate_ranking
from training.train_bridge import BridgeArgs, fit_all, report_test, selection_view
from training.train_bridge_inductive import (
    InductiveArgs,
    pretrain,
    ranking_view,
    scorer,
    train_gur,
    train_inductive,
    train_shared,
)

BENCH = "cold_start"
DATASETS = ("douban", "art-office")  # the rating part, the ranking part
RATING_MODELS = ("global-mean", "item-mean", "tgt", "cmf", "emcdr", "ptupcdr")
RANK_METRICS = ("HR@10", "NDCG@10", "MRR")
# which target item of a cold user is ranked: "first", their first target item after their first source item
# (the "first target-domain item after the source history": entering the target domain), and
# "last", their last target item from every source item before it (the longest source history)
TARGETS = ("first", "last")


def rating_bench(root: Path, seeds: list[int], betas: list[float]) -> list[dict[str, Any]]:
    data = load_douban(root / "douban_book_music_gadtcdr")
    records = []
    for src, dst in (("book", "music"), ("music", "book")):
        for beta in betas:
            task = f"{src}->{dst}@beta={beta}"
            values: dict[tuple[str, str], list[float]] = {}
            for seed in seeds:
                start = time.perf_counter()
                split = cold_start_split(data, src, dst, beta, seed)
                fitted = fit_all(selection_view(split), BridgeArgs(mf=MFArgs(seed=seed), seed=seed))
                test = report_test(split, fitted)
                for model, metrics in test.items():
                    for metric in ("MAE", "RMSE"):
                        values.setdefault((model, metric), []).append(metrics[metric])
                print(f"{task} seed {seed}: " + "  ".join(f"{m} {test[m]['MAE']:.4f}/{test[m]['RMSE']:.4f}"
                                                        for m in RATING_MODELS)
                      + f"  ({time.perf_counter() - start:.0f}s)", flush=True)
            records += [record(BENCH, "douban", task, m, k, values[(m, k)]) for m in RATING_MODELS
                        for k in ("MAE", "RMSE")]
    return records


def ranking_bench(root: Path, seeds: list[int], beta: float = 0.2) -> list[dict[str, Any]]:
    data = load_art_office(root / "amazon_art_office_urllm")
    records = []
    for src, dst in (("art", "office"),):
        task = f"cold:{src}->{dst}@beta={beta}"
        values: dict[tuple[str, str, str], list[float]] = {}
        for seed in seeds:
            start = time.perf_counter()
            split = cold_start_split(data, src, dst, beta, seed)
            args = InductiveArgs(seed=seed)
            view = ranking_view(split, args.cold_item)
            src_mf, tgt_mf = pretrain(view, args)
            shared, _ = train_shared(view, src_mf, tgt_mf, args)
            personal, _ = train_inductive(view, src_mf, tgt_mf, args, warm=shared)
            guru = train_gur(view, args)  # the other source representation: GURU's GUR, same train frame
            personal_guru, _ = train_inductive(view, src_mf, tgt_mf, args, guru=guru)
            cooc = CrossCooccurrence(split.train, src, dst, data.n_items(src), data.n_items(dst))
            cooc.select(view.valid)
            scorers = {"popularity": Popularity(split.train, dst, data.n_items(dst)).score,
                       "cooc": cooc.score, "bridge-shared": scorer(shared), "bridge-inductive": scorer(personal),
                       "bridge-inductive-guru": scorer(personal_guru)}
            for k, target in enumerate(TARGETS):  # test examples built here, after every model is fixed
                test = split.ranking_examples(split.test_users, target=target)
                # the same users and items, each scored from another test user's source history
                tests = {"test": test, SHUFFLED: test.with_shuffled_sources(np.random.default_rng([seed, k]))}
                for part, examples in tests.items():
                    results = {name: evaluate_ranking(f, examples) for name, f in scorers.items()}
                    for model, metrics in results.items():
                        for metric in RANK_METRICS:
                            values.setdefault((f"{task}:{target}", model, metric, part), []).append(metrics[metric])
                    print(f"{task}:{target} seed {seed} {part}: " + "  ".join(
                        f"{m} {r['HR@10']:.4f}/{r['NDCG@10']:.4f}" for m, r in results.items())
                        + f"  ({len(test)} users, {time.perf_counter() - start:.0f}s)", flush=True)
        records += [record(BENCH, "art-office", t, m, k, v, split=part) for (t, m, k, part), v in values.items()]
    return records


def shuffle_table(records: list[dict[str, Any]]) -> str:
    """Markdown: per cold item and model, NDCG@10 on the test users' own source histories, on shuffled ones, and
    own / shuffled (mean ± std of the per-seed ratios)."""
    by = {(r["task"], r["model"], r.get("split", "test")): r for r in records if r["metric"] == "NDCG@10"}
    lines = ["| task | model | NDCG@10, own history | NDCG@10, shuffled history | own / shuffled |",
             "|---|---|---|---|---|"]
    for task, model, part in by:
        if part != SHUFFLED:
            continue
        own, other = by[(task, model, "test")], by[(task, model, part)]
        lines.append(f"| {task} | {model} | {own['mean']:.4f} ± {own['std']:.4f} | {other['mean']:.4f} ± "
                     f"{other['std']:.4f} | {ratio_cell(own['values'], other['values'])} |")
    return "\n".join(lines)


def paired(a: dict[str, Any], b: dict[str, Any]) -> str:
    """' (a - b per seed: mean ± standard error, n seeds)', or '' when the records carry no per-seed values."""
    va, vb = a.get("values"), b.get("values")
    if not va or not vb or len(va) != len(vb) or len(va) < 2:
        return ""
    diff = [x - y for x, y in zip(va, vb, strict=True)]
    se = statistics.stdev(diff) / math.sqrt(len(diff))
    return f" (paired {a['model']} - {b['model']}: {statistics.fmean(diff):+.4f} ± {se:.4f} SE, {len(diff)} seeds)"


def checks(records: list[dict[str, Any]]) -> list[str]:
    """The issue's done-when conditions, computed from the records (means over seeds)."""
    by = {(r["dataset"], r["task"], r["model"], r["metric"]): r for r in tested(records)}
    lines = []
    for (ds, task, model, metric), rec in sorted(by.items()):
        value = rec["mean"]
        if ds == "douban" and model == "ptupcdr":
            rivals = {m: by[(ds, task, m, metric)]["mean"] for m in ("emcdr", "global-mean")}
            ok = all(value < v for v in rivals.values())
            lines.append(f"- {task} {metric}: ptupcdr {value:.4f} vs emcdr {rivals['emcdr']:.4f}, global-mean "
                         f"{rivals['global-mean']:.4f}: {'lower than both' if ok else 'NOT lower than both'}"
                         + paired(rec, by[(ds, task, "emcdr", metric)]))
        if ds == "art-office" and model in ("bridge-inductive", "cooc") and metric == "NDCG@10":
            pop = by[(ds, task, "popularity", metric)]["mean"]
            lines.append(f"- {task} NDCG@10: {model} {value:.4f} = {value / pop:.2f} x popularity "
                         f"({pop:.4f}); the target for bridge-inductive is 2 x")
    return lines


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, direction in zip(axes[:2], ("book->music", "music->book"), strict=True):
        for model in RATING_MODELS:
            rows = sorted((r for r in records if r["model"] == model and r["metric"] == "MAE"
                           and r["task"].startswith(direction + "@")), key=lambda r: r["task"])
            betas = [float(r["task"].split("=")[1]) for r in rows]
            ax.errorbar(betas, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], marker="o", capsize=3,
                        label=model)
        ax.set_title(f"Douban {direction}: cold users' test MAE")
        ax.set_xlabel("beta (share of overlapping users made cold)")
    axes[0].legend(fontsize=8)
    rank = [r for r in tested(records) if r["dataset"] == "art-office" and r["metric"] == "NDCG@10"]
    tasks = sorted({r["task"] for r in rank})
    models = list(dict.fromkeys(r["model"] for r in rank))
    width = 0.8 / max(1, len(tasks))
    for j, task in enumerate(tasks):  # grouped bars: one group per model, one bar per cold item definition
        by_model = {r["model"]: r for r in rank if r["task"] == task}
        xs = [i + (j - (len(tasks) - 1) / 2) * width for i, m in enumerate(models) if m in by_model]
        rows = [by_model[m] for m in models if m in by_model]
        axes[2].bar(xs, [r["mean"] for r in rows], width, yerr=[r["std"] for r in rows], capsize=3,
                    label=task.rsplit(":", 1)[-1])
    pops = [r["mean"] for r in rank if r["model"] == "popularity"]
    if pops:
        axes[2].axhline(2 * max(pops), color="grey", linestyle="--", linewidth=1, label="2 x popularity (target)")
    axes[2].set_xticks(range(len(models)), models)
    axes[2].legend(fontsize=8, title="cold item")
    axes[2].set_title("Art-Office cold art->office, beta=0.2: test NDCG@10")
    axes[2].tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = data_parser(__doc__)
    p.add_argument("--betas", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--print-only", action="store_true", help="print the tables and checks; write nothing")
    ns = p.parse_args(argv)
    if set(ns.datasets) != set(DATASETS) and not ns.print_only:
        p.error("--datasets with only some of the datasets needs --print-only: the bench's records hold all of them")
    torch.set_num_threads(ns.threads)
    command = "python -m bench.cold_start " + shlex.join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    rating = rating_bench(ns.data_root, ns.seeds, ns.betas) if "douban" in ns.datasets else []
    ranking = ranking_bench(ns.data_root, ns.seeds) if "art-office" in ns.datasets else []
    records = rating + ranking
    minutes = (time.perf_counter() - start) / 60
    rating_table = table(rating, ("MAE", "RMSE"))
    ranking_table = table(tested(ranking), RANK_METRICS)
    own_vs_shuffled = shuffle_table(ranking)
    tables = [t for t, part in ((rating_table, rating), (ranking_table, ranking), (own_vs_shuffled, ranking)) if part]
    print(*tables, *checks(records), f"total {minutes:.1f} min", sep="\n\n")
    if ns.print_only:
        return 0
    update_json(BENCH, records)
    plot(records, DOCS / "cold_start.png")
    n = len(ns.seeds)
    update_markdown(BENCH, "\n".join([
        "## Cold-start users (PTUPCDR protocol on Douban; inductive bridge on Art-Office)",
        "",
        f"`{command}` ({minutes:.1f} min, {ns.threads} thread(s)). Mean ± std over {n} seeds of the cold test "
        "users; every model's epochs were chosen on the 10% valid slice of the cold users, test read once.",
        "",
        "Douban explicit ratings, the target ratings of a random beta of overlapping users hidden:",
        "",
        rating_table,
        "",
        "Art-Office, a cold user's target item ranked against the full target catalogue from the source items "
        "before it; `:first` = their first target item after their first source item (entering the target "
        "domain), `:last` = their last target item. Models selected on the valid cold users' `first` examples:",
        "",
        ranking_table,
        "",
        "Is what a model reads personal? The same fitted models on the same test users, each scored from another "
        "test user's source history (shuffled among them, one permutation per seed and cold item; records with "
        f"split `{SHUFFLED}`). Above 1: the model reads something of the user's own; popularity is 1 by "
        "construction:",
        "",
        own_vs_shuffled,
        "",
        *checks(records),
        "",
        "![cold start](cold_start.png)",
    ]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
