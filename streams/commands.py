"""Subcommands of the streams side: `worker` and `campaign set|pause|show`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bidder.arguments import broker_address_problem, port_or_zero, positive
from bidder.campaigns import (
    Campaign,
    ConfigError,
    campaign_file_error,
    config_campaign,
    idle_warnings,
    load_campaign_docs,
    parse_campaigns,
)
from bidder.money import to_text as money_text
from streams import topics


def broker_of(args: argparse.Namespace) -> str:
    flag = getattr(args, "broker", None)
    broker = flag or os.environ.get("KAFKA_BOOTSTRAP")
    if not broker:
        sys.exit("streambid: no Kafka broker: pass --broker HOST:PORT or set KAFKA_BOOTSTRAP "
                 "(for a local one: bash deploy/kafka-local/kafka.sh start)")
    problem = broker_address_problem(flag)
    if problem:
        print(f"streambid: {problem}", file=sys.stderr)
        sys.exit(2)
    return broker


T = TypeVar("T")
BROKER_HELP = "Kafka bootstrap HOST:PORT (default: $KAFKA_BOOTSTRAP)"
TIMEOUT_HELP = ("how long the broker has to acknowledge everything sent; past it the command stops, lists which "
                "campaigns were published and which were not, and exits 1 (default: %(default)s)")
DEFAULT_TIMEOUT_S = 30.0
WAIT_NOTE_S = 2.0  # a broker slower than this to answer gets one line on stderr saying what the command waits for
CLOSE_S = 1.0  # how long a run that stops short waits for each step of closing the producer
SHOWN_IDS = 20  # campaign ids listed in a report before "... and N more"


def add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=positive(float), default=DEFAULT_TIMEOUT_S, metavar="SECONDS", help=TIMEOUT_HELP)


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    top, camp = groups["top"], groups["campaign"]
    w = top.add_parser("worker", help="run the Faust stream processors on Kafka",
                       description="Consume delivery events and campaign config; keep spend, attribution, the CTR model "
                                   "and pacing; publish model and pacing updates for the bidders.")
    w.add_argument("--broker", metavar="HOST:PORT", help=BROKER_HELP)
    w.add_argument("--app-id", default="streambid-worker", help="consumer group / Faust app id (default: %(default)s)")
    w.add_argument("--metrics-port", type=port_or_zero, default=9102,
                   help="port of Prometheus /metrics and of /status (JSON: owned partitions, offsets reached, totals per "
                        "campaign and day); 0 to disable (default: %(default)s)")
    w.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDRESS",
                   help="address /metrics and /status listen on; 0.0.0.0 for a Prometheus on another host or "
                        "container (default: %(default)s, this machine only)")
    w.add_argument("--click-window", type=positive(float), default=1800.0, metavar="SECONDS",
                   help="click attribution window: a click at most this long after its impression is attributed to "
                        "it; > 0 (default: %(default)s)")
    w.add_argument("--checkpoint-every", type=positive(float), default=60.0, metavar="SECONDS",
                   help="how often the learner's exact state goes to the learner topic while it learns; a restarted "
                        "worker (or the next owner of the examples) resumes from it and relearns only what came after "
                        "(default: %(default)s)")
    w.add_argument("--loglevel", type=str.lower, choices=("debug", "info", "warning", "error", "critical"),
                   default="warning", help="faust log level (default: %(default)s)")
    w.set_defaults(func=cmd_worker)

    b = groups["bench"].add_parser(
        "streams", help="delivery events per second through one worker on a real broker (River learning included)",
        description="Load synthetic auctions (bid, win, billing, impression, click, some duplicates) onto the topics, "
                    "start one `streambid worker` and time it from its first event until every event is processed and "
                    "every example learned; report events/s, consumer lag and the worker's CPU time.  Uses "
                    "--broker / $KAFKA_BOOTSTRAP, or starts a local broker with deploy/kafka-local/kafka.sh.")
    b.add_argument("--events", type=positive(int), default=1_000_000, help="delivery events to push (default: %(default)s)")
    b.add_argument("--campaigns", type=positive(int), default=50, metavar="N",
                   help="campaigns the auctions spread over (default: %(default)s)")
    b.add_argument("--seed", type=int, default=1, help="random seed of the workload (default: %(default)s)")
    b.add_argument("--broker", metavar="HOST:PORT",
                   help="Kafka bootstrap HOST:PORT (default: $KAFKA_BOOTSTRAP, else a local broker)")
    b.add_argument("--out", type=Path, default=Path("out"), metavar="DIR",
                   help="worker log and throughput plot go here (default: %(default)s)")
    b.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    b.set_defaults(func=cmd_bench_streams)

    s = camp.add_parser("set", help="validate a campaign file and publish every campaign in it",
                        description="Validate each campaign (schema, budgets, flight, currency, targeting, creatives) "
                                    "and publish it to the config topic; nothing is published if any campaign is invalid. "
                                    "A run that stops short (--timeout, a failed delivery, Ctrl-C) lists which campaigns "
                                    "were published and which were not; running it again with the same file is safe.")
    s.add_argument("file", type=Path, help="JSON or YAML: one campaign, a list, or {\"campaigns\": [...]}; "
                                           "- reads it from standard input")
    s.add_argument("--broker", metavar="HOST:PORT", help=BROKER_HELP)
    s.add_argument("--dry-run", action="store_true", help="validate only")
    add_timeout(s)
    s.set_defaults(func=cmd_set)
    p = camp.add_parser("pause", help="pause a campaign (bidders stop bidding on it within a second)",
                        description="Publish the campaign's version in force with status paused: bidders stop bidding on "
                                    "it within a second; budget, targeting and creatives stay as they are.")
    p.add_argument("id", help="campaign id (see `streambid campaign show`)")
    p.add_argument("--broker", metavar="HOST:PORT", help=BROKER_HELP)
    add_timeout(p)
    p.set_defaults(func=cmd_pause)
    r = camp.add_parser("resume", help="resume a paused campaign (bidders bid on it again within a second, "
                                       "within its flight, dayparting and budget)",
                        description="Publish the campaign's version in force with status active: bidders bid on it "
                                    "again within a second, within its flight, dayparting and budget.")
    r.add_argument("id", help="campaign id (see `streambid campaign show`)")
    r.add_argument("--broker", metavar="HOST:PORT", help=BROKER_HELP)
    add_timeout(r)
    r.set_defaults(func=cmd_resume)
    sh = camp.add_parser("show", help="show the current config of one or all campaigns, or their change history",
                         description="Read the config topic: the version in force of each campaign (the last valid "
                                     "one), or with --history every message, when, by whom, and whether it was "
                                     "refused.")
    sh.add_argument("id", nargs="?", help="one campaign (default: all)")
    sh.add_argument("--broker", metavar="HOST:PORT", help=BROKER_HELP)
    sh.add_argument("--history", action="store_true", help="list every change: when, who, what")
    sh.add_argument("--timeout", type=positive(float), default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                    help="how long the broker has to hand over the config topic; past it the command stops and exits 1 "
                         "(default: %(default)s)")
    sh.add_argument("--json", action="store_true",
                    help="print one JSON document: {\"campaigns\": [...]}, which `campaign set -` takes back from "
                         "standard input; with --history, the list of changes")
    sh.set_defaults(func=cmd_show)


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import StatusBoard, create_app
    from streams.kafka_io import ensure_topics

    board = StatusBoard()
    registry = None
    if args.metrics_port:  # bound first: a port in use is found before the broker is contacted
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        try:
            serve_http(args.metrics_port, registry, board, args.metrics_host)
        except OSError as e:
            print(f"streambid worker: --metrics-port {args.metrics_port}: cannot listen on {args.metrics_host} "
                  f"({e.strerror or e}); give a free port and an address of this machine, or --metrics-port 0 to run "
                  "without /metrics and /status", file=sys.stderr)
            return 2
    broker = broker_of(args)
    on_broker(args, ensure_topics(broker), announce=True)
    config = on_broker(args, read_config_log(broker), announce=True)
    known = {cid: e.campaign for cid, e in latest_configs(config).items() if e.campaign}
    app, stats = create_app(broker, app_id=args.app_id, click_window_ms=int(args.click_window * 1000), known=known,
                            board=board, checkpoint_s=args.checkpoint_every)
    if registry is not None:
        registry.register(stats)
    from faust.worker import Worker

    worker = Worker(app, loglevel=args.loglevel, quiet=True)
    # Faust's startup spinner hangs a DEBUG-level handler on the root logger, after which every debug record of
    # aiokafka and Faust is built and handled: a tenth of the worker's time.  No spinner, no such handler.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_bench_streams(args: argparse.Namespace) -> int:
    from loadtest.day_stack import Broker, StackError
    from streams import bench_streams

    if args.events < 1:
        print("streambid: --events must be at least 1", file=sys.stderr)
        return 2
    if problem := broker_address_problem(args.broker):  # before the Kafka client logs its own reading of it
        print(f"streambid bench streams: {problem}", file=sys.stderr)
        return 2
    try:
        with Broker(args.broker or os.environ.get("KAFKA_BOOTSTRAP")) as bootstrap:
            result = bench_streams.run(bootstrap, args.events, n_campaigns=args.campaigns, seed=args.seed,
                                       progress=True, log_dir=args.out)
    except (StackError, RuntimeError) as e:
        print(f"streambid: bench streams: {e}", file=sys.stderr)
        return 1
    png = bench_streams.plot(result, args.out / "bench-streams.png")
    if args.json:
        print(orjson.dumps({**result.to_dict(), "plot": str(png)}).decode())
    else:
        print(bench_streams.format_table(result))
        print(f"plot: {png}")
    return 0 if result.spend_ok else 1


def serve_http(port: int, registry: Any, board: Any, addr: str = "127.0.0.1") -> None:
    """/metrics (Prometheus) and /status (JSON: owned partitions, positions, totals) from a daemon thread."""
    import threading
    from socketserver import ThreadingMixIn
    from urllib.parse import parse_qs
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/status":
            return metrics(environ, start_response)
        doc = board.doc
        prefix = (parse_qs(environ.get("QUERY_STRING", "")).get("prefix") or [""])[0]
        if prefix:
            doc = {**doc, "totals": {k: v for k, v in doc.get("totals", {}).items() if k.startswith(prefix)}}
        body = orjson.dumps(doc)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server(addr, port, app, server_class=Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()


def change_record(doc: dict[str, Any], action: str) -> bytes:
    """A config message: the campaign document plus who changed it, when and how."""
    who = f"{_user()}@{socket.gethostname()}"
    return orjson.dumps({"campaign": doc, "action": action, "by": who, "at": dt.datetime.now(dt.UTC).isoformat()})


def _user() -> str:
    """Who runs the command; a container started with a numeric --user has no account name, only its uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no $USER nor passwd entry (KeyError before Python 3.13, OSError from it)
        return f"uid{os.getuid()}"


