"""Pruner benchmark: what each pruner saves, and whether it keeps the study's verdict, side by side.

    python benchmarks/bench_pruners.py [--studies wd_unpruned n_factors] [--workers 2]

For each study, its grid at the file's seeds in one look (looks: 1, max_seeds: the seeds listed: like for like,
the unpruned variant included) under each pruner: none, Optuna's median (the `wd` study's settings:
n_startup_trials 6, n_warmup_steps 1), Optuna's hyperband (min_resource 1, reduction_factor 3), and the
schedule-aware halving (lesson5.sweep.halving) at its defaults (eta 3, min_epochs 1) and at eta 5 (rungs at 1 and
5 epochs: the cheapest that keeps two values at the full budget of a 5-epoch recipe). Each variant is
`python -m lesson5.sweep <study file> workers=W` in a fresh temporary folder with a journal storage; its trials
are read back: the epochs trained (all trials, pruned or not, every rung) and their share of the unpruned
variant's, the best value (the lowest mean over seeds among the trials that judge the study: every complete trial,
or halving's final rung) and its objective, the claim's and the control's verdicts, and whether both equal the
unpruned variant's. The committed full study's verdicts (sweeps/results/<study>.md: more seeds, more looks) are
printed for reference.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
VARIANTS = {
    "none": "none",
    "median": {"name": "median", "n_startup_trials": 6, "n_warmup_steps": 1},
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
    "halving": {"name": "halving", "eta": 3, "min_epochs": 1},
    "halving eta 5": {"name": "halving", "eta": 5, "min_epochs": 1},
}


def committed(study: str) -> str:
    """The committed full study's verdicts, from its report."""
    path = ROOT / "sweeps" / "results" / f"{Path(study).stem}.md"
    if not path.is_file():
        return "none committed"
    text = path.read_text()
    rule = re.search(r"\*\*Verdict: ([a-z ]+)\.\*\*", text)
    control = re.search(r"\*\*Control verdict: ([a-z ]+)\*\*", text)
    return f"claim {rule.group(1) if rule else '?'}, control {control.group(1) if control else '?'}"


def run_variant(study_name: str, label: str, pruner, workers: int) -> dict:
    """One sweep of the study under `pruner` in a fresh folder: what it trained and what it concluded."""
    import optuna

    from lesson5.sweep import report, spec
    from lesson5.sweep import storage as stores
    from lesson5.sweep import table as tables
    from lesson5.sweep.halving import eliminated
    from lesson5.sweep.verdict import scores

    raw = yaml.safe_load(spec.resolve(study_name).read_text())
    raw.update(looks=1, max_seeds=len(raw.get("seeds", [42])), pruner=pruner)
    with tempfile.TemporaryDirectory() as tmp:
        name = f"{Path(study_name).stem}_{label.replace(' ', '_')}"
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        storage = str(Path(tmp) / "sweeps.journal")
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lesson5.sweep", str(path), f"workers={workers}",
                               f"storage={storage}", "progress=false"], cwd=tmp, env=ENV, capture_output=True,
                              text=True)
        wall = time.perf_counter() - t
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        study = spec.load(str(path))
        opt = optuna.load_study(study_name=name, storage=stores.open_storage(storage))
        table = tables.from_optuna(opt, study)
        got = report.verdicts(table, study)
        param, maximize = study.rule["param"], study.direction == "maximize"
        sc = scores(report.full_budget(table, study).completed(), param, maximize)
        best = (max if maximize else min)(sc, key=lambda v: sc[v].mean) if sc else None
        counts = report.state_counts(table.trials())
        return {"label": label, "wall": wall, "epochs": sum(t.user_attrs.get("epochs") or 0 for t in opt.trials),
                "trials": len(opt.trials), "complete": counts["COMPLETE"], "pruned": counts["PRUNED"],
                "best": best, "best_mean": sc[best].mean if best else float("nan"),
                "claim": got["rule"].result, "control": got["control"].result if "control" in got else "-",
                "rungs": ({k: v for k, v in eliminated(study, table).items()}, study.budgets) if study.budgets
                else None, "summary": got["rule"].summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", nargs="+", default=["wd_unpruned", "n_factors"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    print(f"bench_pruners: {', '.join(args.studies)}; {args.workers} workers, {os.cpu_count()} CPUs; one look at the "
          f"file's seeds for every variant", flush=True)
    for study in args.studies:
        results = []
        for label in args.variants:
            results.append(run_variant(study, label, VARIANTS[label], args.workers))
            r = results[-1]
            print(f"  {study} {label}: {r['epochs']} epochs in {r['wall']:.0f} s", file=sys.stderr, flush=True)
        ref = next((r for r in results if r["label"] == "none"), None)
        print(f"\n{study} (committed full study: {committed(study)})")
        print("| pruner | trials (complete, pruned) | epochs | share of unpruned | best value | its mean | claim | "
              "control | = unpruned? | wall s |")
        print("|---|---|---:|---:|---|---:|---|---|---|---:|")
        for r in results:
            share = f"{100 * r['epochs'] / ref['epochs']:.0f}%" if ref else "-"
            same = ("yes" if (r["claim"], r["control"]) == (ref["claim"], ref["control"]) else "no") if ref else "-"
            print(f"| {r['label']} | {r['trials']} ({r['complete']}, {r['pruned']}) | {r['epochs']} | {share} | "
                  f"{r['best']} | {r['best_mean']:.4f} | {r['claim']} | {r['control']} | {same} | {r['wall']:.0f} |")
        for r in results:
            if r["rungs"]:
                gone, budgets = r["rungs"]
                print(f"  {r['label']}: rungs at {budgets} epochs; eliminated "
                      + "; ".join(f"rung {k}: {', '.join(v) or '-'}" for k, v in gone.items()))
            print(f"  {r['label']} claim: {r['summary']}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
