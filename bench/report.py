"""Render a regbench `compare` result as docs/benchmarks.md and an SVG chart of the ratios.

Input is regbench's JSON document (`compare --json`): target A is the candidate
(cargohold), target B the baseline (Distribution), so regbench's A/B ratios are
candidate/baseline. Everything here is pure string building, testable without servers.
"""

from __future__ import annotations

import html
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sysinfo import Environment

# BASELINE.md: Distribution against itself stays within 0.90..1.10 on a quiet machine.
NOISE_LOW, NOISE_HIGH = 0.90, 1.10
# "other CPU" (% of one core used by neither client nor servers) above this marks a noisy workload.
NOISY_OTHER_CPU = 25.0
X = "\u00d7"  # multiplication sign


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
    problems: list[str] = field(default_factory=list)  # servers that died, regbench failures
    title: str = ""  # default "Benchmarks: <candidate> vs CNCF Distribution"
    notes: list[str] = field(default_factory=list)  # paragraphs after the intro (authentication)
    extra_sections: list[str] = field(default_factory=list)  # Markdown, after the notes
    extra_raw: list[str] = field(default_factory=list)  # more bullet points under Raw data


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
    """The whole docs/benchmarks.md."""
    rows = rows_from_doc(doc, info.candidate, info.baseline)
    sections = [
        _intro(doc, info, rows),
        _results(rows, doc, info),
        _resources(doc, info),
        _errors(doc, info),
        _notes(doc),
        *info.extra_sections,
        _machine(info.env),
        _commands(info),
        _raw_data(info),
    ]
    return "\n\n".join(s.strip("\n") for s in sections if s) + "\n"


def _intro(doc: dict[str, Any], info: RunInfo, rows: Sequence[Row]) -> str:
    cand, env = info.candidate, info.env
    opts = doc.get("options", {})
    abba = opts.get("order") == "abba"
    order = "A,B,B,A,... (who goes first alternates)" if abba else "A,B,A,B,..."
    date = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(info.started))
    out = [
        f"# {info.title or f'Benchmarks: {cand} vs CNCF Distribution'}",
        "<!-- Generated by bench/compare.py from the JSON under Raw data; do not edit by hand. -->",
    ]
    if info.quick:
        out.append(
            "> **Quick smoke run** (`--quick`: small blobs, few requests, short loads). It checks "
            "that the harness and both registries work; its numbers say nothing about performance."
        )
    if info.standin:
        out.append(
            f"> **Stand-in run** (`--standin`): `{cand}` is a second docker-registry, not "
            "cargohold. All ratios should be ~1.0; their spread is this machine's noise floor."
        )
    out.append(
        f"Measured on {date} with regbench {doc.get('regbench', '?')} "
        "(`../shared/bench/regbench.py compare`): every workload ran alternately on both "
        f"registries, {opts.get('rounds')} round(s) each, order {order}; the whole run took "
        f"{info.duration_s / 60:.1f} min. Client and both servers shared one machine "
        f"({env.cpu_model}, {env.logical_cpus} CPUs, {env.memory_gib:.0f} GiB) over 127.0.0.1; "
        "each registry started with an empty data directory."
    )
    out += info.notes
    out.append(
        f"**Ratio** = {cand} / Distribution, of the medians. **Advantage** turns it so that > 1 "
        f"always means {cand} is better: the ratio for throughputs and request rates, 1/ratio for "
        "latencies and walk times. Distribution against itself stays within "
        f"{NOISE_LOW:.2f}..{NOISE_HIGH:.2f} on a quiet machine (shared/bench/BASELINE.md): "
        "smaller differences are noise."
    )
    out.append(f"![{cand}/Distribution advantage per metric]({info.svg_link})")
    known = [r.advantage for r in rows if r.advantage is not None]
    better = sum(1 for a in known if a >= NOISE_HIGH)
    worse = sum(1 for a in known if a <= NOISE_LOW)
    summary = (
        f"Of {len(rows)} metrics, {cand} is better on **{better}**, worse on **{worse}** and "
        f"within noise on **{len(known) - better - worse}**"
    )
    missing = len(rows) - len(known)
    out.append(summary + (f"; **{missing}** have no result (see Errors)." if missing else "."))
    return "\n\n".join(out)