@dataclass(slots=True)
class Publication:
    """What one run handed the producer and what the broker acknowledged: what to tell when the run stops short."""

    ids: list[str]  # the campaign of each record, in the order sent
    acks: list[asyncio.Future[Any]] = field(default_factory=list)  # one per record handed to the producer
    problem: str = ""  # why deliveries failed, when they did

    def split(self) -> tuple[list[str], list[str]]:
        """(confirmed, not confirmed) campaign ids, in file order."""
        ok = [i < len(self.acks) and _acknowledged(self.acks[i]) for i in range(len(self.ids))]
        return [c for i, c in enumerate(self.ids) if ok[i]], [c for i, c in enumerate(self.ids) if not ok[i]]


def _acknowledged(ack: asyncio.Future[Any]) -> bool:
    return ack.done() and not ack.cancelled() and ack.exception() is None


async def _produce(broker: str, records: list[tuple[str, bytes]], pub: Publication | None = None,
                   timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Hand every record to the producer, then wait for all acknowledgements together, everything within `timeout`
    seconds: the idempotent producer retries without end, so a broker that is gone would otherwise hang the command.
    Fails as an unreachable broker only while nothing has been handed over; after that `pub` tells what happened
    (without `pub`, a KafkaError does)."""
    from aiokafka.errors import KafkaError

    own = pub is None
    pub = pub or Publication([key for key, _ in records])
    await _deliver(broker, records, pub, timeout)
    if own and pub.split()[1]:
        raise KafkaError(pub.problem)


async def _deliver(broker: str, records: list[tuple[str, bytes]], pub: Publication, timeout: float) -> None:
    """`_produce` into `pub`: every acknowledgement, or the failure that came first, stays there for the report."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    from streams.kafka_io import ensure_topics

    producer: Any = None
    try:
        async with asyncio.timeout(timeout):
            await ensure_topics(broker)
            producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=True)
            await producer.start()
            for key, value in records:
                pub.acks.append(await producer.send(topics.CAMPAIGNS.name, value, key=key.encode()))
            if pub.acks:
                await asyncio.wait(pub.acks)
    except TimeoutError:
        if not pub.acks:
            raise KafkaTimeoutError(f"no answer within {timeout:g} s") from None
        pub.problem = f"the Kafka broker at {broker} did not acknowledge every campaign within {timeout:g} s (--timeout)"
    except (KafkaError, OSError) as e:
        if not pub.acks:
            raise
        pub.problem = f"the Kafka broker at {broker} failed: {_error_text(e)}"
    finally:
        if producer is not None:
            await _close(producer, pending=not all(a.done() for a in pub.acks))
    failed = [exc for a in pub.acks if a.done() and not a.cancelled() and (exc := a.exception()) is not None]
    if failed and not pub.problem:
        pub.problem = f"the broker did not take {len(failed)} campaign(s): {_error_text(failed[0])}"


