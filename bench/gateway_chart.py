"""The picture of a gateway_vs_bare.sh run: one SVG, two panels (throughput, p99 latency), a group
of bars per connection count (the bare endpoint, then each audit durability of the gateway), each
bar the median over rounds with every round's own figure as a dot on it, and each gateway bar
labelled with its ratio to the bare endpoint (throughput) or the latency it adds (p99).

Usage: python3 bench/gateway_chart.py OUT.svg RESULTS.jsonl...   (one results file per connection
count, as gateway_vs_bare.sh writes them: rows {"round", "mode", "cpu_us", "run": {...}})
No dependency beyond the standard library: the SVG is written by hand.
"""

import json
import statistics
import sys
from html import escape

MODES = [("bare", "#8c8c8c", "bare endpoint"), ("full", "#d9822b", "gateway, audit full"),
         ("process", "#2b6cb0", "gateway, audit process")]
W, PANEL_H, TOP, LEFT, GAP = 820, 250, 70, 70, 40


def load(paths):
    """{conns: {mode: [rows]}} from the results files."""
    out = {}
    for p in paths:
        rows = [json.loads(line) for line in open(p) if line.strip()]
        if not rows:
            continue
        conns = int(p.rsplit("-", 1)[-1].split(".")[0])  # results-<conns>.jsonl
        for r in rows:
            out.setdefault(conns, {}).setdefault(r["mode"], []).append(r)
    return dict(sorted(out.items()))


def nice_max(v):
    """A round axis maximum at or above v, whose quarters (the grid lines) are round too."""
    if v <= 0:
        return 1.0
    mag = 10 ** (len(str(int(v))) - 1)
    for step in (1, 2, 4, 6, 8, 10):
        if step * mag >= v:
            return step * mag
    return 10 * mag


def panel(data, key, y0, title, unit, label, goal):
    """One panel's SVG elements: axes, bars, per-round dots, labels, and the goal (`goal` of the
    bare median) as a dashed line."""
    groups = list(data)
    values = [r["run"][key] for g in groups for m in data[g].values() for r in m]
    goals = [goal(statistics.median(r["run"][key] for r in data[g]["bare"]))
             for g in groups if data[g].get("bare")]
    top = nice_max(max(values + goals) * 1.15)
    plot_w = W - LEFT - 20
    group_w = plot_w / len(groups)
    bar_w = (group_w - GAP) / len(MODES)
    y = lambda v: y0 + PANEL_H - v / top * PANEL_H
    el = [f'<text x="{LEFT}" y="{y0 - 12}" class="title">{escape(title)}</text>']
    for i in range(5):
        v = top * i / 4
        el.append(f'<line x1="{LEFT}" x2="{W - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        el.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">'
                  f'{v:g}{unit}</text>')
    for gi, conns in enumerate(groups):
        gx = LEFT + gi * group_w + GAP / 2
        bare = data[conns].get("bare")
        for mi, (mode, colour, _) in enumerate(MODES):
            rows = data[conns].get(mode)
            if not rows:
                continue
            med = statistics.median(r["run"][key] for r in rows)
            x = gx + mi * bar_w
            el.append(f'<rect x="{x:.1f}" y="{y(med):.1f}" width="{bar_w - 4:.1f}" '
                      f'height="{y0 + PANEL_H - y(med):.1f}" fill="{colour}"/>')
            for r in rows:
                el.append(f'<circle cx="{x + (bar_w - 4) / 2:.1f}" cy="{y(r["run"][key]):.1f}" '
                          f'r="2.5" class="dot"/>')
            if mode != "bare" and bare:
                bare_med = statistics.median(r["run"][key] for r in bare)
                above = max([med, goal(bare_med)] + [r["run"][key] for r in rows])
                text = label(med, bare_med)
                el.append(f'<text x="{x + (bar_w - 4) / 2:.1f}" y="{y(above) - 6:.1f}" '
                          f'class="label" text-anchor="middle">{escape(text)}</text>')
        if bare:
            # The goal for the gateway bars: a dashed line across them.
            at = goal(statistics.median(r["run"][key] for r in bare))
            x0, x1 = gx + bar_w - 2, gx + len(MODES) * bar_w - 2
            el.append(f'<line x1="{x0:.1f}" x2="{x1:.1f}" y1="{y(at):.1f}" y2="{y(at):.1f}" '
                      f'class="goal"/>')
        el.append(f'<text x="{gx + (group_w - GAP) / 2:.1f}" y="{y0 + PANEL_H + 18}" '
                  f'class="axis" text-anchor="middle">{conns} connection{"s" if conns != 1 else ""}'
                  f'</text>')
    el.append(f'<line x1="{LEFT}" x2="{W - 20}" y1="{y0 + PANEL_H}" y2="{y0 + PANEL_H}" class="base"/>')
    return el


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    data = load(paths)
    if not data:
        sys.exit("no results to draw")
    h = TOP + 2 * PANEL_H + 3 * 60
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" '
          f'viewBox="0 0 {W} {h}" font-family="sans-serif">',
          "<style>.title{font-size:14px;font-weight:bold}.axis{font-size:11px;fill:#444}"
          ".label{font-size:11px;fill:#111}.grid{stroke:#e4e4e4}.base{stroke:#444}"
          ".dot{fill:#fff;stroke:#111;stroke-width:1}"
          ".goal{stroke:#c53030;stroke-width:1.5;stroke-dasharray:5 3}</style>",
          f'<rect width="{W}" height="{h}" fill="#fff"/>',
          '<text x="20" y="24" font-size="16" font-weight="bold">'
          "palisade serve vs bare tract inference (bench/gateway_vs_bare.sh)</text>"]
    for i, (_, colour, name) in enumerate(MODES):
        x = 20 + i * 190
        el.append(f'<rect x="{x}" y="36" width="12" height="12" fill="{colour}"/>')
        el.append(f'<text x="{x + 18}" y="46" class="axis">{escape(name)}</text>')
    x = 20 + len(MODES) * 190
    el.append(f'<line x1="{x}" x2="{x + 14}" y1="42" y2="42" class="goal"/>')
    el.append(f'<text x="{x + 18}" y="46" class="axis">goal: 95% of bare, +1 ms p99</text>')
    el += panel(data, "rps", TOP + 20, "Throughput, requests/s (bars: median of rounds; dots: "
                "rounds; labels: ratio to bare)", "",
                lambda g, b: f"{g / b:.3f}", lambda b: 0.95 * b)
    el += panel(data, "p99_ms", TOP + PANEL_H + 110, "p99 latency (labels: added to bare)", " ms", lambda g, b: f"{g - b:+.2f} ms", lambda b: b + 1.0)
    el.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(el) + "\n")


if __name__ == "__main__":
    main()