def _round_ratios(r: Row) -> str:
    """Median of the per-round ratios and their range: '1.15 (1.08..1.61)'."""
    rr = r.round_ratios
    if not rr:
        return "-"
    paired = r.paired if r.paired is not None else statistics.median(rr)
    return f"{paired:.2f}" if len(rr) == 1 else f"{paired:.2f} ({min(rr):.2f}..{max(rr):.2f})"


def _results(rows: Sequence[Row], doc: dict[str, Any], info: RunInfo) -> str:
    cand = info.candidate
    head = [
        "workload",
        "metric",
        "unit",
        "better",
        f"{cand}: median (min..max)",
        "Distribution: median (min..max)",
        "ratio",
        "per-round ratios: median (min..max)",
        "advantage",
    ]
    table = []
    prev = ""
    for r in rows:
        table.append(
            [
                r.workload if r.workload != prev else "",
                r.metric,
                r.unit,
                "higher" if r.higher_is_better else "lower",
                fmt_stat(r.cand),
                fmt_stat(r.base),
                f"**{fmt_ratio(r.ratio)}**",
                _round_ratios(r),
                verdict(r),
            ]
        )
        prev = r.workload
    legend = (
        f"min..max: over the rounds. Per-round ratios: each round's {cand} value over the "
        "Distribution value of the same round, measured back to back; their median is less "
        "sensitive to drift over the run than the ratio of the medians. What each workload "
        "does and checks: the table in shared/bench/BASELINE.md; each metric's `label` in the "
        "JSON gives its sizes."
    )
    caveats = "".join(f"\n\n{c}" for c in _page_caveats(doc, info))
    return "## Results\n\n" + md_table(head, table, {4, 5, 6, 7}) + "\n\n" + legend + caveats


def _last_info(res: dict[str, Any]) -> dict[str, Any]:
    samples = res.get("samples") or []
    info = samples[-1].get("info") if samples else None
    return info if isinstance(info, dict) else {}


def _page_caveats(doc: dict[str, Any], info: RunInfo) -> list[str]:
    """Warn where the two registries paginated differently (Distribution 2.8 ignores `n`
    on tags/list), which makes a paginated walk compare N requests with one."""
    out = []
    for wname, w in doc["workloads"].items():
        cand = _last_info(w["targets"].get(info.candidate, {}))
        base = _last_info(w["targets"].get(info.baseline, {}))
        if "pages" in cand and "pages" in base and cand["pages"] != base["pages"]:
            out.append(
                f"**Caveat, `{wname}`**: {info.candidate} answered the paginated walk in "
                f"{cand['pages']} page(s), Distribution in {base['pages']}"
                + (f" ({base['note']})" if base.get("note") else "")
                + ", so that metric compares different numbers of requests."
            )
    return out