def unreachable_reason(e: BaseException) -> str:
    """Why a connection failed, in words: aiokafka's bootstrap error spells out its address tuples."""
    if type(e).__name__ == "KafkaConnectionError" and "bootstrap" in str(e).lower():
        return "no answer at that address"
    return _error_text(e)


def _error_text(e: BaseException) -> str:
    """The error with its name: some of aiokafka's errors print it, some print nothing at all."""
    text, name = str(e), type(e).__name__
    if name in text:
        return text
    return f"{name}: {text}" if text else name


async def _close(producer: Any, pending: bool) -> None:
    """Close the producer; with deliveries still pending, at once and without them.

    aiokafka's `stop()` first delivers every queued batch, however long a broker that is gone takes, and there is no
    abort; but `stop()` goes straight on to closing once the sender task has ended.  So the sender is cancelled first
    (a request in flight may hold it until its own timeout, hence the bound), and no record goes out after the user
    was told it was not published."""
    if pending:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer._sender.close(), CLOSE_S)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), CLOSE_S)


def _publish(args: argparse.Namespace, records: list[tuple[str, bytes]], rerun: str) -> int | None:
    """Publish `records`; None once every one is acknowledged, else the exit status after saying which campaigns are
    published and which are not (a failure before any record was sent is the unreachable broker's message)."""
    pub = Publication([key for key, _ in records])
    try:
        on_broker(args, _produce(broker_of(args), records, pub, args.timeout))
    except KeyboardInterrupt:
        if not pub.acks:
            print("streambid: interrupted; nothing was published", file=sys.stderr)
        else:
            print(publish_report(pub, "interrupted", rerun), file=sys.stderr)
        return 130
    if pub.split()[1]:
        print(publish_report(pub, pub.problem or "stopped", rerun), file=sys.stderr)
        return 1
    return None


