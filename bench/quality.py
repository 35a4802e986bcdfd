"""Next-item quality on Amazon Art-Office, both target domains: `make bench-quality`.

    python -m bench.quality --data-root ../shared/data [--seeds 0 1 2] [--models popularity sasrec ...] [--diversity]

For each target domain and seed: leave-one-out split, train each model with early stopping on validation
NDCG@10, report test HR@10 / NDCG@10 / MRR (mean ± std over seeds) and train time per epoch. Writes
docs/results.json (bench "quality") and the table + a bar chart into docs/results.md.

``--diversity`` adds ILD@10, coverage@10 and repeat@10 (training/evaluation.py) to the rows of popularity,
SASRec and DSS, against one reference for every model: the items' all-MiniLM-L6-v2 sentence vectors
(computed once and cached, `python -m training.data.text --data ../shared/data/amazon_art_office_urllm`).
"""

from __future__ import annotations

import json
import multiprocessing
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.results import DOCS, data_parser, record, table, tested, update_json, update_markdown
from training.baselines import Popularity
from training.data.loaders import load_art_office
from training.data.splits import Examples, NextItemSplit, leave_one_out
from training.evaluation import ScoreFn, diversity_metrics, evaluate_ranking, top_k_items
from training.train_sasrec import SASRecArgs, train_sasrec

BENCH, DATASET = "quality", "art-office"
METRICS = ("HR@10", "NDCG@10", "MRR")
DIVERSITY = ("ILD@10", "coverage@10", "repeat@10")
VALID = "valid "  # prefix of a metric measured on the validation examples (recorded with split "valid")

Runner = Callable[[NextItemSplit, int], tuple[dict[str, float], float]]  # -> test metrics, epoch seconds


_DIVERSITY_ON = False  # set in each worker by run_task (--diversity)


def split_diversity(score_fn: ScoreFn, split: NextItemSplit, examples: Examples) -> dict[str, float]:
    """ILD@10, coverage@10 and repeat@10 of ``score_fn``'s top 10 for ``examples`` (split.valid or split.test)."""
    from training.data.text import item_text_vectors

    vectors = item_text_vectors(split.data, split.target, progress=False)
    last = [h[-1] if len(h) else 0 for h in examples.target_hist]
    return diversity_metrics(top_k_items(score_fn, examples), np.asarray(last, np.int64), vectors)


def test_metrics(score_fn: ScoreFn, split: NextItemSplit) -> dict[str, float]:
    """Test ranking metrics, plus the diversity of the top 10 when --diversity is on, on test and (keys
    ``valid <metric>``, recorded with split "valid") on validation: DSS picks its merge rule against SASRec's."""
    out = evaluate_ranking(score_fn, split.test)
    if _DIVERSITY_ON:
        out.update(split_diversity(score_fn, split, split.test))
        out.update({f"{VALID}{k}": v for k, v in split_diversity(score_fn, split, split.valid).items()})
    return out


def run_popularity(split: NextItemSplit, seed: int) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    pop = Popularity(split.train, split.target, split.data.n_items(split.target))
    fit_s = time.perf_counter() - start  # "training" is one count over the train frame
    return test_metrics(pop.score, split), fit_s


def sasrec_runner(merged: bool) -> Runner:
    def run(split: NextItemSplit, seed: int) -> tuple[dict[str, float], float]:
        args = SASRecArgs(seed=seed, epochs=40, patience=4, dropout=0.5)
        _, result, scorer = train_sasrec(split, args, merged=merged)
        return test_metrics(scorer, split), result.epoch_s

    return run


def sasrec_valid_diversity(target: str, seed: int) -> dict[str, float] | None:
    """SASRec's recorded VALID ILD@10 and coverage@10 on ``target`` (this seed's, else the mean; None when not
    recorded: run ``--models sasrec --diversity`` first), DSS's reference for choosing its merge rule."""
    path = DOCS / "results.json"
    rows = [r for r in (json.loads(path.read_text()) if path.exists() else [])
            if r.get("bench") == BENCH and r["model"] == "sasrec" and r.get("split") == "valid"
            and r["task"] == f"target={target}" and r["metric"] in ("ILD@10", "coverage@10")]
    if {r["metric"] for r in rows} != {"ILD@10", "coverage@10"}:
        return None
    return {r["metric"]: r["values"][seed] if seed < len(r["values"]) else r["mean"] for r in rows}


