"""Small builders for tests: campaign documents and OpenRTB requests made here, not read from elsewhere."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from models.features import hash_feature
from models.prior import ClickCounts
from models.snapshot import ModelSnapshot

CAMPAIGN: dict[str, Any] = {
    "id": "c1",
    "advertiser": "shop.example",
    "currency": "USD",
    "budget": {"daily": 100.0, "total": 1000.0},
    "flight": {"start": "2020-01-01", "end": "2099-12-31", "timezone": "UTC"},
    "goal": {"type": "cpc", "value_per_click": 2.0, "max_bid_cpm": 20.0},
    "targeting": {"countries": ["USA"]},
    "creatives": [{"id": "cr1", "type": "banner", "w": 300, "h": 250, "cat": ["IAB3-1"], "adm": "<img>"}],
}

REQUEST: dict[str, Any] = {
    "id": "req-1",
    "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01, "bidfloorcur": "USD"}],
    "site": {"id": "s1", "domain": "news.example", "cat": ["IAB12"], "publisher": {"id": "p1"}},
    "device": {"ua": "Mozilla/5.0 Chrome/120", "ip": "203.0.113.7", "devicetype": 2, "os": "Windows",
               "geo": {"country": "USA", "region": "CA", "city": "San Francisco", "utcoffset": -480}},
    "user": {"id": "user-42"},
    "at": 2,
    "tmax": 150,
    "cur": ["USD"],
}


# a native creative (a Native 1.2 response) and a native request whose one required asset it fills
NATIVE_ADM = '{"native":{"ver":"1.2","assets":[{"id":1,"title":{"text":"Greener homes"}}],"link":{"url":"https://shop.example/"}}}'
NATIVE_REQUEST = '{"ver":"1.2","assets":[{"id":7,"required":1,"title":{"len":25}}]}'


def campaign(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(CAMPAIGN)
    for key, value in changes.items():
        doc[key] = value
    return doc


def request(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(REQUEST)
    for key, value in changes.items():
        doc[key] = value
    return doc


def body(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


async def produce(bootstrap: str, records: list[tuple[str, str, bytes]]) -> None:
    """Send (topic, key, value) records to a real broker, each acknowledged before the next."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for topic, key, value in records:
            await p.send_and_wait(topic, value, key=key.encode())
    finally:
        await p.stop()


def stop_processes(procs: list[subprocess.Popen], logs: dict, log_dir: Path, tail: int = 2500) -> None:
    """Terminate a test's processes (killed if they linger 20 s), close their logs and show each log's tail."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    for f in logs.values():
        f.close()
    for n in logs:
        sys.stderr.write(f"--- {n} log (tail) ---\n{(log_dir / f'{n}.log').read_text(errors='replace')[-tail:]}\n")


def http(url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One request on a new connection (urllib does not keep connections alive): status and body, errors too."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def varied_model(docs: list[dict], rng: random.Random) -> ModelSnapshot:
    """Campaign and creative weights, so values differ; half the creatives trained, the rest explored."""
    weights: dict[int, float] = {}
    counts = ClickCounts()
    for d in docs:
        weights[hash_feature("campaign", d["id"])] = rng.gauss(0, 1.2)
        for cr in d["creatives"]:
            weights[hash_feature("creative", f"{d['id']}/{cr['id']}")] = rng.gauss(0, 0.8)
            if rng.random() < 0.5:
                for k in range(300):
                    counts.add(d["id"], cr["id"], clicked=k % rng.randint(30, 400) == 0)
    return ModelSnapshot(1, weights, -4.5, counts)


def record_calls(monkeypatch: Any, owner: Any, name: str, note: Callable[..., Any]) -> list:
    """Wrap `owner.name` so each call is still made and `note(*args, **kw)` is appended to the returned list first."""
    calls: list = []
    real = getattr(owner, name)

    def wrapped(*args: Any, **kw: Any) -> Any:
        calls.append(note(*args, **kw))
        return real(*args, **kw)

    monkeypatch.setattr(owner, name, wrapped)
    return calls


def saved_figures(monkeypatch: Any) -> list[Any]:
    """The matplotlib figures saved from now on in this test, kept for the test to read back."""
    from matplotlib.figure import Figure

    figures: list[Figure] = []
    savefig = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures
