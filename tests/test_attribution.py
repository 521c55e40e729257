"""Delayed feedback: one example per served bid, never a click twice, never negative then positive."""

from __future__ import annotations

from streams.attribution import Attribution
from streams.events import make_event

MIN = 60_000


def bid(i: int, ts: int = 0) -> dict:
    return make_event("bids", f"bid:b{i}", ts, bid_id=f"b{i}", campaign="c1", creative="cr1", price=1, pctr=0.01,
                      features=[1, 2, i])


def ev(kind: str, i: int, ts: int) -> dict:
    return make_event(kind, f"{kind}:b{i}", ts, bid_id=f"b{i}", campaign="c1", creative="cr1")


def test_click_inside_window_is_one_positive() -> None:
    a = Attribution({}, click_window_ms=30 * MIN)
    a.on_bid(bid(1))
    assert a.on_impression(ev("impressions", 1, 1000)) == ("matched", None)
    outcome, ex = a.on_click(ev("clicks", 1, 5 * MIN))
    assert outcome == "matched" and ex is not None and ex.label == 1 and ex.features == [1, 2, 1]
    assert a.on_click(ev("clicks", 1, 6 * MIN)) == ("duplicate", None)
    assert a.expire(60 * MIN) == ([], 0)  # already labelled: no negative afterwards


def test_window_close_is_one_negative_and_late_click_does_not_flip_it() -> None:
    a = Attribution({}, click_window_ms=30 * MIN)
    a.on_bid(bid(2))
    a.on_impression(ev("impressions", 2, 0))
    assert a.expire(10 * MIN) == ([], 0)
    negatives, _ = a.expire(31 * MIN)
    assert [x.label for x in negatives] == [0]
    assert a.on_click(ev("clicks", 2, 40 * MIN)) == ("late", None)
    assert a.expire(50 * MIN) == ([], 0)


def test_click_before_its_bid_is_matched_when_the_bid_arrives() -> None:
    a = Attribution({}, click_window_ms=30 * MIN)
    assert a.on_click(ev("clicks", 4, 2000)) == ("early", None)
    assert a.on_impression(ev("impressions", 4, 1000)) == ("matched", None)
    outcome, ex = a.on_bid(bid(4, ts=500))
    assert outcome == "matched" and ex is not None and ex.label == 1
    assert a.on_click(ev("clicks", 4, 3000)) == ("duplicate", None)


def test_orphans_and_unserved_bids() -> None:
    a = Attribution({}, click_window_ms=30 * MIN)
    assert a.on_click(ev("clicks", 9, 0)) == ("early", None)
    a.on_bid(bid(3))
    assert a.expire(60 * MIN) == ([], 1)  # the early click never met a bid: one orphan
    assert "b3" not in a.pending and "b9" not in a.pending  # never served: no example, and forgotten


def test_a_click_read_before_its_impression_is_judged_from_the_impression() -> None:
    """Bid at 0, impression at 5 min, click at 31 min: inside the impression's window, whichever is read first."""
    for order in (("impressions", "clicks"), ("clicks", "impressions")):
        a = Attribution({}, click_window_ms=30 * MIN)
        a.on_bid(bid(5))
        got = []
        for kind in order:
            out = (a.on_impression(ev(kind, 5, 5 * MIN)) if kind == "impressions" else a.on_click(ev(kind, 5, 31 * MIN)))
            got.append(out[1])
        labels = [x.label for x in got if x is not None]
        assert labels == [1], order
        assert a.expire(120 * MIN) == ([], 0), order  # labelled once: no negative after


def test_a_bid_whose_exchange_stated_a_late_impression_is_kept_that_long() -> None:
    """imp.exp of an hour (pre-cached video, app interstitials): the impression 40 minutes on still makes an example,
    where a bid stating nothing is forgotten after ten minutes; no statement keeps a bid past four hours."""
    a = Attribution({}, click_window_ms=30 * MIN)
    a.on_bid({**bid(6), "exp": 3600})
    a.on_bid(bid(7))
    a.on_bid({**bid(8), "exp": 86_400})  # a day: held four hours at most
    assert a.expire(39 * MIN) == ([], 0)
    assert "b6" in a.pending and "b7" not in a.pending
    assert a.on_impression(ev("impressions", 6, 40 * MIN)) == ("matched", None)
    outcome, ex = a.on_click(ev("clicks", 6, 41 * MIN))
    assert outcome == "matched" and ex is not None and ex.label == 1 and ex.features == [1, 2, 6]
    a.expire(4 * 60 * MIN - 1)
    assert "b8" in a.pending
    a.expire(4 * 60 * MIN + 1)
    assert "b8" not in a.pending


def test_a_late_stated_bid_read_after_its_early_click_keeps_its_time() -> None:
    a = Attribution({}, click_window_ms=30 * MIN)
    assert a.on_click(ev("clicks", 9, 45 * MIN)) == ("early", None)  # read first: topics interleave
    a.on_bid({**bid(9), "exp": 3600})
    a.expire(20 * MIN)
    assert a.pending["b9"]["f"] == [1, 2, 9]  # kept past ten minutes
    assert a.on_impression(ev("impressions", 9, 44 * MIN))[1] is not None  # the click 1 min after it: a positive


def test_an_impression_read_after_its_click_is_matched_not_a_duplicate() -> None:
    """A click read first stood in for the impression's time, and the impression that followed was counted as
    a duplicate in the attribution outcomes; a second copy of it still is one."""
    a = Attribution({}, click_window_ms=30 * MIN)
    a.on_bid(bid(6))
    outcome, ex = a.on_click(ev("clicks", 6, 2 * MIN))
    assert outcome == "matched" and ex is not None and ex.label == 1
    assert a.on_impression(ev("impressions", 6, 1 * MIN)) == ("matched", None)  # no second example
    assert a.pending["b6"]["imp"] == 1 * MIN and "ci" not in a.pending["b6"]
    assert a.on_impression(ev("impressions", 6, 1 * MIN)) == ("duplicate", None)
    assert a.expire(120 * MIN) == ([], 0)  # labelled once: no negative after
