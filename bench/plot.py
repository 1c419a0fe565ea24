#!/usr/bin/env python3
"""Plots the scaling series of `pbc-bench` results to a PNG (docs/benchmark-scaling.png).

    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install matplotlib
    target/bench-venv/bin/python bench/plot.py target/bench/<run>/results.json [more.json ...] \
        -o docs/benchmark-scaling.png

Left: end-to-end wall time of each mode against the number of batches (ours/baseline written
beside each point). Right: peak RSS of the controller (ours) and of the baseline driver, plus the
memory runs with suspended batches when present (10,000 and 100,000; one namespace and
spread over many), with a restart over them. A memory run of the same size and spread as one in
an earlier file given supersedes it, so newer runs go last.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("-o", "--output", default="docs/benchmark-scaling.png")
    args = ap.parse_args()

    pairs, memory, machine = [], [], {}
    for path in args.results:
        with open(path) as f:
            r = json.load(f)
        machine = r.get("machine", machine)
        pairs += [p for p in r.get("pairs", []) if p["preset"] == "scaling"]
        memory += r.get("memory", [])
    # The newest run of each size and spread (files are given oldest first).
    memory = list({(m["batches"], m.get("namespaces", 1)): m for m in memory}.values())
    if not pairs:
        raise SystemExit("no scaling pairs in the given results")
    pairs.sort(key=lambda p: p["baseline"]["workload"]["batches"])
    batches = [p["baseline"]["workload"]["batches"] for p in pairs]
    shards = pairs[0]["baseline"]["workload"]["shards"]
    par = pairs[0]["baseline"]["workload"]["parallelism"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    base = [p["baseline"]["wall_s"] for p in pairs]
    ours = [p["ours"]["wall_s"] for p in pairs]
    ax1.plot(batches, base, "o-", label="baseline: bare Jobs + minimal watch driver")
    ax1.plot(batches, ours, "s-", label="ours: PredictionBatches + controller")
    for b, o, p in zip(batches, ours, pairs):
        ax1.annotate(f"×{p['ratio']:.2f}", (b, o), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("batches (log)")
    ax1.set_ylabel("end-to-end wall time, s (log)")
    ax1.set_title(f"Time: B batches × {shards} shards, parallelism {par}")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8, loc="upper left")

    mib = lambda k: None if k is None else k / 1024.0  # noqa: E731
    ax2.plot(batches, [mib(p["ours"]["peak_rss_kib"]) for p in pairs], "s-", label="controller peak RSS (VmHWM)")
    drv = [mib(p["baseline"]["peak_rss_kib"]) for p in pairs]
    if any(d is not None for d in drv):
        ax2.plot(batches, drv, "o-", label="baseline driver peak RSS")
    for m in memory:
        where = f" in {m['namespaces']} namespaces" if m.get("namespaces", 1) > 1 else ""
        marker = "D" if m.get("namespaces", 1) == 1 else "v"
        ax2.plot([m["batches"]], [mib(m["peak_rss_kib"])], marker, color="C3",
                 label=f"suspended batches cached{where or ' (one namespace)'}")
        if m.get("restart_peak_rss_kib"):
            ax2.plot([m["batches"]], [mib(m["restart_peak_rss_kib"])], "x" if not where else "+",
                     color="C4", markersize=9, label=f"… controller restarted over them{where}")
    ax2.axhline(64, color="grey", linestyle="--", linewidth=1, label="target at 10,000 batches: 64 MiB")
    if any(m["batches"] >= 100_000 for m in memory):
        ax2.axhline(300, color="grey", linestyle=":", linewidth=1, label="target at 100,000 batches: 300 MiB")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("batches (log)")
    ax2.set_ylabel("MiB (log)")
    ax2.set_title("Memory")
    ax2.grid(True, which="both", alpha=0.3)
    handles, labels = ax2.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax2.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")

    fig.suptitle(
        f"prediction-batch-controller vs bare Jobs on a local control plane with kwok "
        f"({machine.get('nproc', '?')} cores, {machine.get('cpu_model', '?')})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