def publish_report(pub: Publication, why: str, rerun: str) -> str:
    """Which campaigns are on the config topic and which may not be, and that running the command again is safe."""
    done, missing = pub.split()
    return (f"streambid: {why}\n"
            f"  published ({len(done)} of {len(pub.ids)}): {_some(done)}\n"
            f"  NOT confirmed ({len(missing)} of {len(pub.ids)}; each may or may not have reached the topic): "
            f"{_some(missing)}\n"
            f"Running {rerun} again is safe: the config topic is keyed by campaign id and bidders and workers keep "
            "the last version of each, so a campaign published twice is in force once, as published.")


def _some(ids: list[str], shown: int = SHOWN_IDS) -> str:
    """The first `shown` ids, then how many more: a 1,500-campaign file must not bury the message."""
    if not ids:
        return "none"
    more = f" ... and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


@dataclass(slots=True)
class ConfigEntry:
    """One message of the config topic: who sent it and when, and the campaign it sets, or why it sets none."""

    key: str  # the message key: the campaign id, as `campaign set` sends it
    record: dict[str, Any]  # the message as decoded ({} when it is not a JSON object)
    campaign: Campaign | None
    problem: str = ""

    @property
    def campaign_id(self) -> str:
        if self.campaign is not None:
            return self.campaign.id
        doc = self.record.get("campaign", self.record)
        cid = doc.get("id") if isinstance(doc, dict) else None
        return cid if isinstance(cid, str) else self.key or "?"


