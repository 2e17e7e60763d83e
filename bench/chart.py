"""Bar chart of a bench result: python3 bench/chart.py bench/results/latest.json out.png

Two panels per case: requests/s (higher is better) and Envoy CPU microseconds per request
(lower is better), annotated with the ratio to case a (bare Envoy) and case b (Envoy's own
oauth2 filter). Drawn by scripts/bench.mjs with matplotlib from bench/.venv.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, out):
    r = json.load(open(src))
    cases = r["cases"]
    labels = [f'{c["id"]}. {c["name"]}' for c in cases]
    colors = {"a": "#9e9e9e", "b": "#e07b39", "c": "#2e7d32", "d": "#66bb6a", "e": "#c62828", "f": "#7e57c2", "g": "#1565c0", "h": "#64b5f6"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.75 * len(cases) + 2.2))
    for ax, key, title, unit in (
        (axes[0], "rps", "requests/s (higher is better)", "{:,.0f}"),
        (axes[1], "cpu_us_per_req", "Envoy CPU µs per request (lower is better)", "{:.1f}"),
    ):
        vals = [c.get(key) or 0 for c in cases]
        y = range(len(cases))
        ax.barh(y, vals, color=[colors.get(c["id"], "#607d8b") for c in cases])
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels if ax is axes[0] else [""] * len(cases))
        ax.invert_yaxis()
        ax.set_title(title)
        top = max(vals) if vals else 1
        for i, (c, v) in enumerate(zip(cases, vals)):
            ra = c.get("rps_vs_a" if key == "rps" else "cpu_vs_a")
            rb = c.get("rps_vs_b" if key == "rps" else "cpu_vs_b")
            note = unit.format(v)
            if c["id"] != "a" and ra is not None:
                note += f"  {ra:.2f}x a"
            if c["id"] not in ("a", "b") and rb is not None:
                note += f", {rb:.2f}x b"
            if not c.get("ok", True):
                note += "  (status check FAILED)"
            ax.text(v + top * 0.01, i, note, va="center", fontsize=8)
        ax.set_xlim(0, top * 1.45)
    m = r["machine"]
    s = r["settings"]
    fig.suptitle(
        f'bffgate vs bare Envoy vs Envoy oauth2: Envoy {m.get("envoy")} --concurrency 1, '
        f'wrk -t{s["threads"]} -c{s["connections"]} -d{s["duration"]}s x{s["rounds"]}, HTTPS, direct_response 200\n'
        f'{m.get("cpu")}, {m.get("cores")} cores; {r["date"][:19]}Z',
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
