"""Render a regbench `compare` result as docs/benchmarks.md and an SVG chart of the ratios.

Input is regbench's JSON document (`compare --json`): target A is the candidate
(cargohold), target B the baseline (Distribution), so regbench's A/B ratios are
candidate/baseline. Everything here is pure string building, testable without servers.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sysinfo import Environment

# BASELINE.md: Distribution against itself stays within 0.90..1.10 on a quiet machine.
NOISE_LOW, NOISE_HIGH = 0.90, 1.10
# "other CPU" (% of one core used by neither client nor servers) above this marks a noisy workload.
NOISY_OTHER_CPU = 25.0


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    median: float | None
    lo: float | None
    hi: float | None


@dataclass(frozen=True)
class Row:
    """One metric of one workload, candidate against baseline."""

    workload: str
    metric: str
    unit: str
    label: str
    higher_is_better: bool
    cand: Stat
    base: Stat
    ratio: float | None  # candidate median / baseline median
    paired: float | None  # median of the per-round ratios
    round_ratios: tuple[float, ...]
    other_cpu: float | None  # max "other CPU" % of both sides during this workload

    def to_advantage(self, ratio: float) -> float:
        """>1 means the candidate is better, whichever direction the metric counts."""
        return ratio if self.higher_is_better else 1.0 / ratio

    @property
    def advantage(self) -> float | None:
        return self.to_advantage(self.ratio) if self.ratio else None

    @property
    def advantage_range(self) -> tuple[float, float] | None:
        rr = [self.to_advantage(r) for r in self.round_ratios if r > 0]
        return (min(rr), max(rr)) if rr else None

    @property
    def noisy(self) -> bool:
        return self.other_cpu is not None and self.other_cpu > NOISY_OTHER_CPU


@dataclass(frozen=True)
class ServerInfo:
    name: str
    kind: str
    url: str
    pid: int
    command: str
    tree: str  # "1234 cargohold, 1240 python3"


@dataclass
class RunInfo:
    """What the harness knows about the run besides regbench's JSON."""

    candidate: str
    baseline: str
    quick: bool
    standin: bool
    started: float  # epoch seconds
    duration_s: float
    env: Environment
    servers: list[ServerInfo]
    commands: list[tuple[str, str]]  # (comment, shell command)
    svg_link: str
    json_link: str
    json_path: str  # the same file relative to the repository root, for commands
    log_link: str
    regbench_markdown: str = ""
    problems: list[str] = field(default_factory=list)  # servers that died, regbench failures


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def rows_from_doc(doc: dict[str, Any], cand: str, base: str) -> list[Row]:
    rows: list[Row] = []
    for wname, w in doc["workloads"].items():
        tc, tb = w["targets"][cand], w["targets"][base]
        others = [
            x
            for x in (_num(tc.get("other_cpu_pct")), _num(tb.get("other_cpu_pct")))
            if x is not None
        ]
        for m in w["metrics"]:
            key = m["key"]
            r = w.get("ratios_a_over_b", {}).get(key, {})
            rows.append(
                Row(
                    workload=wname,
                    metric=key,
                    unit=m["unit"],
                    label=m["label"],
                    higher_is_better=bool(m["higher_is_better"]),
                    cand=Stat(
                        _num(tc["median"].get(key)),
                        _num(tc["min"].get(key)),
                        _num(tc["max"].get(key)),
                    ),
                    base=Stat(
                        _num(tb["median"].get(key)),
                        _num(tb["min"].get(key)),
                        _num(tb["max"].get(key)),
                    ),
                    ratio=_num(r.get("median_ratio")),
                    paired=_num(r.get("paired_median_ratio")),
                    round_ratios=tuple(float(x) for x in r.get("round_ratios") or ()),
                    other_cpu=max(others) if others else None,
                )
            )
    return rows


def errors_from_doc(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(workload, target, error) for every failed workload."""
    return [
        (wname, tname, res["error"])
        for wname, w in doc["workloads"].items()
        for tname, res in w["targets"].items()
        if res.get("error")
    ]


# --------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """Three significant digits or so, like regbench's tables."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_stat(s: Stat) -> str:
    if s.median is None:
        return "-"
    if s.lo is None or s.hi is None or s.lo == s.hi:
        return f"**{fmt(s.median)}**"
    return f"**{fmt(s.median)}** ({fmt(s.lo)}..{fmt(s.hi)})"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3f}" if r < 10 else f"{r:.1f}"


def fmt_pct(v: Any) -> str:
    n = _num(v)
    return "-" if n is None else f"{n:.0f}%"


def fmt_mib(v: Any) -> str:
    n = _num(v)
    return "-" if n is None else f"{n:.0f} MiB"


