"""Writes the Grafana dashboards (deploy/grafana/dashboards/*.json) from the panel lists below.

Dashboards as code: a panel is one line here (title, PromQL, unit), the JSON
Grafana wants is generated, and a test checks the committed JSON is what this
script writes and that every expression returns data from a real Prometheus.

    python deploy/grafana/build_dashboards.py        # rewrite the JSON files
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yml
RI = "$__rate_interval"
BID, NOBID, ERROR, CLICKED = 'outcome="bid"', 'outcome="nobid"', 'outcome="error"', 'label="1"'
# Campaigns bid in any currency of bidder/campaigns.py CURRENCIES and no metric names it: money is a plain number
# in each campaign's own currency, never a currency unit that would put one symbol on all of them.
MONEY = "none"
IN_CURRENCY = "In the campaign's currency."


@dataclass(frozen=True)
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    description: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    title: str
    panels: list[Panel]


def ex(sel: str = "") -> str:
    """Label matchers for the exchange variable, plus `sel`."""
    return "{" + ",".join(filter(None, ['exchange=~"$exchange"', sel])) + "}"


def cp(sel: str = "") -> str:
    """Label matchers for the campaign variable, plus `sel`."""
    return "{" + ",".join(filter(None, ['campaign=~"$campaign"', sel])) + "}"


OPS = [
    Row("Traffic", [
        Panel("Bid requests / s", [(f"sum(rate(streambid_bid_requests_total{ex()}[{RI}]))", "requests")], "reqps", "stat", 6),
        Panel("Share of requests bid", [(f"sum(rate(streambid_bid_requests_total{ex(BID)}[{RI}])) "
                                         f"/ sum(rate(streambid_bid_requests_total{ex()}[{RI}]))", "bid")],
              "percentunit", "stat", 6),
        Panel("Serving processes alive", [("sum(streambid_bidder_workers_alive)", "alive"),
                                          ("sum(streambid_bidder_workers_configured)", "configured")], "none", "stat", 6),
        Panel("Targets up", [('sum by (job) (up{job=~"streambid-.*"})', "{{job}}")], "none", "stat", 6),
        Panel("Requests by exchange and outcome",
              [(f"sum by (exchange, outcome) (rate(streambid_bid_requests_total{ex()}[{RI}]))", "{{exchange}} {{outcome}}")],
              "reqps"),
        Panel("No-bid reasons", [(f"sum by (reason) (rate(streambid_bid_requests_total{ex(NOBID)}[{RI}]))",
                                  "{{reason}}")], "reqps",
              description="Why requests got a 204: the furthest stage any candidate reached (overload = shed)."),
        Panel("Rejected requests (400/413) by reason",
              [(f"sum by (reason) (rate(streambid_bid_requests_total{ex(ERROR)}[{RI}]))",
                "{{reason}}")], "reqps"),
        Panel("Notices by kind and outcome", [(f"sum by (kind, outcome) (rate(streambid_notices_total[{RI}]))",
                                               "{{kind}} {{outcome}}")], "reqps",
              description="Forged, altered, expired or replayed notices are refused and never charged."),
        Panel("Privacy-restricted requests by reason",
              [(f"sum by (reason) (rate(streambid_privacy_restricted_requests_total[{RI}]))", "{{reason}}")], "reqps"),
        Panel("Frequency-capped candidates by campaign",
              [(f"sum by (campaign) (rate(streambid_frequency_capped_total[{RI}]))", "{{campaign}}")], "ops"),
    ]),
    Row("Latency and deadlines", [
        Panel("Bid latency quantiles", [
            (f"histogram_quantile(0.5, sum by (le) (rate(streambid_bid_latency_seconds_bucket[{RI}])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(streambid_bid_latency_seconds_bucket[{RI}])))", "p99"),
            (f"histogram_quantile(0.999, sum by (le) (rate(streambid_bid_latency_seconds_bucket[{RI}])))", "p99.9"),
        ], "s", description="Arrival to answer, inside the bidder. Buckets resolve 0.25 ms to 50 ms."),
        Panel("Latency SLO: share of answers over 10 ms", [
            ("streambid:bid_latency_slow:ratio_rate5m", "5m"), ("streambid:bid_latency_slow:ratio_rate1h", "1h"),
        ], "percentunit", description="SLO: 99% within 10 ms. Fast-burn alert at 14.4% over 1h and 5m."),
        Panel("Answers past deadline and load shed", [
            (f"sum(rate(streambid_answers_past_deadline_total[{RI}]))", "past deadline"),
            (f"sum(rate(streambid_load_shed_total[{RI}]))", "shed"),
        ], "reqps"),
    ]),
    Row("Kafka and streams", [
        Panel("Events consumed by topic", [(f"sum by (topic) (rate(streambid_events_consumed_total[{RI}]))", "{{topic}}")],
              "ops"),
        Panel("Consumer lag by topic", [("sum by (topic) (streambid_consumer_lag)", "{{topic}}")], "short",
              description="High watermark minus the worker's committed offset, summed over partitions."),
        Panel("Dead-lettered by topic and reason",
              [(f"sum by (topic, reason) (rate(streambid_deadlettered_total[{RI}]))", "{{topic}} {{reason}}")], "ops"),
        Panel("Click windows: event time behind the clock", [("max(streambid_click_windows_behind_seconds)", "behind")],
              "s", description="Windows close when event time passes them; the slowest partition holds it. Grows "
              "while a backlog is read; growing with no consumer lag fires StreambidClickWindowsStalled."),
        Panel("Attribution outcomes", [(f"sum by (kind, outcome) (rate(streambid_attribution_total[{RI}]))",
                                        "{{kind}} {{outcome}}")], "ops",
              description="matched; early (before its bid); late (after the window); duplicate; orphan (its bid never came)."),
    ]),
    Row("Model health", [
        Panel("Model age", [("min(streambid_model_update_age_seconds)", "worker: since last publish"),
                            ("max(streambid_bidder_model_age_seconds)", "bidder: since last swap")], "s"),
        Panel("Model version", [("max(streambid_model_version_published)", "published"),
                                ("min(streambid_model_version)", "oldest in a bidder")], "none"),
        Panel("Learner progressive logloss", [
            ("max(streambid_learner_logloss)", "logloss (last 10k examples)"),
            ("max(-(streambid_learner_window_ctr * ln(streambid_learner_window_ctr) + (1 - streambid_learner_window_ctr) "
             "* ln(1 - streambid_learner_window_ctr)))", "baseline: constant CTR"),
        ], "none", description="Each example scored before it is learned; below the baseline means the model adds information."),
        Panel("Examples learned by label",
              [(f"sum by (label) (rate(streambid_learner_examples_total[{RI}]))", "label {{label}}")], "ops"),
        Panel("Learner checkpoint age", [("min(streambid_learner_checkpoint_age_seconds)", "since the last checkpoint")],
              "s", description="What a restarted worker would relearn from the examples topic. Written every "
              "--checkpoint-every seconds while it learns; StreambidLearnerCheckpointStale fires after 30 minutes."),
        Panel("Learner checkpoint size", [("max(streambid_learner_checkpoint_bytes)", "bytes")], "bytes",
              description="Grows with the features the learner has seen; written in parts of at most 512 KiB."),
    ]),
]

MARKETER = [
    Row("Budget and pacing today", [
        Panel("Spend today vs plan, in the campaign's currency", [
            (f"max by (campaign) (streambid_campaign_spend_today{cp()})", "{{campaign}} spend"),
            (f"max by (campaign) (streambid_campaign_plan_spend_today{cp()})", "{{campaign}} plan"),
        ], MONEY, width=12, description=f"{IN_CURRENCY} Plan: the daily budget spread over the campaign's hours, as "
                                        "the pacer aims."),
        Panel("Budget left today, in the campaign's currency",
              [(f"max by (campaign) (streambid_campaign_budget_remaining{cp()})", "{{campaign}}")], MONEY, "stat", 6,
              description=IN_CURRENCY),
        Panel("Today's budget spent", [(f"campaign:streambid_budget_spent:fraction{cp()}", "{{campaign}}")], "percentunit",
              "stat", 6),
        Panel("Off plan (share of today's budget)", [(f"campaign:streambid_pacing_error:budget_fraction{cp()}", "{{campaign}}")],
              "percentunit", description="Spend minus plan; the alert fires beyond ±20% for 30 minutes."),
        Panel("Pacing multiplier lambda", [(f"max by (campaign) (streambid_campaign_pacing_lambda{cp()})", "{{campaign}}")],
              "none", description="Bids are value / (1 + lambda): 0 when the budget does not bind."),
    ]),
    Row("Return", [
        # > -Inf drops NaN: no ROI while nothing was spent (a click after midnight on yesterday's impression)
        Panel("ROI today", [(f"max by (campaign) (streambid_campaign_roi_today{cp()} > -Inf)", "{{campaign}}")],
              "percentunit", "stat", 8, description="(value - spend) / spend, from integer micros; none while nothing "
                                                    "was spent today."),
        Panel("ROI, all days", [(f"max by (campaign) (streambid_campaign_roi{cp()} > -Inf)", "{{campaign}}")],
              "percentunit", "stat", 8),
        Panel("Value and spend today, in the campaign's currency", [
            (f"max by (campaign) (streambid_campaign_value_today{cp()})", "{{campaign}} value"),
            (f"max by (campaign) (streambid_campaign_spend_today{cp()})", "{{campaign}} spend"),
        ], MONEY, "stat", 8, description=IN_CURRENCY),
        Panel("ROI over 5m and 1h", [(f"campaign:streambid_roi:ratio5m{cp()}", "{{campaign}} 5m"),
                                     (f"campaign:streambid_roi:ratio1h{cp()}", "{{campaign}} 1h")], "percentunit"),
        Panel("eCPC (1h and 5m), in the campaign's currency", [(f"campaign:streambid_ecpc:ratio1h{cp()}", "{{campaign}}"),
                                                        (f"campaign:streambid_ecpc:ratio5m{cp()}", "{{campaign}} 5m")],
              MONEY, description=f"{IN_CURRENCY} Spend per click."),
        Panel("eCPM and eCPA (1h and 5m), in the campaign's currency",
              [(f"campaign:streambid_ecpm:ratio1h{cp()}", "{{campaign}} eCPM"),
               (f"campaign:streambid_ecpm:ratio5m{cp()}", "{{campaign}} eCPM 5m"),
               (f"campaign:streambid_ecpa:ratio1h{cp()}", "{{campaign}} eCPA"),
               (f"campaign:streambid_ecpa:ratio5m{cp()}", "{{campaign}} eCPA 5m")], MONEY,
              description=f"{IN_CURRENCY} Spend per thousand impressions, and per conversion."),
    ]),
    Row("Delivery", [
        Panel("Bids, wins, impressions, clicks, conversions / s", [
            (f"sum by (campaign) (rate(streambid_bids_total{cp()}[{RI}]))", "{{campaign}} bids"),
            (f"sum by (campaign) (rate(streambid_wins_total{cp()}[{RI}]))", "{{campaign}} wins"),
            (f"sum by (campaign) (rate(streambid_campaign_impressions_total{cp()}[{RI}]))", "{{campaign}} impressions"),
            (f"sum by (campaign) (rate(streambid_campaign_clicks_total{cp()}[{RI}]))", "{{campaign}} clicks"),
            (f"sum by (campaign) (rate(streambid_campaign_conversions_total{cp()}[{RI}]))", "{{campaign}} conversions"),
        ], "ops"),
        Panel("Win rate by exchange (5m)", [(f"campaign_exchange:streambid_win_rate:ratio5m{cp()}", "{{campaign}} {{exchange}}"),
                                            (f"campaign:streambid_win_rate:ratio1h{cp()}", "{{campaign}} all, 1h")],
              "percentunit"),
        Panel("Spend by exchange / s, in the campaign's currency",
              [(f"sum by (campaign, exchange) (rate(streambid_billed_spend_total{cp()}[{RI}]))",
                "{{campaign}} {{exchange}}")], MONEY, description=IN_CURRENCY),
        Panel("Observed vs predicted CTR (1h)", [
            (f"campaign:streambid_ctr:ratio1h{cp()}", "{{campaign}} observed (clicks / impressions)"),
            (f"sum by (campaign) (increase(streambid_learner_examples_total{cp(CLICKED)}[1h])) "
             f"/ sum by (campaign) (increase(streambid_learner_examples_total{cp()}[1h]))", "{{campaign}} observed (examples)"),
            (f"sum by (campaign) (increase(streambid_learner_predicted_clicks_total{cp()}[1h])) "
             f"/ sum by (campaign) (increase(streambid_learner_examples_total{cp()}[1h]))", "{{campaign}} predicted (model)"),
            (f"sum by (campaign) (increase(streambid_bids_pctr_total{cp()}[1h])) "
             f"/ sum by (campaign) (increase(streambid_bids_total{cp()}[1h]))", "{{campaign}} mean pCTR of bids"),
        ], "percentunit", description="Calibration: predicted = mean pCTR the model gave each labelled impression before "
                                      "learning it; it should track observed."),
        Panel("Frequency-capped candidates", [(f"sum by (campaign) (rate(streambid_frequency_capped_total{cp()}[{RI}]))",
                                               "{{campaign}}")], "ops"),
    ]),
]


def variable(name: str, label: str, metric: str) -> dict:
    q = f"label_values({metric}, {name})"
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "definition": q,
            "query": {"query": q, "refId": f"{name}-values", "qryType": 1}, "refresh": 2, "includeAll": True,
            "multi": True, "allValue": ".*", "sort": 1, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict:
    targets = [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE, "range": True}
               for i, (expr, legend) in enumerate(p.targets)]
    out = {"id": pid, "type": p.kind, "title": p.title, "description": p.description, "datasource": DATASOURCE,
           "gridPos": {"h": 8 if p.kind == "timeseries" else 5, "w": p.width, "x": x, "y": y},
           "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []}, "targets": targets}
    if p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value",
                          "graphMode": "area", "textMode": "auto", "justifyMode": "auto", "orientation": "auto"}
    else:
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    out.update(p.extra)
    return out


def dashboard(uid: str, title: str, rows: list[Row], variables: list[dict], description: str) -> dict:
    panels, pid, y = [], 1, 0
    for row in rows:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, row_h = 0, y + row_h, 0
            pj = panel_json(p, pid, x, y)
            panels.append(pj)
            pid, x, row_h = pid + 1, x + p.width, max(row_h, pj["gridPos"]["h"])
        y += row_h
    return {"uid": uid, "title": title, "description": description, "tags": ["streambid"], "timezone": "browser",
            "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s", "graphTooltip": 1,
            "time": {"from": "now-6h", "to": "now"}, "annotations": {"list": []},
            "templating": {"list": variables}, "panels": panels}


def dashboards() -> dict[str, dict]:
    """File name -> dashboard JSON model."""
    return {
        "streambid-ops.json": dashboard("streambid-ops", "streambid / operations", OPS,
                                        [variable("exchange", "Exchange", "streambid_bid_requests_total")],
                                        "Traffic, latency, errors, Kafka lag and model health of the bidders and workers."),
        "streambid-campaigns.json": dashboard("streambid-campaigns", "streambid / campaigns", MARKETER,
                                              [variable("campaign", "Campaign", "streambid_campaign_budget_daily")],
                                              "Per campaign: spend against plan, budget left, ROI, eCPC, eCPM, eCPA, "
                                              "win rate and CTR calibration."),
    }


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, doc in dashboards().items():
        (OUT / name).write_text(render(doc))
        print(f"wrote {OUT / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
