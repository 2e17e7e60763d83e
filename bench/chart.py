"""Bar chart of a bench result: python3 bench/chart.py bench/results/latest.json out.png

Two panels per case: requests/s (higher is better) and Envoy CPU microseconds per request
(lower is better), each the median over the rounds with the min-max range as an error bar, the
CPU panel annotated with the CPU added over the case's bare Envoy (a: HTTPS, i: plain HTTP,
m: 2 KB Cookie header) in the same round. Drawn by scripts/bench.mjs with matplotlib from
bench/.venv.
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"bare": "#9e9e9e", "oauth2": "#e07b39", "bffgate": "#2e7d32", "noop": "#7e57c2",
          "fleet": "#1565c0", "fleetnc": "#64b5f6", "user": "#1b5e20"}


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def main(src, out):
    r = json.load(open(src))
    cases = r["cases"]
    labels = [f'{c["id"]}. {c["name"]}' for c in cases]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.55 * len(cases) + 2.2))
    for ax, key, title, unit in (
        (axes[0], "rps_spread", "requests/s (higher is better)", "{:,.0f}"),
        (axes[1], "cpu_spread", "Envoy CPU µs per request (lower is better)", "{:.1f}"),
    ):
        med = [c[key]["median"] if finite(c[key]["median"]) else 0 for c in cases]
        lo = [m - c[key]["min"] if finite(c[key]["min"]) else 0 for m, c in zip(med, cases)]
        hi = [c[key]["max"] - m if finite(c[key]["max"]) else 0 for m, c in zip(med, cases)]
        y = range(len(cases))
        ax.barh(y, med, xerr=[lo, hi], capsize=2, color=[COLORS.get(c["envoy"], "#607d8b") for c in cases])
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels if ax is axes[0] else [""] * len(cases))
        ax.invert_yaxis()
        ax.set_title(title)
        top = max([m + h for m, h in zip(med, hi)] or [1])
        for i, (c, v, h) in enumerate(zip(cases, med, hi)):
            note = unit.format(v)
            added = c.get("added_cpu_us")
            if key == "cpu_spread" and added and finite(added.get("median")):
                note += f'  {added["median"]:+.1f} over {c["base"]}'
            if not c.get("ok", True):
                note += "  (status check FAILED)"
            ax.text(v + h + top * 0.01, i, note, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.5)
    m = r["machine"]
    s = r["settings"]
    fig.suptitle(
        f'bffgate vs bare Envoy vs Envoy oauth2: Envoy {m.get("envoy")} --concurrency 1, '
        f'wrk -t{s["threads"]} -c{s["connections"]} -d{s["duration"]}s, {s["rounds"]} interleaved rounds '
        f'(median, min-max), direct_response 200\n'
        f'{m.get("cpu")}, {m.get("cores")} cores, load average at start {m.get("loadavg_at_start")}; {r["date"][:19]}Z',
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