def _resources(doc: dict[str, Any], info: RunInfo) -> str:
    cand, base = info.candidate, info.baseline
    head = [
        "workload",
        f"{cand} server CPU",
        f"{cand} peak RSS",
        "Distribution server CPU",
        "Distribution peak RSS",
        f"client CPU ({cand} / Dist.)",
        f"other CPU ({cand} / Dist.)",
    ]
    table = []
    for wname, w in doc["workloads"].items():
        tc, tb = w["targets"][cand], w["targets"][base]
        table.append(
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
    legend = (
        "CPU: % of one core during the timed sections, for the server's whole process tree; "
        "client = regbench and wrk; other = everything else on the machine (other tenants, "
        "kernel writeback); - = timed sections too short (< 0.5 s) to account CPU. Above "
        f"{NOISY_OTHER_CPU:.0f}% other CPU a workload's ratios are marked noisy. Peak RSS: "
        "resident memory of the server's process tree, sampled at 10 Hz during the workload."
    )
    peaks = []
    for t in doc["targets"]:
        hwm = _num(t.get("server_vmhwm_mib"))
        peaks.append(
            f"* **{t['name']}**: peak RSS over the whole run "
            f"{fmt_mib(t.get('server_peak_rss_mib'))} (sampled, process tree)"
            + (f"; VmHWM of the main process {hwm:.0f} MiB" if hwm else "")
        )
    return (
        "## CPU and memory\n\n"
        + md_table(head, table, set(range(1, 7)))
        + "\n\n"
        + legend
        + "\n\n"
        + "\n".join(peaks)
    )


def _errors(doc: dict[str, Any], info: RunInfo) -> str:
    errors = errors_from_doc(doc)
    if not errors and not info.problems:
        return ""
    lines = [
        "## Errors",
        "",
        "A failed workload has no numbers: regbench checks every answer (digests, sizes, tag and "
        "repository sets) and records the first failure instead of a measurement.",
        "",
    ]
    lines += [f"* {problem}" for problem in info.problems]
    lines += [f"* `{wname}` on **{tname}**: `{err}`" for wname, tname, err in errors]
    return "\n".join(lines)


def _notes(doc: dict[str, Any]) -> str:
    lines = []
    for wname, w in doc["workloads"].items():
        facts = []
        for tname, res in w["targets"].items():
            info = _last_info(res)
            if info:
                facts.append(f"{tname}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
        if facts:
            lines.append(f"* `{wname}`: " + "; ".join(facts))
    return "## Notes recorded by regbench (last round)\n\n" + "\n".join(lines) if lines else ""


def _machine(env: Environment) -> str:
    flags = f" (flags: {' '.join(env.cpu_flags)})" if env.cpu_flags else ""
    rows = [
        ["CPU", f"{env.cpu_model}, {env.logical_cpus} logical CPUs{flags}"],
        ["memory", f"{env.memory_gib:.1f} GiB"],
        ["OS", env.os_name],
        ["kernel", env.kernel],
        ["Python", f"{env.python} (harness and regbench)"],
        ["data directories", f"{env.data_fs}, a fresh temporary directory per registry"],
        ["load average 1/5/15 min", f"start {_load(env.load_start)}; end {_load(env.load_end)}"],
        *([k, v] for k, v in env.versions.items()),
    ]
    return "## Machine\n\n" + md_table(["", ""], rows, set())


def _commands(info: RunInfo) -> str:
    lines = ["## Commands", "", "From the repository root:", "", "```sh"]
    for comment, command in info.commands:
        lines += [f"# {comment}", command]
    lines += [
        "```",
        "",
        "Servers (process tree; regbench got the root PID and sums over the tree):",
        "",
    ]
    lines += [f"* **{s.name}** ({s.kind}) {s.url}, PID {s.pid}: {s.tree}" for s in info.servers]
    return "\n".join(lines)


def _raw_data(info: RunInfo) -> str:
    return "\n".join(
        [
            "## Raw data",
            "",
            f"* [{info.json_link}]({info.json_link}): regbench's JSON (every sample, medians, "
            "per-round ratios, CPU, RSS, options). Re-render it with "
            f"`python3 ../shared/bench/regbench.py report {info.json_path} --markdown`.",
            f"* [{info.log_link}]({info.log_link}): regbench's progress log (each round).",
            f"* [{info.svg_link}]({info.svg_link}): the chart above.",
            *(f"* {line}" for line in info.extra_raw),
        ]
    )


def render_auth_cost(doc: dict[str, Any], token: str, basic: str) -> str:
    """The section of the second --auth pass: cargohold with the Docker token flow (A)
    against cargohold sent Basic credentials on every request (B)."""
    rows = rows_from_doc(doc, token, basic)
    head = [
        "workload",
        "metric",
        "unit",
        "better",
        "token flow: median (min..max)",
        "Basic: median (min..max)",
        "ratio token / Basic",
        "per-round ratios: median (min..max)",
        "token flow",
    ]
    table = []
    prev = ""
    for r in rows:
        table.append(
            [
                r.workload if r.workload != prev else "",
                r.metric,
                r.unit,
                "higher" if r.higher_is_better else "lower",
                fmt_stat(r.cand),
                fmt_stat(r.base),
                f"**{fmt_ratio(r.ratio)}**",
                _round_ratios(r),
                verdict(r),
            ]
        )
        prev = r.workload
    cpu = []
    for wname, w in doc["workloads"].items():
        ta, tb = w["targets"][token], w["targets"][basic]
        cpu.append(
            f"`{wname}` {fmt_pct(ta.get('server_cpu_pct'))} / {fmt_pct(tb.get('server_cpu_pct'))}"
        )
    known = [r.advantage for r in rows if r.advantage is not None]
    worse = sum(1 for a in known if a <= NOISE_LOW)
    better = sum(1 for a in known if a >= NOISE_HIGH)
    lines = [
        "## What the token flow costs cargohold",
        "",
        "A second pass in the same run, with two fresh cargohold servers: **"
        f"{token}** as above (regbench does the Docker token flow: a 401 and a token request "
        f"for each new set of scopes, then a JWT on every request) against **{basic}**, whose "
        "client sends the Basic credentials on every request (`bench/regbench_basic.py` "
        "starts regbench's client in its Basic mode; cargohold accepts Basic on /v2 directly "
        "and keeps verified credentials for `credential_cache_seconds`, 60 s, so that costs "
        "one argon2 check a minute, then a hash lookup per request). Basic is the cheapest "
        "authentication cargohold has, the nearest to none: there is no unauthenticated "
        "cargohold any more to measure. A ratio below 1 for a rate (above 1 for a time) is "
        "what the token flow costs.",
        "",
        f"Of {len(rows)} metrics, the token flow is slower on **{worse}**, faster on "
        f"**{better}** and within noise on **{len(known) - better - worse}**.",
        "",
        md_table(head, table, {4, 5, 6, 7}),
        "",
        "Server CPU (% of one core, token / Basic): " + "; ".join(cpu) + ".",
    ]
    errors = errors_from_doc(doc)
    if errors:
        lines += ["", "Failed in this pass (no numbers):", ""]
        lines += [f"* `{wname}` on **{tname}**: `{err}`" for wname, tname, err in errors]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# SVG chart
# --------------------------------------------------------------------------------------

_GOOD, _BAD, _SAME = "#2e7d32", "#c62828", "#757575"
_WIDTH, _LABEL_W, _VALUE_W, _ROW_H, _TOP = 900, 270, 180, 24, 78


def _tick_label(exp: int) -> str:
    return f"{2**exp:g}{X}" if exp >= 0 else f"1/{2**-exp:g}{X}"


class _Axis:
    """log2 scale from the plotted values, whole powers of two at both ends."""

    def __init__(self, values: Sequence[float], x0: float, x1: float) -> None:
        self.lo = math.floor(math.log2(min([0.5, *values]) / 1.05))
        self.hi = math.ceil(math.log2(max([2.0, *values]) * 1.05))
        self.x0, self.x1 = x0, x1

    def __call__(self, value: float) -> float:
        v = min(max(math.log2(value), self.lo), self.hi)
        return self.x0 + (v - self.lo) / (self.hi - self.lo) * (self.x1 - self.x0)


def _svg_row(r: Row, y: float, axis: _Axis, first_of_workload: bool, candidate: str) -> list[str]:
    esc = html.escape
    adv = r.advantage or 1.0
    cy = y + _ROW_H / 2
    color = _GOOD if adv >= NOISE_HIGH else _BAD if adv <= NOISE_LOW else _SAME
    bx, ex = sorted((axis(1.0), axis(adv)))
    tip = (
        f"{r.workload} {r.metric} ({r.label}): {candidate} {fmt(r.cand.median)} vs "
        f"Distribution {fmt(r.base.median)} {r.unit}; ratio {fmt_ratio(r.ratio)}, "
        f"advantage {adv:.3f}"
    )
    label = (r.workload + " · " if first_of_workload else "") + r.metric
    out = [
        f"<g><title>{esc(tip)}</title>",
        f'<text x="{_LABEL_W - 8}" y="{cy + 4:.1f}" text-anchor="end">{esc(label)}</text>',
        f'<rect x="{bx:.1f}" y="{y + 5:.1f}" width="{max(ex - bx, 1.0):.1f}" '
        f'height="{_ROW_H - 10}" fill="{color}" fill-opacity="0.85"/>',
    ]
    if r.advantage_range and len(r.round_ratios) > 1:
        a, b = (axis(v) for v in r.advantage_range)
        out.append(
            f'<path d="M{a:.1f},{cy:.1f}H{b:.1f}M{a:.1f},{cy - 5:.1f}V{cy + 5:.1f}'
            f'M{b:.1f},{cy - 5:.1f}V{cy + 5:.1f}" stroke="#000000" fill="none"/>'
        )
    mark = " \u26a0" if r.noisy else ""
    out.append(
        f'<text x="{axis.x1 + 8}" y="{cy + 4:.1f}">{adv:.2f}{X} '
        f'<tspan fill="#777777">(ratio {fmt_ratio(r.ratio)}){mark}</tspan></text>'
    )
    out.append("</g>")
    return out


def render_svg(rows: Sequence[Row], title: str, subtitle: str, candidate: str = "cargohold") -> str:
    """Horizontal bars of the advantage per metric on a log2 axis, the per-round range
    as a whisker, the noise band shaded. Plain SVG 1.1: no scripts, no external files."""
    esc = html.escape
    plotted = [r for r in rows if r.advantage is not None]
    values = [v for r in plotted for v in (r.advantage or 1.0, *(r.advantage_range or ()))]
    axis = _Axis(values, _LABEL_W, _WIDTH - _VALUE_W)
    top, bottom = _TOP, _TOP + _ROW_H * max(1, len(plotted))
    height = bottom + 62
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_WIDTH / 2}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{esc(title)}</text>',
        f'<text x="{_WIDTH / 2}" y="40" text-anchor="middle" fill="#555555">{esc(subtitle)}</text>',
        f'<rect x="{axis(NOISE_LOW):.1f}" y="{top}" '
        f'width="{axis(NOISE_HIGH) - axis(NOISE_LOW):.1f}" height="{bottom - top}" '
        'fill="#eeeeee"/>',
    ]
    step = 1 if axis.hi - axis.lo <= 10 else 2
    for exp in range(axis.lo, axis.hi + 1, step):
        gx = axis(2.0**exp)
        stroke = 'stroke="#333333" stroke-width="1.5"' if exp == 0 else 'stroke="#dddddd"'
        out.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{bottom}" {stroke}/>')
        out.append(
            f'<text x="{gx:.1f}" y="{bottom + 16}" text-anchor="middle">{_tick_label(exp)}</text>'
        )
    out.append(
        f'<text x="{axis(1.0):.1f}" y="{top - 8}" text-anchor="middle" fill="#555555">'
        f"\u2190 Distribution better \u00b7 {esc(candidate)} better \u2192</text>"
    )
    if not plotted:
        mid = (axis.x0 + axis.x1) / 2
        out.append(f'<text x="{mid:.1f}" y="{top + 16}" text-anchor="middle">no results</text>')
    for i, r in enumerate(plotted):
        y = top + i * _ROW_H
        first = i == 0 or r.workload != plotted[i - 1].workload
        if first and i:
            out.append(f'<line x1="8" y1="{y}" x2="{_WIDTH - 8}" y2="{y}" stroke="#cccccc"/>')
        out += _svg_row(r, y, axis, first, candidate)
    legend = [
        f"Advantage on a log scale: bar right of 1{X} = {candidate} better "
        f"(ratio for rates, 1/ratio for times).",
        f"Whisker: range of the per-round ratios. Grey band: noise ({NOISE_LOW:.2f} to "
        f"{NOISE_HIGH:.2f}). \u26a0: more than {NOISY_OTHER_CPU:.0f}% CPU used by other processes.",
    ]
    for j, text in enumerate(legend):
        out.append(f'<text x="8" y="{bottom + 38 + 16 * j}" fill="#555555">{esc(text)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