# DSS rows: name -> (cross-domain, DSSArgs options beside the bench settings); training/train_dss.py
DSS_VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {
    "dss": (False, {}),  # the target history
    "dss-xd": (True, {}),  # both domains' histories interleaved, target items scored
    "dss-text": (False, {"assign": "text"}),  # intents anchored on k-means clusters of the items' sentence vectors
    "dss-cos": (False, {"cosine": 0.1}),  # cosine item scores at temperature 0.1
    "dss-nologq": (False, {"logq": False}),  # popularity-sampled negatives without the logQ correction
    "dss-present": (False, {"mask_absent": True}),  # only the intents present above lam score items
    "dss-cos-item": (False, {"cosine": 0.1, "aggregate": "item"}),  # cosine; intents as item-embedding centroids
    "dss-cos-both": (False, {"cosine": 0.1, "aggregate": "both"}),  # cosine; intents aggregate states + items
    "dss-cos-item-k8": (False, {"cosine": 0.1, "aggregate": "item", "intents": 8}),  # dss-cos-item with K = 8
    # dss-cos-item with half / none of the logQ correction: a popularity penalty traded for diversity
    "dss-cos-item-logq05": (False, {"cosine": 0.1, "aggregate": "item", "logq": 0.5}),
    "dss-cos-item-logq0": (False, {"cosine": 0.1, "aggregate": "item", "logq": 0.0}),
    "dss-cos-item-k8-logq0": (False, {"cosine": 0.1, "aggregate": "item", "intents": 8, "logq": 0.0}),
    "dss-cos-item-k8-logq05": (False, {"cosine": 0.1, "aggregate": "item", "intents": 8, "logq": 0.5}),
}
DSS_ROWS = tuple(DSS_VARIANTS)


def dss_runner(name: str) -> Runner:
    """The bench row ``name`` of ``DSS_VARIANTS``."""
    merged, options = DSS_VARIANTS[name]

    def run(split: NextItemSplit, seed: int) -> tuple[dict[str, float], float]:
        return run_dss(split, seed, merged, name, **options)

    return run


def run_dss(
    split: NextItemSplit, seed: int, merged: bool = False, name: str = "dss", **options: Any
) -> tuple[dict[str, float], float]:
    """One DSS model, scored under every merge rule (training/models/dss.py ``MERGES``) on validation and test:
    keys ``<name>[<rule>]|<metric>`` (``valid `` first for validation). ``main`` then picks the row ``<name>`` per
    seed (``pick_dss``) from the validation figures alone."""
    from training.models.dss import MERGES
    from training.train_dss import DSSArgs, merge_scorer, train_dss

    # SASRec's bench settings (dropout 0.5, patience 4), so the rows differ by the model alone
    # assign="text": train_dss reads the items' sentence vectors from the same cache as the diversity reference
    args = DSSArgs(seed=seed, epochs=40, patience=4, dropout=0.5, **options)
    model, result, _ = train_dss(split, args, merged=merged)
    model.eval()
    n_target = split.data.n_items(split.target) if merged else None
    out: dict[str, float] = {}
    for rule in MERGES:
        scorer = merge_scorer(model, args.max_len, rule, n_target)
        for prefix, examples in ((f"{VALID}{name}[{rule}]|", split.valid), (f"{name}[{rule}]|", split.test)):
            metrics = evaluate_ranking(scorer, examples)
            if _DIVERSITY_ON:
                metrics.update(split_diversity(scorer, split, examples))
            out.update({prefix + k: v for k, v in metrics.items()})
    return out, result.epoch_s


def pick_dss(cell: dict[str, float], reference: dict[str, float] | None, name: str = "dss") -> dict[str, float]:
    """A ``run_dss`` cell plus the row ``dss``: the merge rule ``choose_merge`` picks from the cell's VALIDATION
    figures against SASRec's (``reference``), its test (and ``valid ``) metrics, and ``chose <rule>``."""
    from training.models.dss import MERGES
    from training.train_dss import choose_merge

    valid = {rule: {k.split("|", 1)[1]: v for k, v in cell.items() if k.startswith(f"{VALID}{name}[{rule}]|")}
             for rule in MERGES}
    chosen = choose_merge({r: m for r, m in valid.items() if m}, reference)
    picked = {k.split("|", 1)[1]: v for k, v in cell.items() if k.startswith(f"{name}[{chosen}]|")}
    return {**cell, **picked, **{f"{VALID}{k}": v for k, v in valid[chosen].items()}, f"chose {chosen}": 1.0}


