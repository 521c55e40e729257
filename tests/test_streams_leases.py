"""Budget leases on a real broker: bidder processes share one daily budget through the worker's grants.

`streambid serve` processes and `streambid worker` run on a topic prefix of
their own; the test plays the exchange over HTTP (bid requests, then loss or
billing notices, a few bids kept in flight) and counts the billed spend
itself from the notices the bidders accepted.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port
from tests.helpers import body, campaign, request
from tests.streams_support import Procs, create_topics, wait_for, worker_status

pytestmark = pytest.mark.kafka
BUDGET = 0.5  # currency units a day: 500,000 micros
IN_FLIGHT = 3  # bids answered and not yet billed or lost, per bidder
MAX_BID = 3.0  # CPM: 3,000 micros an impression


def post(url: str, data: bytes) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), r.headers.get("x-nobid-reason", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def bidder_status(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/status", timeout=5) as r:
        return orjson.loads(r.read())


@dataclass
class Bidder:
    base: str
    pending: deque = field(default_factory=deque)  # (bid, cost micros) answered, outcome not yet sent
    spent: int = 0  # micros of billing notices it accepted
    bids: int = 0
    last_bid_at: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class Exchange:
    """Sends requests and notices; every third answered bid loses, the rest are billed at the bid price."""

    site: dict
    n: int = 0

    def bid(self, b: Bidder) -> bool:
        self.n += 1
        status, out, reason = post(f"{b.base}/bid/testx", body(request(id=f"r{self.n}", site=self.site)))
        if status != 200:
            assert status == 204, (status, out)
            b.reasons[reason] = b.reasons.get(reason, 0) + 1
            return False
        bid = orjson.loads(out)["seatbid"][0]["bid"][0]
        b.bids += 1
        b.last_bid_at = time.time()
        b.pending.append((bid, round(bid["price"] * 1e6) // 1000))
        while len(b.pending) > IN_FLIGHT:
            self.outcome(b)
        return True

    def outcome(self, b: Bidder) -> None:
        bid, cost = b.pending.popleft()
        if b.bids % 3 == 0:
            url = bid["lurl"].replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "99")
            assert get(url) == 200
            return
        assert get(bid["burl"].replace("${AUCTION_PRICE}", repr(bid["price"]))) == 200
        b.spent += cost

    def settle_all(self, b: Bidder) -> None:
        while b.pending:
            self.outcome(b)


@pytest.fixture()
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict]:
    run = uuid.uuid4().hex[:8]
    prefix = f"t{run}"
    create_topics(kafka_bootstrap, prefix)
    procs = Procs(kafka_bootstrap, prefix, tmp_path)
    cid = f"lease-{run}"
    cfile = tmp_path / "campaigns.json"
    cfile.write_bytes(orjson.dumps([campaign(id=cid, budget={"daily": BUDGET, "total": 10 * BUDGET},
                                             targeting={"countries": ["USA"], "domains": [f"{cid}.example"]},
                                             # the max bid binds whatever the pacing multiplier: one price throughout
                                             goal={"type": "cpc", "value_per_click": 1000.0, "max_bid_cpm": MAX_BID})]))
    published = procs.cli("campaign", "set", str(cfile))
    assert published.returncode == 0 and cid in published.stdout, published.stderr
    try:
        yield {"procs": procs, "campaign": cid, "tmp": tmp_path,
               "site": {"id": "s1", "domain": f"{cid}.example", "cat": ["IAB12"], "publisher": {"id": "p1"}}}
    finally:
        procs.stop_all()


def start_bidder(stack: dict, name: str) -> Bidder:
    port = free_port()
    stack["procs"].start(name, "serve", "--port", str(port), "--spill-dir", str(stack["tmp"] / f"spill-{name}"),
                         "--explore-below", "0", "--lease-slice", "0.1")
    return Bidder(f"http://127.0.0.1:{port}")


def lease_of(b: Bidder, cid: str) -> dict | None:
    return (bidder_status(b.base).get("leases") or {}).get(cid)


def wait_for_lease(b: Bidder, cid: str) -> dict:
    return wait_for(lambda: (lease := lease_of(b, cid)) and lease["granted"] > 0 and lease, 90,
                    f"a lease granted to {b.base}", every=0.2)


def test_two_bidders_share_one_budget_and_stop_together(stack: dict) -> None:
    procs, cid, ex = stack["procs"], stack["campaign"], Exchange(stack["site"])
    worker, wport = procs.worker("worker", f"lease-{uuid.uuid4().hex[:6]}")
    bidders = [start_bidder(stack, "serve-a"), start_bidder(stack, "serve-b")]
    for b in bidders:
        wait_for_lease(b, cid)
    budget = int(BUDGET * 1e6)
    max_cost = max_slice = 0
    exhausted_at = None  # when the billed spend left less than one bid per bidder in the budget
    quiet_since = None
    end = time.time() + 120
    while time.time() < end:
        answered = False
        for b in bidders:
            answered |= ex.bid(b)
            if b.pending:
                max_cost = max(max_cost, max(c for _, c in b.pending))
        for b in bidders:
            lease = lease_of(b, cid) if ex.n % 25 == 0 else None
            if lease:
                max_slice = max(max_slice, lease["slice"])
        spent = sum(b.spent for b in bidders)
        if exhausted_at is None and spent >= budget - len(bidders) * max_cost:
            exhausted_at = time.time()
        if answered:
            quiet_since = None
        elif exhausted_at is not None:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= 3.0:
                break
        if not answered and exhausted_at is None:
            for b in bidders:  # nothing in flight holds budget while waiting for a top-up
                ex.settle_all(b)
            time.sleep(0.02)
    for b in bidders:
        ex.settle_all(b)
    spent = sum(b.spent for b in bidders)
    assert exhausted_at is not None, f"the budget was never spent: {spent} of {budget}"
    print(f"\nbudget {budget} micros, billed {spent}, max slice {max_slice}, max cost {max_cost}; per bidder: "
          + ", ".join(f"{b.bids} bids {b.spent} micros, last bid {b.last_bid_at - exhausted_at:+.2f}s, 204s {b.reasons}"
                      for b in bidders))
    assert all(b.bids > 0 and b.spent > 0 for b in bidders), "both bidders spent from the one budget"
    # The stated bound: one lease slice plus the bids in flight.  Here nothing is lost or reclaimed, so the
    # leases alone keep spend within the budget itself.
    assert spent <= budget + max_slice + len(bidders) * IN_FLIGHT * max_cost
    assert spent <= budget
    assert max(b.last_bid_at for b in bidders) <= exhausted_at + 1.0, "a bidder went on bidding after the budget was spent"
    assert all(b.reasons.get("budget", 0) > 0 for b in bidders)
    # the worker's ledger saw the same spend
    def ledger() -> int | None:
        st = worker_status(wport)
        total = sum(t["spend"] for k, t in (st or {}).get("totals", {}).items() if k.startswith(cid + "|"))
        return total if total == spent else None

    assert wait_for(ledger, 30, "the ledger to count every bill") == spent
    assert worker.poll() is None


def test_a_bidder_cut_off_from_the_streams_side_stops_when_its_lease_is_spent(stack: dict) -> None:
    procs, cid, ex = stack["procs"], stack["campaign"], Exchange(stack["site"])
    worker, _ = procs.worker("worker", f"lease-{uuid.uuid4().hex[:6]}")
    b = start_bidder(stack, "serve")
    wait_for_lease(b, cid)
    for _ in range(5):  # some spend before the loss
        ex.bid(b)
    ex.settle_all(b)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    time.sleep(1.0)  # a grant already on its way lands
    before = lease_of(b, cid)
    spent_before = b.spent
    assert before is not None and before["reserved"] == 0
    quiet_since = None
    end = time.time() + 60
    while time.time() < end:
        if ex.bid(b):
            quiet_since = None
        else:
            ex.settle_all(b)
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since >= 3.0:
                break
    ex.settle_all(b)
    after = lease_of(b, cid)
    spent_after_loss = b.spent - spent_before
    print(f"\ngranted {before['granted']}, spent at the loss {before['spent']}, spent after it {spent_after_loss}, "
          f"lease after {after}, 204s {b.reasons}")
    assert after is not None, "the bidder still shows its lease"
    assert after["granted"] == before["granted"], "no grant came from a dead worker"
    assert 0 < spent_after_loss <= before["granted"] - before["spent"]
    assert after["spent"] <= after["granted"]
    assert b.reasons.get("budget", 0) > 0


def test_workers_sharing_a_port_settle_each_others_notices(stack: dict) -> None:
    """`serve --workers 2`: notices land on either worker, yet each bid settles in the lease of the worker that bid.

    Were a notice to settle where it landed, half the bids would stay reserved (for the notice URL's hour) in the
    bidding worker's lease, which would run dry long before the budget is spent.
    """
    procs, cid, ex = stack["procs"], stack["campaign"], Exchange(stack["site"])
    procs.worker("worker", f"lease-{uuid.uuid4().hex[:6]}")
    port = free_port()
    procs.start("serve", "serve", "--port", str(port), "--workers", "2", "--spill-dir", str(stack["tmp"] / "spill"),
                "--explore-below", "0", "--lease-slice", "0.1")
    b = Bidder(f"http://127.0.0.1:{port}")
    seen_leases: dict[str, dict] = {}

    def both_leased() -> bool:  # each request may reach either worker
        st = bidder_status(b.base)
        if (st.get("leases") or {}).get(cid, {}).get("granted", 0) > 0:
            seen_leases[st["bidder"]] = st
        return len(seen_leases) == 2

    wait_for(both_leased, 90, "a lease for each of the two workers", every=0.1)
    budget, price = int(BUDGET * 1e6), int(MAX_BID * 1000)
    bidders: set[str] = set()
    quiet_since = None
    end = time.time() + 120
    while time.time() < end:
        n = b.bids
        if ex.bid(b):
            bidders.add(b.pending[-1][0]["id"].rsplit("-", 1)[0])
        if b.bids > n:
            quiet_since = None
        else:
            ex.settle_all(b)
            if b.spent >= budget - 2 * price:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since >= 3.0:
                    break
            else:
                time.sleep(0.02)
    ex.settle_all(b)
    relayed = []
    for _ in range(40):
        st = bidder_status(b.base)
        relayed.append(st.get("notice_relay", {}).get("received", 0))
    print(f"\nbudget {budget}, billed {b.spent} in {b.bids} bids from {len(bidders)} workers; 204s {b.reasons}; "
          f"notices relayed to a worker (as seen): {sorted(set(relayed))}")
    assert len(bidders) == 2
    assert budget - 2 * price <= b.spent <= budget
    assert max(relayed) > 0