def config_entry(key: bytes | None, value: bytes | None) -> ConfigEntry:
    name = (key or b"").decode("utf-8", "replace")
    try:
        record = orjson.loads(value) if value is not None else {}
    except orjson.JSONDecodeError:
        record = {}
    record = record if isinstance(record, dict) else {}
    try:
        return ConfigEntry(name, record, config_campaign(value))
    except ConfigError as e:
        return ConfigEntry(name, record, None, str(e))


async def read_config_log(broker: str, only: str | None = None) -> list[ConfigEntry]:
    """Every message on the config topic, oldest first; none when the topic does not exist yet.

    With `only`, the messages about that campaign: validating every campaign of a big account takes many seconds,
    and pausing one must not wait for them.  A message is about it when keyed by its id or when its value names it.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await c.start()
        if topics.CAMPAIGNS.name not in await c.topics():
            return []
        tp = TopicPartition(topics.CAMPAIGNS.name, 0)
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        await c.seek_to_beginning(tp)
        out: list[ConfigEntry] = []
        while await c.position(tp) < end:
            batch = await c.getmany(tp, timeout_ms=1000)
            out.extend(config_entry(msg.key, msg.value) for msg in batch.get(tp, []) if _about(msg.key, msg.value, only))
        return out
    finally:
        await c.stop()


def _about(key: bytes | None, value: bytes | None, campaign: str | None) -> bool:
    """Whether a config message may concern `campaign` (None: every campaign)."""
    if campaign is None:
        return True
    if key == campaign.encode():
        return True
    return value is not None and orjson.dumps(campaign) in value


def on_broker(args: argparse.Namespace, work: Coroutine[Any, Any, T], timeout: float | None = None,
              announce: bool = False) -> T:
    """Run `work` against the broker, within `timeout` seconds when given; an unreachable or silent broker ends the
    command with what to do, not a traceback or a hang.  With `announce`, a broker that keeps it waiting past
    WAIT_NOTE_S gets one line saying so: a silent one otherwise looks like a hung command for the client's 40 s."""
    from aiokafka.errors import KafkaError

    broker = broker_of(args)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the one line below says it all
    bounded = asyncio.wait_for(work, timeout) if timeout else work
    try:
        return asyncio.run(_announced(bounded, broker, timeout) if announce else bounded)
    except TimeoutError:
        sys.exit(f"streambid: the Kafka broker at {broker} did not answer within {timeout:g} s (--timeout); nothing "
                 "was changed. Check --broker or KAFKA_BOOTSTRAP, or run again with a longer --timeout")
    except (KafkaError, OSError) as e:
        sys.exit(f"streambid: cannot reach the Kafka broker at {broker} ({unreachable_reason(e)}); nothing was changed. "
                 "Check --broker or KAFKA_BOOTSTRAP, or start a local one with: bash deploy/kafka-local/kafka.sh start")
    finally:  # for this check only: a worker that runs on must hear its Kafka client in an outage
        logging.getLogger("aiokafka").setLevel(logging.NOTSET)


async def _announced(work: Awaitable[T], broker: str, timeout: float | None) -> T:
    """`work`, with one line on stderr if it is still waiting for the broker after WAIT_NOTE_S."""
    limit = f" (at most {timeout:g} s, --timeout)" if timeout else " (Ctrl-C to stop)"
    note = asyncio.get_running_loop().call_later(
        WAIT_NOTE_S, lambda: print(f"streambid: waiting for the Kafka broker at {broker}{limit} ...", file=sys.stderr,
                                   flush=True))
    try:
        return await work
    finally:
        note.cancel()