def sasrec_reference(results: dict[tuple[str, str, int], tuple[dict[str, float], float]], target: str,
                     seed: int) -> dict[str, float] | None:
    """SASRec's valid ILD@10 and coverage@10 for this target and seed: from this run, else the recorded ones."""
    cell = results.get((target, "sasrec", seed))
    if cell is not None and all(f"{VALID}{m}" in cell[0] for m in ("ILD@10", "coverage@10")):
        return {m: cell[0][f"{VALID}{m}"] for m in ("ILD@10", "coverage@10")}
    return sasrec_valid_diversity(target, seed)


def cached_cells(path: Path | None, diversity: bool) -> dict[tuple[str, str, int], tuple[dict[str, float], float]]:
    """The cells an earlier (possibly interrupted) run with the same ``--cells`` file finished."""
    out: dict[tuple[str, str, int], tuple[dict[str, float], float]] = {}
    if path is None or not path.exists():
        return out
    for line in path.read_text().splitlines():
        c = json.loads(line)
        if c["diversity"] == diversity:
            out[(c["target"], c["model"], c["seed"])] = (c["metrics"], c["epoch_s"])
    return out


def runners() -> dict[str, Runner]:
    out: dict[str, Runner] = {
        "popularity": run_popularity,
        "sasrec": sasrec_runner(False),
        "sasrec-merged": sasrec_runner(True),
        **{name: dss_runner(name) for name in DSS_VARIANTS},
    }
    try:  # the cross-domain rows (GUR, CDSRec and its ablations), when that part is installed
        from bench.cross_domain import cross_domain_runners
    except ImportError:
        return out
    out.update(cross_domain_runners())
    return out


@cache
def _split(root: Path, target: str) -> NextItemSplit:
    return leave_one_out(load_art_office(root / "amazon_art_office_urllm"), target)