def verdict(row: Row) -> str:
    adv = row.advantage
    if adv is None:
        return "n/a"
    noisy = " (noisy machine)" if row.noisy else ""
    if adv >= NOISE_HIGH:
        return f"{adv:.2f}{X} better{noisy}"
    if adv <= NOISE_LOW:
        return f"{1 / adv:.2f}{X} worse{noisy}"
    return f"same within noise{noisy}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---:" if i in right else "---" for i in range(len(header))]
    return "\n".join([line(header), line(align), *(line(r) for r in rows)])


def _load(load: tuple[float, float, float] | None) -> str:
    return "-" if load is None else " / ".join(f"{x:.2f}" for x in load)


# --------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------


def render_markdown(doc: dict[str, Any], info: RunInfo) -> str:
    cand, base = info.candidate, info.baseline
    rows = rows_from_doc(doc, cand, base)
    errors = errors_from_doc(doc)
    opts = doc.get("options", {})
    rounds = opts.get("rounds")
    order = "A,B,B,A,… (who goes first alternates)" if opts.get("order") == "abba" else "A,B,A,B,…"
    date = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(info.started))
    env = info.env
    out: list[str] = []
    add = out.append

    add(f"# Benchmarks: {cand} vs CNCF Distribution\n")
    add(
        "<!-- Generated by bench/compare.py from the regbench JSON linked below; do not edit by hand. -->\n"
    )
    if info.quick:
        add(
            "> **Quick smoke run** (`--quick`: small sizes, short loads, 1 round). It checks that the "
            "harness and both registries work; its numbers say nothing about performance.\n"
        )
    if info.standin:
        add(
            f"> **Stand-in run** (`--standin`): `{cand}` is a second docker-registry, not cargohold. "
            "All ratios should be ~1.0; the spread is the noise floor of this machine.\n"
        )
    add(
        f"Measured on {date} with regbench (`../shared/bench/regbench.py`) `compare` "
        f"(version {doc.get('regbench', '?')}): every workload ran alternately on both registries, "
        f"{rounds} round(s) each, order {order}; total {info.duration_s / 60:.1f} min. "
        f"Both registries ran on the same {env.logical_cpus}-CPU machine as the client "
        f"({env.cpu_model}, {env.memory_gib:.0f} GiB), on 127.0.0.1, each with a fresh data directory."
    )
    add("")
    add(
        f"**Ratio** = {cand} / Distribution of the medians. **Advantage** turns it so that > 1 always "
        f"means {cand} is better (ratio for throughput and request rates, 1/ratio for latencies and "
        f"walk times). Distribution against itself stays within {NOISE_LOW:.2f}–{NOISE_HIGH:.2f} "
        "on a quiet machine (shared/bench/BASELINE.md), so smaller differences are noise."
    )
    add("")
    add(f"![{cand}/Distribution advantage per metric]({info.svg_link})")
    add("")

    better = sum(1 for r in rows if r.advantage is not None and r.advantage >= NOISE_HIGH)
    worse = sum(1 for r in rows if r.advantage is not None and r.advantage <= NOISE_LOW)
    same = sum(1 for r in rows if r.advantage is not None) - better - worse
    add(
        f"Of {len(rows)} metrics, {cand} is better on **{better}**, worse on **{worse}**, "
        f"within noise on **{same}**"
        + (
            f"; {len(rows) - better - worse - same} have no result (errors below)."
            if errors
            else "."
        )
    )
    add("")

    add("## Results\n")
    head = [
        "workload",
        "metric",
        "unit",
        "better",
        f"{cand}: median (min..max)",
        "Distribution: median (min..max)",
        "ratio",
        "per-round ratios",
        "advantage",
    ]
    table_rows = []
    prev = ""
    for r in rows:
        rr = r.round_ratios
        table_rows.append(
            [
                r.workload if r.workload != prev else "",
                r.metric,
                r.unit,
                "higher" if r.higher_is_better else "lower",
                fmt_stat(r.cand),
                fmt_stat(r.base),
                f"**{fmt_ratio(r.ratio)}**",
                f"{min(rr):.2f}..{max(rr):.2f}" if rr else "-",
                verdict(r),
            ]
        )
        prev = r.workload
    add(md_table(head, table_rows, {4, 5, 6, 7}))
    add("")
    add(
        "min..max: over the rounds. Per-round ratios: each round's "
        f"{cand} value over the Distribution value of the same round (adjacent in time); "
        "their median is in the JSON as `paired_median_ratio`. What each metric means: "
        "the `label` of each metric in the JSON and the workload table in shared/bench/BASELINE.md."
    )
    add("")

    add("## CPU and memory\n")
    res_head = [
        "workload",
        f"{cand} server CPU",
        f"{cand} peak RSS",
        "Distribution server CPU",
        "Distribution peak RSS",
        f"client CPU ({cand} / Dist.)",
        f"other CPU ({cand} / Dist.)",
    ]
    res_rows = []
    for wname, w in doc["workloads"].items():
        tc, tb = w["targets"][cand], w["targets"][base]
        res_rows.append(
            [
                wname,
                fmt_pct(tc.get("server_cpu_pct")),
                fmt_mib(tc.get("server_rss_peak_mib")),
                fmt_pct(tb.get("server_cpu_pct")),
                fmt_mib(tb.get("server_rss_peak_mib")),
                f"{fmt_pct(tc.get('client_cpu_pct'))} / {fmt_pct(tb.get('client_cpu_pct'))}",
                f"{fmt_pct(tc.get('other_cpu_pct'))} / {fmt_pct(tb.get('other_cpu_pct'))}",
            ]
        )
    add(md_table(res_head, res_rows, set(range(1, 7))))
    add("")
    add(
        "CPU: % of one core during the timed sections, for the server's whole process tree; client = "
        "regbench and wrk; other = everything else on the machine (other tenants, kernel writeback). "
        f"Above ~{NOISY_OTHER_CPU:.0f}% other CPU the workload's ratio is marked noisy. Peak RSS: "
        "the server tree's resident memory, sampled at 10 Hz during the workload."
    )
    add("")
    for t in doc["targets"]:
        hwm = _num(t.get("server_vmhwm_mib"))
        add(
            f"* **{t['name']}** peak RSS over the whole run: {fmt_mib(t.get('server_peak_rss_mib'))} "
            f"(sampled, process tree)"
            + (f"; VmHWM of the main process {hwm:.0f} MiB" if hwm else "")
        )
    add("")

    if errors or info.problems:
        add("## Errors\n")
        add(
            "A failed workload has no numbers: regbench checks every answer (digests, sizes, tag and "
            "repository sets) and records the first failure instead of a measurement.\n"
        )
        for problem in info.problems:
            add(f"* {problem}")
        for wname, tname, err in errors:
            add(f"* `{wname}` on **{tname}**: `{err}`")
        add("")

    notes = []
    for wname, w in doc["workloads"].items():
        for tname, res in w["targets"].items():
            samples = res.get("samples") or []
            if samples and samples[-1].get("info"):
                facts = ", ".join(f"{k}={v}" for k, v in samples[-1]["info"].items())
                notes.append(f"* `{wname}` on {tname}: {facts}")
    if notes:
        add("## Notes recorded by regbench (last round)\n")
        out.extend(notes)
        add("")

    add("## Machine\n")
    machine = [
        [
            "CPU",
            f"{env.cpu_model}, {env.logical_cpus} logical CPUs"
            + (f" (flags: {' '.join(env.cpu_flags)})" if env.cpu_flags else ""),
        ],
        ["memory", f"{env.memory_gib:.1f} GiB"],
        ["OS", env.os_name],
        ["kernel", env.kernel],
        ["Python", f"{env.python} (harness and regbench)"],
        ["data directories", f"{env.data_fs} (a fresh temporary directory per registry)"],
        ["load average (1/5/15 min)", f"start {_load(env.load_start)}, end {_load(env.load_end)}"],
    ]
    machine += [[k, v] for k, v in env.versions.items()]
    add(md_table(["", ""], machine, set()))
    add("")

    add("## Commands\n")
    add("```sh")
    for comment, command in info.commands:
        add(f"# {comment}")
        add(command)
    add("```")
    add("")
    add(
        "Servers as started (process tree at start; regbench got the root PID and sums the tree):\n"
    )
    for s in info.servers:
        add(f"* **{s.name}** ({s.kind}) {s.url}, PID {s.pid}: {s.tree}")
    add("")

    add("## Raw data\n")
    add(
        f"* [{info.json_link}]({info.json_link}): regbench's JSON (every sample, medians, per-round "
        "ratios, CPU, RSS, options). Re-render with "
        f"`python3 ../shared/bench/regbench.py report {info.json_path} --markdown`."
    )
    add(f"* [{info.log_link}]({info.log_link}): regbench's progress log (every round's numbers).")
    add(f"* [{info.svg_link}]({info.svg_link}): the chart above.")
    add("")
    if info.regbench_markdown:
        add("<details><summary>regbench's own report of this run</summary>\n")
        add(info.regbench_markdown.strip())
        add("\n</details>")
        add("")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------
