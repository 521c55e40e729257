"""Marketers' config and the state bidders follow, on a real broker with real processes.

An invalid config message from another producer is dead-lettered with its
reason while the last valid version stays in force; a pause reaches a running
bidder within a second; the history is kept; CLI errors name the field.  A
bidder started later gets the current model and pacing at once.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from models.snapshot import ModelSnapshot
from streams.events import make_event
from tests.conftest import ROOT, free_port
from tests.helpers import campaign
from tests.streams_support import STREAMBID, Procs, create_topics, find_record, get_json, produce, topic, wait_for, worker_status

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, prefix)
    procs = Procs(kafka_bootstrap, prefix, tmp_path_factory.mktemp("config"))
    port = free_port()
    try:
        _, wport = procs.worker("worker", f"{prefix}-w", "--click-window", "2")
        procs.start("serve", "serve", "--port", str(port), "--spill-dir", str(procs.tmp / "spill"))
        wait_for(lambda: get_json(f"http://127.0.0.1:{port}/status"), 60, "the bidder to answer")
        wait_for(lambda: (worker_status(wport) or {}).get("ready"), 60, "the worker to own its partitions")
        yield {"procs": procs, "bidder": f"http://127.0.0.1:{port}", "prefix": prefix}
    finally:
        procs.stop_all()


def publish(procs: Procs, *docs: dict) -> None:
    path = procs.tmp / f"set-{uuid.uuid4().hex[:6]}.json"
    path.write_bytes(orjson.dumps(list(docs)))
    out = procs.cli("campaign", "set", str(path))
    assert out.returncode == 0, out.stderr


def shown(procs: Procs, cid: str) -> dict | None:
    """The campaign as `campaign show ID --json` prints it: {"campaigns": [...]}, what `campaign set` reads."""
    out = procs.cli("campaign", "show", cid, "--json")
    if out.returncode != 0:
        return None
    docs = orjson.loads(out.stdout)["campaigns"]
    assert [d["id"] for d in docs] == [cid]
    return docs[0]


def status(url: str) -> dict:
    return get_json(f"{url}/status") or {}


def live(url: str, cid: str) -> bool:
    return cid in status(url).get("live", [])


async def last_value(bootstrap: str, name: str) -> bytes:
    tp = TopicPartition(name, 0)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        assert end > 0
        c.seek(tp, end - 1)
        msgs = (await c.getmany(tp, timeout_ms=5000)).get(tp, [])
        return msgs[-1].value
    finally:
        await c.stop()


def test_invalid_config_from_another_producer_is_dead_lettered_and_the_valid_one_stays(stack: dict) -> None:
    procs, bidder, prefix = stack["procs"], stack["bidder"], stack["prefix"]
    cid = f"{prefix}-valid"
    publish(procs, campaign(id=cid, budget={"daily": 50.0, "total": 0}))
    wait_for(lambda: live(bidder, cid), 10, "the bidder to bid on the campaign")
    before = status(bidder)["state_messages"]
    bad = {"campaign": campaign(id=cid, status="paused", budget={"daily": -5.0, "total": 0}), "action": "set",
           "by": "someone-else", "at": "2026-01-01T00:00:00+00:00"}
    asyncio.run(produce(procs.bootstrap, [(topic(prefix, "campaigns"), cid, orjson.dumps(bad))]))

    dead = asyncio.run(find_record(procs.bootstrap, topic(prefix, "deadletter"), lambda r: cid in r.get("payload", "")))
    assert dead["topic"] == topic(prefix, "campaigns")
    assert dead["reason"].startswith("invalid_config") and "budget.daily" in dead["reason"]
    # the bidder read the invalid message too, and kept bidding on the last valid version (a paused one would not bid)
    wait_for(lambda: status(bidder)["state_messages"] > before, 10, "the bidder to read the invalid message")
    assert live(bidder, cid)
    doc = shown(procs, cid)
    assert doc is not None and doc["status"] == "active" and doc["budget"]["daily"] == "50"
    history = orjson.loads(procs.cli("campaign", "show", cid, "--history", "--json").stdout)
    assert [bool(r.get("rejected")) for r in history] == [False, True]  # the refused change is marked as refused
    assert "budget.daily" in history[1]["rejected"]
    table = procs.cli("campaign", "show", cid, "--history").stdout.splitlines()
    assert "REJECTED" not in table[0] and "REJECTED, not in force: budget.daily" in table[1]


def test_a_change_reaches_a_running_bidder_within_a_second_and_history_is_kept(stack: dict) -> None:
    procs, bidder, prefix = stack["procs"], stack["bidder"], stack["prefix"]
    cid = f"{prefix}-paused"
    publish(procs, campaign(id=cid))
    wait_for(lambda: live(bidder, cid), 10, "the bidder to bid on the campaign")
    out = procs.cli("campaign", "pause", cid)
    assert out.returncode == 0 and f"paused {cid}" in out.stdout, out.stderr
    published = time.time()  # the pause is on the topic, acknowledged
    wait_for(lambda: not live(bidder, cid), 5, "the bidder to stop bidding", every=0.02)
    assert time.time() - published < 1.0

    again = procs.cli("campaign", "pause", cid)
    assert again.returncode == 0 and "already paused" in again.stdout, again.stderr
    out = procs.cli("campaign", "resume", cid)
    assert out.returncode == 0 and f"resumed {cid}" in out.stdout, out.stderr
    wait_for(lambda: live(bidder, cid), 5, "the bidder to bid again", every=0.02)

    history = procs.cli("campaign", "show", cid, "--history", "--json")
    assert history.returncode == 0, history.stderr
    rows = orjson.loads(history.stdout)
    assert [r["action"] for r in rows] == ["set", "pause", "resume"]  # the repeated pause published nothing
    assert all(r["at"] and "@" in r["by"] for r in rows)
    assert [r["campaign"]["status"] for r in rows] == ["active", "paused", "active"]
    assert rows[2]["campaign"]["budget"] == rows[0]["campaign"]["budget"]
    table = procs.cli("campaign", "show", cid, "--history")
    assert table.returncode == 0 and table.stdout.count(cid) == 3


def test_show_json_goes_back_into_set_so_a_campaign_can_be_edited(stack: dict) -> None:
    """show printed {id: campaign}, which `campaign set` refuses: show | edit | set - failed."""
    procs, bidder, prefix = stack["procs"], stack["bidder"], stack["prefix"]
    cid, other = f"{prefix}-edited", f"{prefix}-untouched"
    publish(procs, campaign(id=cid, budget={"daily": 12.5, "total": 0}), campaign(id=other),
            campaign(id=f"{prefix}-{'long' * 10}"))  # wider than the table's old fixed column
    wait_for(lambda: live(bidder, cid), 10, "the bidder to bid on the campaign")
    out = procs.cli("campaign", "show", cid, "--json")
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    assert [c["id"] for c in doc["campaigns"]] == [cid]

    def set_stdin(text: bytes, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(STREAMBID + ["campaign", "set", *flags, "-"], cwd=ROOT, env=procs.env, input=text,
                              capture_output=True, timeout=60)

    dry = set_stdin(out.stdout.encode(), "--dry-run")
    assert dry.returncode == 0 and f"1 campaign(s) valid: {cid}" in dry.stdout.decode(), dry.stderr
    doc["campaigns"][0]["budget"]["daily"] = "20"
    edited = set_stdin(orjson.dumps(doc))
    assert edited.returncode == 0, edited.stderr
    wait_for(lambda: ((shown(procs, cid) or {}).get("budget") or {}).get("daily") == "20", 15, "the edit to be in force")
    everything = orjson.loads(procs.cli("campaign", "show", "--json").stdout)["campaigns"]
    assert {cid, other} <= {c["id"] for c in everything}
    table = procs.cli("campaign", "show").stdout.splitlines()  # ids of any length keep the columns in line
    status_at = {m.start() for line in table[1:] if (m := re.search(" (active|paused) ", line))}
    assert table[0].startswith("campaign ") and len(status_at) == 1, table
    assert any(len(line.split()[0]) > 40 for line in table[1:])


def test_cli_errors_name_the_field_and_publish_nothing(stack: dict) -> None:
    procs, prefix = stack["procs"], stack["prefix"]
    good, bad = f"{prefix}-good", f"{prefix}-bad"
    path = procs.tmp / "mixed.json"
    path.write_bytes(orjson.dumps([campaign(id=good), campaign(id=bad, budget={"daily": -1.0, "total": 0})]))
    out = procs.cli("campaign", "set", str(path))
    assert out.returncode == 2
    assert "budget.daily" in out.stderr and bad in out.stderr and "fix" in out.stderr, out.stderr
    assert procs.cli("campaign", "show", good).returncode == 2, "nothing may be published when one campaign is invalid"
    for verb in ("pause", "resume"):
        missing = procs.cli("campaign", verb, f"{prefix}-nobody")
        assert missing.returncode == 2 and "campaign show" in missing.stderr
    nofile = procs.cli("campaign", "set", str(procs.tmp / "nope.json"))
    assert nofile.returncode == 2 and "does not exist" in nofile.stderr
    typo = procs.tmp / "typo.json"
    typo.write_bytes(orjson.dumps(campaign(id=good, budget={"daily": 5, "totl": 50})))
    out = procs.cli("campaign", "set", str(typo))
    assert out.returncode == 2 and "budget.totl: is not a campaign field; did you mean 'total'?" in out.stderr
    folder = procs.cli("campaign", "set", str(procs.tmp))
    assert folder.returncode == 2 and "is a directory" in folder.stderr, folder.stderr
    unreachable = procs.cli("campaign", "show", "--broker", "127.0.0.1:1")
    assert unreachable.returncode == 1 and "cannot reach the Kafka broker at 127.0.0.1:1" in unreachable.stderr
    assert "kafka.sh start" in unreachable.stderr and "Traceback" not in unreachable.stderr, unreachable.stderr


def test_messages_of_other_producers_do_not_break_the_campaign_commands(stack: dict) -> None:
    """A tombstone, a bare campaign and a JSON array on the topic: every command goes on, the bidders keep going."""
    procs, bidder, prefix = stack["procs"], stack["bidder"], stack["prefix"]
    cid = f"{prefix}-foreign"
    publish(procs, campaign(id=cid, budget={"daily": 7.5, "total": 0}))
    bare = campaign(id=cid, budget={"daily": 9.25, "total": 0})  # no envelope: read as the campaign itself
    name = topic(prefix, "campaigns")
    asyncio.run(produce(procs.bootstrap, [(name, cid, None), (name, cid, b"[1, 2]"), (name, cid, orjson.dumps(bare))]))
    wait_for(lambda: ((shown(procs, cid) or {}).get("budget") or {}).get("daily") == "9.25", 15,
             "the bare campaign to be in force")
    for args in (["show"], ["show", "--history"], ["show", cid, "--history", "--json"]):
        out = procs.cli("campaign", *args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = orjson.loads(procs.cli("campaign", "show", cid, "--history", "--json").stdout)
    assert [bool(r.get("rejected")) for r in rows] == [False, True, True, False]
    assert "tombstone" in rows[1]["rejected"] and "must be a JSON object" in rows[2]["rejected"]
    out = procs.cli("campaign", "pause", cid)
    assert out.returncode == 0 and f"paused {cid}" in out.stdout, out.stderr
    wait_for(lambda: not live(bidder, cid), 10, "the bidder to stop bidding on the paused campaign")
    doc = shown(procs, cid)
    assert doc is not None and doc["status"] == "paused" and doc["budget"]["daily"] == "9.25"


def test_a_bidder_started_later_gets_the_current_model_and_pacing_at_once(stack: dict) -> None:
    procs, bidder, prefix = stack["procs"], stack["bidder"], stack["prefix"]
    cid = f"{prefix}-late"
    publish(procs, campaign(id=cid))
    now = int(time.time() * 1000)
    recs, spend = [], 0
    for i in range(12):
        bid = f"{cid}-b{i}"
        recs += [("bids", make_event("bids", f"bid:{bid}", now, bid_id=bid, campaign=cid, creative="cr1", price=5000,
                                     pctr=0.01, features=[7, i])),
                 ("billing", make_event("billing", f"bill:{bid}", now + 5, bid_id=bid, campaign=cid, cost=1000 + i,
                                        day=time.strftime("%Y-%m-%d", time.gmtime(now / 1000)))),
                 ("impressions", make_event("impressions", f"imp:{bid}", now + 10, bid_id=bid, campaign=cid,
                                            creative="cr1"))]
        spend += 1000 + i
        if i % 3 == 0:
            recs.append(("clicks", make_event("clicks", f"click:{bid}", now + 100, bid_id=bid, campaign=cid,
                                              creative="cr1")))
    asyncio.run(produce(procs.bootstrap, [(topic(prefix, k), cid, orjson.dumps(e)) for k, e in recs]))

    def settled() -> int | None:
        st = status(bidder)
        pace = st.get("pacing", {}).get(cid)
        return st["model"]["version"] if pace and pace["spent_today"] == spend and st["model"]["version"] else None

    wait_for(settled, 30, "the running bidder to get the model and the campaign's pacing")
    time.sleep(4.0)  # the click window (2 s) closes: the negatives are learned, and the model stops changing
    version = ModelSnapshot.from_bytes(asyncio.run(last_value(procs.bootstrap, topic(prefix, "model")))).version
    assert version >= 1

    port = free_port()
    procs.start("serve-late", "serve", "--port", str(port), "--spill-dir", str(procs.tmp / "spill-late"))
    late = f"http://127.0.0.1:{port}"
    wait_for(lambda: get_json(f"{late}/status"), 60, "the late bidder to answer", every=0.02)
    answering = time.time()
    wait_for(lambda: status(late)["model"]["version"] == version and
             status(late).get("pacing", {}).get(cid, {}).get("spent_today") == spend, 5,
             "the late bidder to get the current model and pacing", every=0.02)
    assert time.time() - answering < 1.0
    assert status(bidder)["model"]["version"] == version  # every bidder on the same model

    exported = procs.tmp / "models" / "exported.snap"  # what `serve --model` names as a source of snapshot files
    out = procs.cli("model", "export", "--out", str(exported), "--json")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["version"] == version == ModelSnapshot.load(exported).version
    port = free_port()
    procs.start("serve-file", "serve", "--no-kafka", "--port", str(port), "--model", str(exported), "--campaigns",
                str(ROOT / "deploy" / "campaigns.example.json"), "--spill-dir", str(procs.tmp / "spill-file"))
    assert wait_for(lambda: (get_json(f"http://127.0.0.1:{port}/status") or {}).get("model", {}).get("version"), 60,
                    "the bidder started from the exported file to answer") == version


def test_model_export_before_any_model_says_what_to_run(stack: dict) -> None:
    procs = stack["procs"]
    env = {**procs.env, "STREAMBID_TOPIC_PREFIX": f"{procs.prefix}-nomodel"}
    out = subprocess.run(STREAMBID + ["model", "export", "--out", str(procs.tmp / "none.snap")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no model on" in out.stderr and "streambid worker" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (procs.tmp / "none.snap").exists()


def test_serve_says_it_follows_the_config_topic_rather_than_serving_no_campaign(stack: dict) -> None:
    log = (stack["procs"].tmp / "serve.log").read_text()
    assert "following the campaign config topic" in log and "serving 0 campaign(s)" not in log, log
