"""The monitoring, checked by a real Prometheus.

promtool validates the config and rules and runs the alert unit tests in
deploy/prometheus/tests.  Then a real Prometheus (1 s scrapes and rule
evaluations) scrapes `streambid serve --workers 2` and `streambid worker` on a
real Kafka broker while a few hundred requests, notices, impressions, clicks
and conversions go through, and every expression of every dashboard panel and
every recording rule must return data, and the ROI it reports must be the ROI
of the events sent.

Needs `prometheus` and `promtool` on PATH (`bash deploy/prometheus/ensure-prometheus.sh`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import orjson
import pytest
import yaml

from streams import topics
from streams.events import make_event
from streams.kafka_io import ensure_topics
from tests.conftest import ROOT, free_port
from tests.helpers import body, campaign, produce, request, stop_processes

PROM = ROOT / "deploy" / "prometheus"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
STREAMBID = [sys.executable, "-m", "bidder.cli"]
# what Grafana puts in place of its variables and interval macros
SUBSTITUTE = {"$__rate_interval": "5m", "$__interval": "1s", "$__range": "1h", "$campaign": ".*", "$exchange": ".*"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH: run `bash deploy/prometheus/ensure-prometheus.sh` (make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# -- promtool ---------------------------------------------------------------------------------------------


@pytest.mark.prometheus
def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = tool("promtool")
    out = run([promtool, "check", "config", str(PROM / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    rules = sorted(str(p) for p in (PROM / "rules").glob("*.yml"))
    out = run([promtool, "check", "rules", *rules])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 rule files found" in run([promtool, "check", "config", str(PROM / "prometheus.yml")]).stdout


@pytest.mark.prometheus
def test_promtool_rule_unit_tests_pass() -> None:
    promtool = tool("promtool")
    files = sorted(str(p) for p in (PROM / "tests").glob("*.yml"))
    out = run([promtool, "test", "rules", *files], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(files)


def rule_docs() -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted((PROM / "rules").glob("*.yml"))]


def test_every_ratio_rule_reads_raw_counters_in_one_query() -> None:
    """A ratio of two recorded series is two queries, which a scrape can fall between: numerator and denominator
    then come from different samples (seen once as an eCPC 12.5% high).  One expression sees one scrape."""
    rules = [r for doc in rule_docs() for g in doc["groups"] for r in g["rules"] if "record" in r]
    recorded = {r["record"] for r in rules}
    ratios = [r for r in rules if ":ratio" in r["record"]]
    assert len(ratios) >= 14
    for r in ratios:
        assert not [name for name in recorded if name in r["expr"]], r["record"]


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    alerts = {r["alert"] for doc in rule_docs() for g in doc["groups"] for r in g["rules"] if "alert" in r}
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (fired if t["exp_alerts"] else quiet).add(t["alertname"])
    assert len(alerts) >= 9
    assert alerts - fired == set(), "alerts without a test that shows them firing"
    assert alerts - quiet == set(), "alerts without a test that shows them quiet on a healthy series"


# -- a real Prometheus on a running stack -----------------------------------------------------------------


def http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    status, _, out = http_full(method, url, data)
    return status, out


def http_full(method: str, url: str, data: bytes | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_for(check, timeout: float, what: str):
    end, last = time.time() + timeout, None
    while time.time() < end:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Sent:
    """What the test sent for the main campaign, in integer micros: the ground truth."""

    requests: int = 0
    spend: int = 0
    value: int = 0
    clicks: int = 0
    conversions: int = 0
    billed: int = 0
    bidders: set = field(default_factory=set)


@dataclass
class Live:
    prom: str
    bidder: str
    worker: str
    campaign: str
    sent: Sent


def query(prom: str, expr: str) -> list[dict]:
    status, raw = http("GET", f"{prom}/api/v1/query?" + urlencode({"query": expr}))
    doc = json.loads(raw)
    assert status == 200 and doc["status"] == "success", f"{expr}: {doc.get('error', raw[:300])}"
    return doc["data"]["result"]


def scalar(prom: str, expr: str) -> float | None:
    res = query(prom, expr)
    return float(res[0]["value"][1]) if res else None


def prometheus_config(tmp: Path, bidder_port: int, worker_port: int) -> Path:
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(PROM / "rules" / "*.yml")],
        "scrape_configs": [
            {"job_name": "streambid-bidder", "static_configs": [{"targets": [f"127.0.0.1:{bidder_port}"]}]},
            {"job_name": "streambid-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def play(base: str, bootstrap: str, prefix: str, camp: str, domain: str, capped_domain: str, prom: str) -> Sent:
    """Two waves of traffic and feedback, each counter series first created and then increased."""
    rng = random.Random(7)
    sent = Sent()
    site = {"id": "s1", "domain": domain, "cat": ["IAB12"], "publisher": {"id": "p1"}}
    bids: list[dict] = []
    won: list[dict] = []

    def post(exchange: str, data: bytes) -> tuple[int, bytes]:
        """One bid request; sent again when a busy worker sheds it (on this shared machine its loop can lag)."""
        for _ in range(50):
            sent.requests += 1
            status, headers, out = http_full("POST", f"{base}/bid/{exchange}", data)
            reason = headers.get("x-nobid-reason", "")
            if status != 204 or reason != "overload":
                return status, out or reason.encode()
            time.sleep(0.05)
        raise AssertionError("the bidder shed every attempt")

    def bid_request(i: int, exchange: str, **changes) -> tuple[int, bytes]:
        return post(exchange, body(request(id=f"r{i}", site=site, user={"id": f"u{i}"}, **changes)))

    def requests_wave(start: int, n: int) -> None:
        for i in range(start, start + n):
            status, out = bid_request(i, "ex-a" if i % 3 else "ex-b")
            assert status in (200, 204), out  # 204: e.g. an exploration draw priced it under the floor
            if status == 200:
                bids.append(orjson.loads(out)["seatbid"][0]["bid"][0])
        for bad in (b"{", b"[]", b'{"id":"x","imp":[{"id":"1","banner":{"w":"big"}}]}'):
            assert post("ex-a", bad)[0] == 400
        for i in range(start, start + 5):
            assert bid_request(i, "ex-a", regs={"coppa": 1})[0] in (200, 204)  # restricted: bids on context only
            capped = request(id=f"c{i}", site={**site, "domain": capped_domain}, user={})
            assert post("ex-a", body(capped)) == (204, b"frequency_cap")  # its cap cannot be kept without a user

    def notices(batch: list[dict]) -> None:
        for b in batch:
            if rng.random() < 0.8:
                clearing = f"{math.floor(b['price'] * 500) / 1000:.3f}"  # half our bid, CPM
                assert http("GET", b["nurl"].replace("${AUCTION_PRICE}", clearing))[0] == 200
                won.append(b)
            else:
                lurl = b["lurl"].replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "3.1")
                assert http("GET", lurl)[0] == 200

    def feedback(batch: list[dict], wave: int) -> None:
        now = int(time.time() * 1000)
        records = []
        for b in batch:
            most = int(b["price"] * 1000)  # our bid per impression, in micros: a clearing price never exceeds it
            cost = rng.randrange(most // 10, most)
            assert http("GET", b["burl"].replace("${AUCTION_PRICE}", f"{cost / 1000:.3f}"))[0] == 200
            sent.spend, sent.billed = sent.spend + cost, sent.billed + 1
            common = {"bid_id": b["id"], "campaign": camp, "creative": b["crid"]}
            records.append((f"{prefix}.impressions", camp, orjson.dumps(make_event("impressions", f"imp:{b['id']}", now,
                                                                                   **common))))
            if rng.random() < 0.35:
                sent.clicks += 1
                sent.value += 2_000_000  # the campaign's value per click
                records.append((f"{prefix}.clicks", camp, orjson.dumps(make_event("clicks", f"click:{b['id']}", now + 5,
                                                                                  **common))))
                if rng.random() < 0.3:
                    v = rng.randrange(1_000_000, 9_000_000)
                    sent.conversions, sent.value = sent.conversions + 1, sent.value + v
                    records.append((f"{prefix}.conversions", camp, orjson.dumps(make_event(
                        "conversions", f"conv:{b['id']}", now + 9, value=v, **common))))
        records.append((f"{prefix}.clicks", camp, b"{not an event, wave %d" % wave))  # to the dead-letter topic
        asyncio.run(produce(bootstrap, records))

    # phase 1: bids, wins and losses; the worker's ledger gets the campaign (at zero spend) before any money moves
    requests_wave(0, 90)
    notices(bids[:90])
    time.sleep(2.5)
    first = len(bids)
    requests_wave(90, 90)
    notices(bids[first:])
    assert len(won) >= 40, f"only {len(bids)} bids and {len(won)} wins out of 180 requests"
    wait_for(lambda: scalar(prom, f'count_over_time(streambid_campaign_spend_total{{campaign="{camp}"}}[1m]) >= 3'), 60,
             "Prometheus to see the campaign in the worker's ledger at zero spend")
    # phase 2: billing, impressions, clicks, conversions, in two waves
    half = len(won) // 2
    feedback(won[:half], 1)
    time.sleep(2.5)
    feedback(won[half:], 2)
    sent.bidders = {b["id"].rsplit("-", 1)[0] for b in bids}
    return sent


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    prometheus = tool("prometheus")
    tmp = tmp_path_factory.mktemp("ops")
    run_id = uuid.uuid4().hex[:8]
    camp, domain = f"ops-{run_id}", f"ops-{run_id}.example"
    cfile = tmp / "campaigns.json"
    cfile.write_bytes(orjson.dumps([
        campaign(id=camp, targeting={"countries": ["USA"], "domains": [domain]},
                 goal={"type": "cpc", "value_per_click": 2.0, "max_bid_cpm": 30.0}),
        campaign(id=f"{camp}-capped", targeting={"countries": ["USA"], "domains": [f"capped-{domain}"]},
                 frequency_cap={"per_day": 2}),
    ]))
    port, mport, pport = free_port(), free_port(), free_port()
    # topics of its own: on a long-lived broker the worker's new group would otherwise read every earlier run's events
    prefix = f"ops{run_id}"
    env = {**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap, "STREAMBID_SECRET": "ops-test-secret",
           "STREAMBID_TOPIC_PREFIX": prefix}
    asyncio.run(ensure_topics(kafka_bootstrap, tuple(replace(t, name=prefix + t.name[len(topics.PREFIX):])
                                                     for t in topics.ALL)))
    published = subprocess.run(STREAMBID + ["campaign", "set", str(cfile)], cwd=tmp, env=env, capture_output=True, text=True,
                               timeout=60)
    assert published.returncode == 0, published.stderr
    logs = {n: (tmp / f"{n}.log").open("wb") for n in ("serve", "worker", "prometheus")}
    procs = [
        subprocess.Popen(STREAMBID + ["serve", "--workers", "2", "--port", str(port), "--spill-dir", str(tmp / "spill")],
                         cwd=tmp, env=env, stdout=logs["serve"], stderr=subprocess.STDOUT),
        subprocess.Popen(STREAMBID + ["worker", "--app-id", f"ops-{run_id}", "--metrics-port", str(mport),
                                      "--click-window", "2"], cwd=tmp, env=env, stdout=logs["worker"],
                         stderr=subprocess.STDOUT),
        subprocess.Popen([prometheus, f"--config.file={prometheus_config(tmp, port, mport)}",
                          f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}",
                          "--log.level=warn"], cwd=tmp, stdout=logs["prometheus"], stderr=subprocess.STDOUT),
    ]
    base, prom = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{pport}"
    try:
        wait_for(lambda: http("GET", f"{prom}/-/ready")[0] == 200, 30, "Prometheus to be ready")
        wait_for(lambda: all(camp in orjson.loads(http("GET", f"{base}/status")[1])["live"] for _ in range(8)), 60,
                 "both serving processes to load the campaign")
        wait_for(lambda: scalar(prom, 'sum(up{job=~"streambid-.*"})') == 2, 60, "Prometheus to scrape bidder and worker")
        # each serving process bids only from a budget lease, granted once the worker owns the campaign's partition
        wait_for(lambda: all((orjson.loads(http("GET", f"{base}/status")[1]).get("leases") or {}).get(camp, {})
                             .get("granted", 0) > 0 for _ in range(8)), 60, "both serving processes to get a budget lease")
        sent = play(base, kafka_bootstrap, prefix, camp, domain, f"capped-{domain}", prom)

        sel, neg = f'{{campaign="{camp}"}}', f'{{campaign="{camp}",label="0"}}'
        expected = {"spend": sent.spend / 1e6, "value": sent.value / 1e6, "conversions": sent.conversions,
                    "spend_today": sent.spend / 1e6, "negatives": True, "deadletters": True, "checkpoint": True}
        seen: dict = {}

        def settled() -> bool:
            seen.update(spend=scalar(prom, f"sum(streambid_campaign_spend_total{sel})"),
                        value=scalar(prom, f"sum(streambid_campaign_value_total{sel})"),
                        conversions=scalar(prom, f"sum(streambid_campaign_conversions_total{sel})"),
                        spend_today=scalar(prom, f"max(streambid_campaign_spend_today{sel})"),
                        negatives=(scalar(prom, f"sum(streambid_learner_examples_total{neg})") or 0) > 0,
                        deadletters=scalar(prom, "sum(streambid_deadlettered_total)") is not None,
                        # the first checkpoint follows the first examples learned (then one every 60 s)
                        checkpoint=(scalar(prom, "max(streambid_learner_checkpoint_bytes)") or 0) > 0)
            return all(seen[k] == pytest.approx(v, rel=1e-12) for k, v in expected.items())

        try:
            wait_for(settled, 90, "the worker's ledger, the bidder's pacing view and the learner to reach what was sent")
        except AssertionError as e:
            raise AssertionError(f"{e}\nexpected {expected}\nseen     {seen}") from None
        time.sleep(3)  # a few more scrapes and rule evaluations of the settled values
        yield Live(prom, base, f"http://127.0.0.1:{mport}/metrics", camp, sent)
    finally:
        stop_processes(procs, logs, tmp)


def dashboard_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        for p in doc["panels"]:
            for t in p.get("targets", []):
                expr = t["expr"]
                for var, val in SUBSTITUTE.items():
                    expr = expr.replace(var, val)
                assert "$" not in expr, f"{path.name} / {p['title']}: unknown variable in {expr}"
                out.append((f"{path.stem} / {p['title']}", expr))
        for var in doc["templating"]["list"]:
            found = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
            assert found is not None, f"{path.name}: variable {var['name']} is not label_values(metric, label)"
            metric, label = found.groups()
            out.append((f"{path.stem} / variable {var['name']}", f"count by ({label}) ({metric})"))
    return out


def recording_expressions() -> list[tuple[str, str]]:
    return [(f"rule {r['record']}", r["record"]) for doc in rule_docs() for g in doc["groups"] for r in g["rules"]
            if "record" in r]


@pytest.mark.kafka
@pytest.mark.prometheus
def test_every_panel_and_recording_rule_has_data(live: Live) -> None:
    exprs = dashboard_expressions() + recording_expressions()
    assert len(exprs) > 60
    empty, no_number = [], []
    for where, expr in exprs:
        result = query(live.prom, expr)
        if not result:
            empty.append(f"{where}: {expr}")
        elif not any(math.isfinite(float(s["value"][1])) for s in result):
            no_number.append(f"{where}: {expr} -> {result}")
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    assert not no_number, "expressions with only NaN/Inf:\n" + "\n".join(no_number)


@pytest.mark.kafka
@pytest.mark.prometheus
def test_rules_load_and_evaluate_without_errors(live: Live) -> None:
    status, raw = http("GET", f"{live.prom}/api/v1/rules")
    groups = json.loads(raw)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = sum(len(g["rules"]) for doc in rule_docs() for g in doc["groups"])
    assert status == 200 and len(rules) == expected
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad


@pytest.mark.kafka
@pytest.mark.prometheus
def test_reported_roi_is_the_roi_of_the_events_sent(live: Live) -> None:
    s, sel = live.sent, f'{{campaign="{live.campaign}"}}'
    assert s.spend > 0 and s.clicks > 0 and s.conversions > 0
    expected = (s.value - s.spend) / s.spend
    assert scalar(live.prom, f"max(streambid_campaign_roi{sel})") == pytest.approx(expected, rel=1e-12)  # worker ledger
    assert scalar(live.prom, f"max(streambid_campaign_roi_today{sel})") == pytest.approx(expected, rel=1e-12)  # bidder
    assert scalar(live.prom, f"sum(streambid_campaign_clicks_total{sel})") == s.clicks
    assert scalar(live.prom, f"sum(streambid_campaign_impressions_total{sel})") == s.billed
    # all events inside the window, counters created at zero, each ratio one query over one scrape: exact too
    exact = {"roi:ratio5m": expected, "roi:ratio1h": expected, "ecpc:ratio1h": s.spend / 1e6 / s.clicks}
    for name, want in exact.items():
        assert scalar(live.prom, f"campaign:streambid_{name}{sel}") == pytest.approx(want, rel=1e-9), name
    assert scalar(live.prom, f"sum(streambid_billed_spend_total{sel})") == pytest.approx(s.spend / 1e6, rel=1e-12)


@pytest.mark.kafka
@pytest.mark.prometheus
def test_dead_letters_are_labelled_with_the_topic_kind_like_events_consumed(live: Live) -> None:
    """The dead-letter count was labelled with the full topic name ("ops1a2b3c4d.clicks"), events consumed with the
    kind ("clicks"): the two could not be matched per topic."""
    dead = {s["metric"]["topic"] for s in query(live.prom, "streambid_deadlettered_total")}
    consumed = {s["metric"]["topic"] for s in query(live.prom, "streambid_events_consumed_total")}
    assert "clicks" in dead and dead <= consumed, (dead, consumed)


@pytest.mark.kafka
@pytest.mark.prometheus
def test_every_bidder_process_reports_the_sum_of_all(live: Live) -> None:
    assert len(live.sent.bidders) == 2, "both serving processes should have answered bids"
    assert scalar(live.prom, "sum(streambid_bid_requests_total)") == live.sent.requests
    assert scalar(live.prom, "max(streambid_bidder_workers_alive)") == 2
    totals = set()
    for _ in range(12):  # a fresh connection each time: the kernel spreads them over both processes
        text = http("GET", f"{live.bidder}/metrics")[1].decode()
        totals.add(sum(float(v) for v in re.findall(r"^streambid_bid_requests_total\{[^}]*\} (\S+)$", text, re.M)))
    assert totals == {live.sent.requests}
    assert urlsplit(live.bidder).hostname == "127.0.0.1"