# SVG chart
# --------------------------------------------------------------------------------------

_GOOD, _BAD, _SAME = "#2e7d32", "#c62828", "#757575"


def _tick_label(exp: int) -> str:
    return f"{2**exp:g}{X}" if exp >= 0 else f"1/{2**-exp:g}{X}"


def render_svg(rows: Sequence[Row], title: str, subtitle: str, candidate: str = "cargohold") -> str:
    """Horizontal bars of the advantage per metric on a log2 axis, with the per-round
    range as a whisker and the noise band shaded. Plain SVG 1.1, no scripts."""
    plotted = [r for r in rows if r.advantage is not None]
    width, label_w, value_w, row_h, top = 860, 270, 150, 24, 78
    x0, x1 = label_w, width - value_w
    height = top + row_h * max(1, len(plotted)) + 46
    esc = html.escape

    values: list[float] = []
    for r in plotted:
        values.append(r.advantage or 1.0)
        if r.advantage_range:
            values.extend(r.advantage_range)
    lo_exp = math.floor(math.log2(min([0.5, *values]) / 1.05))
    hi_exp = math.ceil(math.log2(max([2.0, *values]) * 1.05))
    lo_v, hi_v = 2.0**lo_exp, 2.0**hi_exp

    def x(v: float) -> float:
        v = min(max(v, lo_v), hi_v)
        return x0 + (math.log2(v) - lo_exp) / (hi_exp - lo_exp) * (x1 - x0)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>',
        f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555555">{esc(subtitle)}</text>',
    ]
    plot_top, plot_bottom = top, top + row_h * max(1, len(plotted))
    # noise band and grid
    parts.append(
        f'<rect x="{x(NOISE_LOW):.1f}" y="{plot_top}" width="{x(NOISE_HIGH) - x(NOISE_LOW):.1f}" '
        f'height="{plot_bottom - plot_top}" fill="#eeeeee"/>'
    )
    step = 1 if hi_exp - lo_exp <= 10 else 2
    for exp in range(lo_exp, hi_exp + 1, step):
        gx = x(2.0**exp)
        color, sw = ("#333333", 1.5) if exp == 0 else ("#dddddd", 1)
        parts.append(
            f'<line x1="{gx:.1f}" y1="{plot_top}" x2="{gx:.1f}" y2="{plot_bottom}" stroke="{color}" '
            f'stroke-width="{sw}"/>'
        )
        parts.append(
            f'<text x="{gx:.1f}" y="{plot_bottom + 16}" text-anchor="middle">{_tick_label(exp)}</text>'
        )
    parts.append(
        f'<text x="{x(1.0):.1f}" y="{top - 8}" text-anchor="middle" fill="#555555">'
        f"← Distribution better · {esc(candidate)} better →</text>"
    )
    if not plotted:
        parts.append(
            f'<text x="{(x0 + x1) / 2}" y="{top + 16}" text-anchor="middle">no results</text>'
        )
    prev = ""
    for i, r in enumerate(plotted):
        adv = r.advantage or 1.0
        y = top + i * row_h
        cy = y + row_h / 2
        if r.workload != prev and i:
            parts.append(f'<line x1="8" y1="{y}" x2="{width - 8}" y2="{y}" stroke="#cccccc"/>')
        color = _GOOD if adv >= NOISE_HIGH else _BAD if adv <= NOISE_LOW else _SAME
        bx, ex = sorted((x(1.0), x(adv)))
        tip = (
            f"{r.workload} {r.metric} ({r.label}): {candidate} {fmt(r.cand.median)} vs "
            f"Distribution {fmt(r.base.median)} {r.unit}; ratio {fmt_ratio(r.ratio)}, advantage {adv:.3f}"
        )
        label = (r.workload + " · " if r.workload != prev else "") + r.metric
        parts.append(f"<g><title>{esc(tip)}</title>")
        parts.append(
            f'<text x="{label_w - 8}" y="{cy + 4:.1f}" text-anchor="end">{esc(label)}</text>'
        )
        parts.append(
            f'<rect x="{bx:.1f}" y="{y + 5}" width="{max(ex - bx, 1.0):.1f}" height="{row_h - 10}" '
            f'fill="{color}" fill-opacity="0.85"/>'
        )
        if r.advantage_range and len(r.round_ratios) > 1:
            a, b = (x(v) for v in r.advantage_range)
            parts.append(
                f'<path d="M{a:.1f},{cy:.1f}H{b:.1f}M{a:.1f},{cy - 5:.1f}V{cy + 5:.1f}'
                f'M{b:.1f},{cy - 5:.1f}V{cy + 5:.1f}" stroke="#000000" stroke-width="1" fill="none"/>'
            )
        mark = " ⚠" if r.noisy else ""
        parts.append(
            f'<text x="{x1 + 8}" y="{cy + 4:.1f}">{adv:.2f}{X} '
            f'<tspan fill="#777777">(ratio {fmt_ratio(r.ratio)}){mark}</tspan></text>'
        )
        parts.append("</g>")
        prev = r.workload
    legend_y = plot_bottom + 36
    parts.append(
        f'<text x="{x0}" y="{legend_y}" fill="#555555">advantage: log scale, 1{X} = same; whisker = '
        f"per-round range; grey band = noise ({NOISE_LOW:.2f}–{NOISE_HIGH:.2f}); ⚠ = noisy machine</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