def run_task(
    root: Path, target: str, model: str, seed: int, threads: int, diversity: bool = False
) -> tuple[dict[str, float], float]:
    """One (target, model, seed) cell, in a worker process with its own torch threads."""
    global _DIVERSITY_ON
    _DIVERSITY_ON = diversity
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return runners()[model](_split(root, target), seed)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["metric"] == "NDCG@10"]
    tasks = sorted({r["task"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        sub = {r["model"]: r for r in rows if r["task"] == task}
        names = [m for m in models if m in sub]
        ax.bar(names, [sub[m]["mean"] for m in names], yerr=[sub[m]["std"] for m in names], capsize=3)
        ax.set_title(f"{DATASET} {task}: test NDCG@10")
        ax.tick_params(axis="x", rotation=35)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def kept_records(targets: set[str], models: set[str]) -> list[dict[str, Any]]:
    """The recorded quality rows that this run does not replace (other models, or other targets)."""
    path = DOCS / "results.json"
    old = json.loads(path.read_text()) if path.exists() else []
    return [r for r in old if r.get("bench") == BENCH
            and not (r["model"].split("[")[0] in models and r["task"].removeprefix("target=") in targets)]


def previous_commands() -> list[str]:
    """The command lines of the runs whose rows are kept, as the markdown section lists them."""
    path = DOCS / "results.md"
    text = path.read_text() if path.exists() else ""
    section = text.split("<!-- bench:quality -->", 1)[-1].split("<!-- /bench:quality -->", 1)[0]
    return [line.strip().removeprefix("- ").removeprefix("Command: ") for line in section.splitlines()
            if line.strip().removeprefix("- ").startswith(("Command: `", "`python -m bench.quality"))]


def order_like(records: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Rows by task, then in the bench's model order (popularity first), whatever run they came from."""
    rank = {m: i for i, m in enumerate(models)}
    # a model's variants (``dss[quota]``) right after it
    return sorted(records, key=lambda r: (r["task"], rank.get(r["model"].split("[")[0], len(rank)),
                                          "[" in r["model"]))


COMPARED = (("cdsrec", "sasrec"), ("cdsrec", "sasrec-merged"), ("cdsrec", "cdsrec-noadv"), ("cdsrec", "gur"),
            *((d, "sasrec") for d in DSS_ROWS), *((d, "dss") for d in DSS_ROWS if d != "dss"))


def comparisons(records: list[dict[str, Any]], metric: str = "NDCG@10") -> list[str]:
    """One line per task and pair in ``COMPARED`` present in ``records``: by how much the first beats the second."""
    means = {(r["task"], r["model"]): r["mean"] for r in records if r["metric"] == metric}
    out = []
    for task in sorted({t for t, _ in means}):
        for ours, base in COMPARED:
            if (task, ours) in means and (task, base) in means and means[(task, base)] > 0:
                a, b = means[(task, ours)], means[(task, base)]
                word = "beats" if a > b else "does NOT beat"
                out.append(f"- {task}: {ours} {word} {base} on mean {metric}, {a:.4f} vs {b:.4f} "
                           f"({(a / b - 1) * 100:+.1f}%)")
    return out


def merge_text(records: list[dict[str, Any]]) -> str:
    """The DSS merge rules' note and their VALIDATION table (the figures the rule was picked on), when present."""
    ruled = tuple(f"{d}[" for d in DSS_ROWS)  # ``dss[quota]``: one DSS row under one merge rule
    valid = [r for r in records if r.get("split") == "valid" and r["metric"] in ("NDCG@10", *DIVERSITY[:2])
             and (r["model"] == "sasrec" or r["model"].startswith(ruled))]
    if not any(r["model"].startswith(ruled) for r in valid):
        return ""
    return f"""
DSS rows: `dss[<rule>]` is the same trained model under each inference merge rule (training/models/dss.py
`intent_lists`: `max` and `weighted` score orders; `quota` shares the top of the list among the intents present
above lambda in proportion to their presence, `round-robin` in equal turns). The `dss` row takes, per seed, the
rule with the best VALIDATION NDCG@10 among those whose validation ILD@10 and coverage@10 beat SASRec's (else the
best validation NDCG@10): `bench.quality.pick_dss`; test figures never enter the choice. A merged list's metrics
read the target's position in it (the first 20), beyond it its max-score rank among the rest (so MRR is still a
full-ranking MRR). The validation figures the choice was made on:

{table(valid, ["NDCG@10", *DIVERSITY[:2]])}
"""


def main(argv: list[str] | None = None) -> int:
    p = data_parser(__doc__)
    p.add_argument("--targets", nargs="+", default=["art", "office"])
    p.add_argument("--models", nargs="+", default=None, help="default: every model available")
    p.add_argument("--jobs", type=int, default=2, help="cells trained side by side (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--diversity", action="store_true", help="add ILD@10, coverage@10, repeat@10 (see above)")
    p.add_argument("--keep", action="store_true",
                   help="keep the recorded rows of models not run now (rerun some rows, keep the table)")
    p.add_argument("--cells", type=Path, default=None,
                   help="a JSON-lines file: each finished cell is appended, and cells already there are not rerun "
                        "(an interrupted run resumes; rerun with the finished seeds to record them)")
    ns = p.parse_args(argv)
    available = runners()
    models = ns.models or list(available)
    unknown = [m for m in models if m not in available]
    if unknown:
        print(f"unknown models {unknown}; available: {list(available)}", file=sys.stderr)
        return 2
    # seed-major: an interrupted run (``--cells``) has whole seeds of every model and target done first
    tasks = [(t, m, seed) for seed in ns.seeds for t in ns.targets for m in models]
    wall = time.perf_counter()
    done = cached_cells(ns.cells, ns.diversity)
    results = {task: done[task] for task in tasks if task in done}
    # independent cells run side by side, one torch thread each: on 2 cores that beats 2 threads per model
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=ns.jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_task, ns.data_root, *task, ns.threads, ns.diversity): task
                   for task in tasks if task not in results}
        for fut in as_completed(futures):  # each cell saved as it finishes (``--cells``)
            target, model, seed = futures[fut]
            metrics, epoch_s = results[(target, model, seed)] = fut.result()
            if ns.cells is not None:
                with ns.cells.open("a") as f:
                    f.write(json.dumps({"target": target, "model": model, "seed": seed, "diversity": ns.diversity,
                                        "metrics": metrics, "epoch_s": epoch_s}) + "\n")
            shown = metrics.get("NDCG@10", metrics.get(f"{model}[max]|NDCG@10", float("nan")))
            print(f"{target:>7} {model:<14} seed {seed}: NDCG@10 {shown:.4f} ({epoch_s:.1f} s/epoch)", flush=True)
    for (target, model, seed), (metrics, epoch_s) in list(results.items()):
        if model in DSS_ROWS:  # the merge rule, per seed, from validation figures alone
            reference = sasrec_reference(results, target, seed)
            results[(target, model, seed)] = (pick_dss(metrics, reference, model), epoch_s)
    records: list[dict[str, Any]] = []
    chosen: dict[tuple[str, str], list[str]] = {}  # (target, model) -> the merge rule each seed chose
    for target in ns.targets:
        for model in models:
            cells = [results[(target, model, seed)] for seed in ns.seeds]
            for m in (*METRICS, *DIVERSITY):
                if all(m in c[0] for c in cells):  # diversity: only with --diversity, for the models that have it
                    records.append(record(BENCH, DATASET, f"target={target}", model, m, [c[0][m] for c in cells]))
            for m in sorted({k for c in cells for k in c[0] if k.startswith(VALID) and "|" not in k}):
                if all(m in c[0] for c in cells):
                    records.append(record(BENCH, DATASET, f"target={target}", model, m.removeprefix(VALID),
                                          [c[0][m] for c in cells], split="valid"))
            chosen[(target, model)] = [k.removeprefix("chose ") for c in cells for k in c[0] if k.startswith("chose ")]
            # the rows of a model's variants scored from the same trained model (DSS's merge rules)
            subs = dict.fromkeys(k.removeprefix(VALID).split("|")[0] for c in cells for k in c[0] if "|" in k)
            for sub in subs:
                for split_name, prefix in (("test", f"{sub}|"), ("valid", f"{VALID}{sub}|")):
                    for m in (*METRICS, *DIVERSITY):
                        if all(prefix + m in c[0] for c in cells):
                            records.append(record(BENCH, DATASET, f"target={target}", sub, m,
                                                  [c[0][prefix + m] for c in cells], split=split_name))
            records.append(record(BENCH, DATASET, f"target={target}", model, "epoch_s", [c[1] for c in cells]))
    minutes = (time.perf_counter() - wall) / 60
    command = "python -m bench.quality " + shlex.join(argv if argv is not None else sys.argv[1:])
    run_line = f"`{command.strip()}` ({minutes:.0f} min on this machine: {ns.jobs} processes x {ns.threads} thread)."
    how = f"Command: {run_line}"
    if ns.keep:
        records = order_like(kept_records(set(ns.targets), set(models)) + records, list(available))
        lines = [*previous_commands(), run_line]
        how = "Commands (the rows of a later run replace an earlier run's):\n" + "\n".join(f"- {x}" for x in lines)
    shown = [*METRICS, *(m for m in DIVERSITY if any(r["metric"] == m for r in records)), "epoch_s"]
    md = table(tested(records), shown)  # validation records stay in results.json only
    lines = comparisons(tested(records)) + [
        x for m in DIVERSITY[:2] for x in comparisons(tested(records), m) if "dss" in x]
    md += "\n\n" + "\n".join(lines) if lines else ""
    picks = [f"{t} {m}: {', '.join(r)}" for (t, m), r in chosen.items() if r]
    if picks:
        md += ("\n\nMerge rule chosen on validation (``choose_merge``), per seed: " + "; ".join(picks) + ".")
    print(md)
    # with --keep, rows of earlier runs may have other seed counts: say so rather than one wrong number
    counts = sorted({int(r["seeds"]) for r in records})
    seeds_text = f"{counts[0]} seeds" if len(counts) == 1 else (
        "the seeds of each row's run (" + " or ".join(map(str, counts)) + "; ± 0.0000 is one seed)")
    update_json(BENCH, records)
    plot(tested(records), DOCS / "quality.png")
    update_markdown(BENCH, f"""## Next-item recommendation, Amazon Art-Office (bench `quality`)

{how}

Leave-one-out in time order per target domain; test metrics over the full target catalogue (history items
excluded), mean ± std over {seeds_text}; `epoch_s` is train time per epoch.

{md}
{merge_text(records)}
![test NDCG@10 per model](quality.png)
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
