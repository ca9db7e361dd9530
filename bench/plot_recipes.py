"""Plots for docs/policies.md: mean success against training CPU-minutes, and against chunk latency.

    python -m bench.plot_recipes --sweep bench/results/recipe_sweep.json --latency bench/results/latency.json --out-dir docs/img
    python -m bench.plot_recipes --sweep bench/results/recipe_sweep_backbones.json --latency bench/results/latency_backbones.json \
        --reference bench/results/metaworld_success_relative.json --prefix backbones

Reads the JSON of bench.recipe_sweep (success, train_cpu_minutes per recipe x sampler x task) and of
bench.latency (batch-1 chunk p50 per variant, compiled mode where measured). Needs matplotlib (`.[bench]`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro


@dataclass(frozen=True)
class Args:
    sweep: Path = Path("bench/results/recipe_sweep.json")
    latency: Path = Path("bench/results/latency.json")
    out_dir: Path = Path("docs/img")
    reference: Path | None = None
    """A bench.metaworld_success JSON whose diffusion rows (the `default` preset) are drawn as one more point, on the sweep's tasks."""
    reference_recipe: str = "mlp-flow-relative"
    """The recipe name (bench.recipe_sweep.RECIPES) that the reference preset trains, to join its latency row."""
    prefix: str = "recipes"
    """File names: <prefix>_success_vs_cpu.png and <prefix>_success_vs_latency.png."""


def main() -> None:
    args = tyro.cli(Args)
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: the plots need matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    rows = json.loads(args.sweep.read_text())["results"]
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by[(r["recipe"], r["sampler"])].append(r)
    tasks = sorted({r["task"] for r in rows})
    if args.reference is not None:  # the default preset = this recipe with Euler-3, trained by bench.metaworld_success
        ref = [r for r in json.loads(args.reference.read_text())["results"] if r["policy"] == "diffusion" and r["task"] in tasks]
        by[(args.reference_recipe, "euler-3")] = [r | {"recipe": args.reference_recipe, "sampler": "euler-3"} for r in ref]
    latency = {}
    if args.latency.exists():
        for r in json.loads(args.latency.read_text())["results"]:
            if r["metric"] == "chunk_latency_ms_p50" and r.get("recipe"):
                key = (r["recipe"], r["sampler"])
                if r["mode"] == "compiled" or key not in latency:
                    latency[key] = r["value"]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for xname, xlabel, fname in (("cpu", "training CPU-minutes per task (mean)", f"{args.prefix}_success_vs_cpu.png"), ("latency", "chunk latency, batch 1, p50 (ms, log)", f"{args.prefix}_success_vs_latency.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for (recipe, sampler), sel in sorted(by.items()):
            if {r["task"] for r in sel} != set(tasks):
                continue  # only recipes measured on every task are comparable
            x = float(np.mean([r["train_cpu_minutes"] for r in sel])) if xname == "cpu" else latency.get((recipe, sampler))
            if x is None:
                continue
            y = 100 * float(np.mean([r["value"] for r in sel]))
            ax.scatter(x, y, s=40)
            ax.annotate(f"{recipe} {sampler}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if xname == "latency":
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"mean success over {len(tasks)} Meta-World tasks (%)")
        ax.set_title("10 demos/task, 50 seeded episodes per task", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.out_dir / fname, dpi=120)
        print(f"wrote {args.out_dir / fname}")


if __name__ == "__main__":
    main()
