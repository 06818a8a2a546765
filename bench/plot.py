"""Plots bench/results.json: overhead over the baseline per hook and
configuration, as measured in one run (bars: the median of the rounds;
whiskers: the lowest and highest round). Used by `cargo xtask bench`.

usage: python3 bench/plot.py RESULTS.json OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIGS = [
    ("untagged", "loaded, untagged"),
    ("tagged_allowed", "tagged, allowed"),
    ("tagged_recorded", "tagged, recorded"),
    ("auditd", "auditd (peer)"),
]
OPS = ["exec", "unlink", "connect", "sendto"]


def main():
    results_path, out = sys.argv[1], sys.argv[2]
    with open(results_path) as f:
        run = json.load(f)
    rows = {(r["config"], r["op"]): r for r in run["summary"]["overhead"]}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(CONFIGS)
    for i, (config, label) in enumerate(CONFIGS):
        xs, ys, errs = [], [], [[], []]
        for j, op in enumerate(OPS):
            r = rows.get((config, op))
            if r:
                xs.append(j + (i - (len(CONFIGS) - 1) / 2) * width)
                ys.append((r["ratio"] - 1) * 100)
                errs[0].append((r["ratio"] - r["low"]) * 100)
                errs[1].append((r["high"] - r["ratio"]) * 100)
        if xs:
            ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(OPS)), OPS)
    ax.set_ylabel("overhead over baseline (%), median of rounds")
    ax.set_title(f"What Guard costs ({run['kernel']}, ratios within one run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
