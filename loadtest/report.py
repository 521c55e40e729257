"""What a load run found: counts, an HdrHistogram of latencies, a per-second timeline.

Built once after the run from the raw samples the generator kept, so the
run itself does no percentile work on its hot path.  Every latency is taken
from the request's *intended* send time, so a stalled server or a queue for a
free connection shows up in the figures instead of hiding (no coordinated
omission).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_MAX_US = 3_600_000_000  # one hour, in microseconds: the histogram's ceiling


def new_histogram() -> HdrHistogram:
    """Microsecond histogram, 3 significant digits, 1 us .. 1 h."""
    return HdrHistogram(1, _MAX_US, 3)


def histogram_of(latencies_s: array | list[float]) -> HdrHistogram:
    """HdrHistogram (microseconds) of latencies given in seconds."""
    h = new_histogram()
    record = h.record_value
    for lat in latencies_s:
        us = int(lat * 1e6)
        record(us if us >= 1 else 1)
    return h


@dataclass
class LoadReport:
    """The outcome of one load run.

    Every scheduled request ends in exactly one of: answered (`answered`,
    `late` of them after tmax), `not_sent` (no free connection within tmax),
    `no_answer` (sent, no answer before the answer timeout or the end of the
    drain), `conn_errors` (its connection dropped), so
    scheduled == answered + not_sent + no_answer + conn_errors.
    """

    target: str
    mode: str  # "open" (fixed schedule) or "closed" (saturation: send on answer)
    profile: str
    rate: float  # target requests/s (peak, for ramp and step); 0 in closed mode
    duration: float  # seconds of scheduling
    connections: int
    tmax_ms: int
    elapsed: float = 0.0  # seconds from first send to end of drain
    scheduled: int = 0
    sent: int = 0
    answered: int = 0
    late: int = 0
    not_sent: int = 0
    no_answer: int = 0
    conn_errors: int = 0
    bids: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    nobid_reasons: dict[str, int] = field(default_factory=dict)
    histogram: HdrHistogram = field(default_factory=new_histogram)
    timeline: list[dict[str, float]] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (s since start, ms), thinned; PNG only
    generator_lag_ms: dict[str, float] = field(default_factory=dict)
    generator_cpu: float = 0.0  # share of one core the generator used (open loop: includes spin-waiting between sends)

    @property
    def timeouts(self) -> int:
        """Requests the exchange got no answer to in time: never sent within tmax, or never answered."""
        return self.not_sent + self.no_answer

    @property
    def sent_per_s(self) -> float:
        return self.sent / self.duration if self.duration else 0.0

    @property
    def answered_per_s(self) -> float:
        return self.answered / self.duration if self.duration else 0.0

    @property
    def bid_rate(self) -> float:
        return self.bids / self.answered if self.answered else 0.0

    def latency_ms(self) -> dict[str, float]:
        h = self.histogram
        if not h.get_total_count():
            return {k: 0.0 for k in ("p50", "p90", "p99", "p99.9", "max", "mean")}
        out = {_pname(p): h.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
        out["max"] = h.get_max_value() / 1000
        out["mean"] = h.get_mean_value() / 1000
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "mode": self.mode,
            "profile": self.profile,
            "rate": self.rate,
            "duration_s": self.duration,
            "elapsed_s": round(self.elapsed, 3),
            "connections": self.connections,
            "tmax_ms": self.tmax_ms,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "answered": self.answered,
            "sent_per_s": round(self.sent_per_s, 1),
            "answered_per_s": round(self.answered_per_s, 1),
            "bids": self.bids,
            "bid_rate": round(self.bid_rate, 4),
            "late": self.late,
            "timeouts": self.timeouts,
            "not_sent": self.not_sent,
            "no_answer": self.no_answer,
            "conn_errors": self.conn_errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "nobid_reasons": dict(sorted(self.nobid_reasons.items(), key=lambda kv: -kv[1])),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms().items()},
            "generator_lag_ms": self.generator_lag_ms,
            "generator_cpu": round(self.generator_cpu, 3),
            "histogram": self.histogram.encode().decode() if self.histogram.get_total_count() else "",
            "timeline": self.timeline,
        }


def _pname(p: float) -> str:
    return f"p{p:g}"


def _n(x: float) -> str:
    return f"{x:,.0f}"


def format_report(report: LoadReport) -> str:
    """The report as a plain-text table for a terminal."""
    r = report
    lat = r.latency_ms()
    lines = [
        f"target        {r.target}",
        f"mode          {r.mode}" + (f", profile {r.profile}, {_n(r.rate)} req/s target" if r.mode == "open" else ", saturation"),
        f"duration      {r.duration:g} s, {r.connections} connections, tmax {r.tmax_ms} ms",
        "",
        f"{'':14}{'count':>12}{'per s':>12}",
        f"{'scheduled':14}{_n(r.scheduled):>12}{_n(r.scheduled / r.duration if r.duration else 0):>12}",
        f"{'sent':14}{_n(r.sent):>12}{_n(r.sent_per_s):>12}",
        f"{'answered':14}{_n(r.answered):>12}{_n(r.answered_per_s):>12}",
        f"{'bids':14}{_n(r.bids):>12}{'':>12}  ({r.bid_rate:.1%} of answers)",
        f"{'past tmax':14}{_n(r.late):>12}{'':>12}  (answered after {r.tmax_ms} ms)",
        f"{'timeouts':14}{_n(r.timeouts):>12}{'':>12}  ({_n(r.not_sent)} not sent within tmax, {_n(r.no_answer)} never answered)",
        f"{'conn errors':14}{_n(r.conn_errors):>12}",
        "",
        "latency from intended send time (ms)",
        "  " + "".join(f"{k:>9}" for k in ("p50", "p90", "p99", "p99.9", "max", "mean")),
        "  " + "".join(f"{lat[k]:>9.3f}" for k in ("p50", "p90", "p99", "p99.9", "max", "mean")),
        "",
        "status codes  " + (", ".join(f"{k}: {_n(v)}" for k, v in sorted(r.statuses.items())) or "none"),
    ]
    if r.nobid_reasons:
        lines.append("no-bid reasons")
        for reason, n in sorted(r.nobid_reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason:<28}{_n(n):>10}")
    lines.append("")
    if r.mode == "closed":
        lines.append(f"generator     {r.generator_cpu:.0%} of a core")
    elif r.generator_lag_ms:  # open loop spin-waits between sends, so its CPU share says nothing; its lag does
        g = r.generator_lag_ms
        lines.append(f"generator     behind schedule p99 {g.get('p99', 0):.3f} ms, max {g.get('max', 0):.3f} ms")
    return "\n".join(lines)


def write_latency_png(report: LoadReport, path: str | Path) -> Path:
    """Latency percentiles and rates over the run (binned by intended send time), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tl = report.timeline
    t = [row["t"] for row in tl]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    if report.samples:
        xs, ys = zip(*report.samples, strict=True)
        ax1.scatter(xs, [max(y, 1e-3) for y in ys], s=4, color="0.6", alpha=0.5, linewidths=0, label="requests", rasterized=True)
    width = tl[1]["t"] - tl[0]["t"] if len(tl) > 1 else report.duration
    mid = [x + width / 2 for x in t]
    for key, style in (("p50", "-"), ("p99", "-"), ("p99.9", "--"), ("max", ":")):
        ax1.plot(mid, [max(row[key], 1e-3) for row in tl], style, label=f"{key} per {width:g} s")
    ax1.axhline(report.tmax_ms, color="red", linewidth=0.8, label=f"tmax {report.tmax_ms} ms")
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms, from intended send)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="upper left", fontsize=8, ncol=6, framealpha=0.9)
    ax1.set_title(f"{report.target}  {report.mode}/{report.profile}  {report.connections} conns")
    ax2.plot(mid, [row["offered"] for row in tl], label="offered/s")
    ax2.plot(mid, [row["answered"] for row in tl], label="answered/s")
    ax2.plot(mid, [row["timeouts"] for row in tl], label="timeouts/s")
    if any(row.get("conn_errors") for row in tl):
        ax2.plot(mid, [row["conn_errors"] for row in tl], label="conn errors/s")
    ax2.set_ylabel("requests/s")
    ax2.set_xlabel("seconds since start (requests binned by intended send time)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