def cmd_set(args: argparse.Namespace) -> int:
    try:
        camps = parse_campaigns(load_campaign_docs(args.file))
    except ConfigError as e:  # every invalid campaign is reported, not just the first
        print(campaign_file_error(args.file, e, "Nothing was published"), file=sys.stderr)
        return 2
    for line in idle_warnings(camps):
        print(f"streambid: {line}", file=sys.stderr)
    if args.dry_run:
        print(f"{len(camps)} campaign(s) valid: {_some([c.id for c in camps])}")
        return 0
    code = _publish(args, [(c.id, change_record(c.to_doc(), "set")) for c in camps],
                    "`streambid campaign set` with the same file")
    if code is not None:
        return code
    print(f"published {len(camps)} campaign(s): {_some([c.id for c in camps])}")
    return 0


def latest_configs(log: list[ConfigEntry]) -> dict[str, ConfigEntry]:
    """The config in force per campaign: the last *valid* version of each."""
    return {e.campaign.id: e for e in log if e.campaign is not None}


def cmd_pause(args: argparse.Namespace) -> int:
    return _set_status(args, "paused", "pause")


def cmd_resume(args: argparse.Namespace) -> int:
    return _set_status(args, "active", "resume")


def _set_status(args: argparse.Namespace, status: str, action: str) -> int:
    """Publish the campaign's current version with `status`: the rest of it (budget, targeting) stays as it is."""
    broker = broker_of(args)
    current = latest_configs(on_broker(args, read_config_log(broker, only=args.id), args.timeout)).get(args.id)
    if current is None or current.campaign is None:
        print(f"streambid: no campaign {args.id!r} on the config topic; see `streambid campaign show`", file=sys.stderr)
        return 2
    if current.campaign.status == status:
        print(f"{args.id} is already {status}; nothing published")
        return 0
    if status == "active":  # resumed, yet its flight may be over or its budget 0: said now, not found out later
        for line in idle_warnings([replace(current.campaign, status=status)]):
            print(f"streambid: {line}", file=sys.stderr)
    doc = dict(current.campaign.to_doc(), status=status, version=current.campaign.version)
    code = _publish(args, [(args.id, change_record(doc, action))], f"`streambid campaign {action} {args.id}`")
    if code is not None:
        return code
    print(f"{'paused' if status == 'paused' else 'resumed'} {args.id}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    log = on_broker(args, read_config_log(broker_of(args), only=args.id or None), args.timeout)
    if args.history:
        return _show_history([e for e in log if not args.id or e.campaign_id == args.id], args.json)
    current = latest_configs(log)
    if args.id:
        if args.id not in current:
            print(f"streambid: no campaign {args.id!r} on the config topic; see `streambid campaign show`", file=sys.stderr)
            return 2
        current = {args.id: current[args.id]}
    if args.json:  # the shape `campaign set` reads, so show, edit and set round-trip
        print(orjson.dumps({"campaigns": [e.campaign.to_doc() for _, e in sorted(current.items()) if e.campaign]}).decode())
        return 0
    if not current:
        print("no campaigns on the config topic yet; publish some with `streambid campaign set FILE`")
        return 0
    rows = [(cid, e.campaign.status, money_text(e.campaign.daily_budget), e.campaign.currency,
             str(e.record.get("at", "?")), str(e.record.get("by", "?")))
            for cid, e in sorted(current.items()) if e.campaign is not None]
    head = ("campaign", "status", "daily", "currency", "changed at", "by")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head) - 1)]
    for r in (head, *rows):  # columns as wide as their longest value: ids run to 64 characters
        print(" ".join(v.rjust(w) if i == 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=False)))
              + " " + r[-1])
    return 0


def _show_history(rows: list[ConfigEntry], as_json: bool) -> int:
    """Every change, oldest first; a message the bidders and workers refused is marked, with its reason."""
    if as_json:
        print(orjson.dumps([dict(e.record, rejected=e.problem) if e.problem else e.record for e in rows]).decode())
        return 0
    for e in rows:
        rec, c = e.record, e.campaign
        what = (f"status={c.status} daily={money_text(c.daily_budget)}" if c is not None
                else f"REJECTED, not in force: {e.problem}")
        print(f"{str(rec.get('at', '?')):<32} {str(rec.get('by', '?')):<28} {str(rec.get('action', '?')):<6} "
              f"{e.campaign_id:<20} {what}")
    return 0
