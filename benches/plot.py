#!/usr/bin/env python3
"""Plots of a scripts/bench.sh results file (benches/results/bench-*.json).

    python benches/plot.py benches/results/bench-YYYYMMDD.json

Writes, beside the JSON and named after it (bench-YYYYMMDD-<plot>.png):
  tps.png         pgbench TPS per configuration and workload: median bars,
                  min-max error bars
  cpu.png         server CPU microseconds per transaction, same layout
  fp.png          false-positive rate against map size (log-log), one line per
                  changed fraction, with the two theory curves and the README's
                  claims at 64 MB
  checkpoint.png  CHECKPOINT duration per configuration (server log's total=)
A section missing from the file (BENCH_ONLY) or failed is skipped.
"""

import json
import sys
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def section(doc, name):
    s = doc.get("sections", {}).get(name)
    if not s or "error" in s:
        return None
    return s


def title_suffix(doc):
    m = doc.get("machine", {})
    quick = " — QUICK run, numbers mean nothing" if doc.get("quick") else ""
    return f"{m.get('postgresql_version', '')}, {m.get('nproc', '?')} CPUs, {doc.get('date', '')}{quick}"


def bars_per_workload(doc, out, metric, ylabel, title):
    s = section(doc, "pgbench")
    if s is None:
        return False
    workloads = s["workloads"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        names = [c["config"] for c in w["configs"]]
        med = [c[metric]["median"] for c in w["configs"]]
        lo = [c[metric]["median"] - c[metric]["min"] for c in w["configs"]]
        hi = [c[metric]["max"] - c[metric]["median"] for c in w["configs"]]
        colors = ["#888888"] + ["C0", "C1", "C2", "C3", "C4"][: len(names) - 1]
        ax.bar(names, med, yerr=[lo, hi], capsize=5, color=colors)
        ax.set_title(w["workload"])
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", rotation=20)
        ax.grid(axis="y", alpha=0.3)
        for x, y in enumerate(med):
            ax.annotate(f"{y:.0f}" if y >= 100 else f"{y:.1f}", (x, y), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    fig.suptitle(f"{title} (median, min–max)\n{title_suffix(doc)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_fp(doc, out):
    s = section(doc, "fidelity")
    if s is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, f in enumerate(s["fractions"]):
        pts = f["points"]
        sizes = [p["map_mb"] for p in pts]
        mean = [max(p["false_positive_rate_mean"], 1e-9) for p in pts]
        lo = [max(p["false_positive_rate_summary"]["min"], 1e-9) for p in pts]
        hi = [max(p["false_positive_rate_summary"]["max"], 1e-9) for p in pts]
        color = f"C{i}"
        label = f"{f['changed_fraction'] * 100:.0f} % changed"
        ax.plot(sizes, mean, "o-", color=color, label=f"{label}: measured (mean)")
        ax.fill_between(sizes, lo, hi, color=color, alpha=0.15)
        ax.plot(sizes, [p["theory_blocks_q2"] for p in pts], ":", color=color,
                label=f"{label}: theory q²")
    claim = s.get("readme_claim", {})
    if claim.get("applies"):
        for c in claim["checks"]:
            ax.plot([64], [c["claimed_rate"]], "k*", markersize=10)
        ax.plot([], [], "k*", label="README claim at 64 MB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = [p["map_mb"] for p in s["fractions"][0]["points"]]
    ax.set_xticks(sizes, [str(x) for x in sizes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("map size (MB)")
    ax.set_ylabel("false-positive rate (of unchanged blocks)")
    setup = s["setup"]
    ax.set_title(f"False positives, {setup['data_gb']:.0f} GB of data, {setup['trials']} trials\n"
                 f"{title_suffix(doc)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_checkpoint(doc, out):
    s = section(doc, "checkpoint")
    if s is None:
        return False
    configs = s["configs"]
    names = [c["config"] for c in configs]
    med = [c["total_s"]["median"] for c in configs]
    lo = [c["total_s"]["median"] - c["total_s"]["min"] for c in configs]
    hi = [c["total_s"]["max"] - c["total_s"]["median"] for c in configs]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.bar(names, med, yerr=[lo, hi], capsize=5, color=["#888888", "C0", "C1"][: len(names)])
    ax.set_ylabel("CHECKPOINT total= (s)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Checkpoint after {s['setup']['burst']}\n{title_suffix(doc)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: plot.py RESULTS.json")
    path = Path(sys.argv[1])
    doc = json.loads(path.read_text())
    stem = path.with_suffix("")
    made = []
    for name, fn in [
        ("tps", lambda out: bars_per_workload(doc, out, "tps", "transactions per second", "pgbench TPS")),
        ("cpu", lambda out: bars_per_workload(doc, out, "cpu_us_per_tx", "server CPU µs per transaction",
                                              "Server CPU per transaction")),
        ("fp", lambda out: plot_fp(doc, out)),
        ("checkpoint", lambda out: plot_checkpoint(doc, out)),
    ]:
        out = Path(f"{stem}-{name}.png")
        if fn(out):
            made.append(str(out))
    print("plot.py: " + (", ".join(made) if made else "nothing to plot"), file=sys.stderr)


if __name__ == "__main__":
    main()
