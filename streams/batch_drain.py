"""A fetch's worth of records per handler call, instead of Faust's road for each message.

Faust takes every message through its own path: two tasks in the fetch loop, the conductor, a queue per channel, a
stream, a take-buffer and an acknowledgement each.  That costs a worker about 100 µs of CPU per event, more than the
work the event asks for.  For the topics given a handler (`BatchingApp.batch_handlers`), the consumer's fetch loop
instead hands the records of one fetch to the handler in one call and acknowledges them together once it returns;
every other topic (the campaign config, changelogs during recovery) keeps Faust's own path.

What stays Faust's: the consumer group and its assignment, table recovery, and the commit, which flushes the producer
before it commits acknowledged offsets, so a handler that gives its writes to the producer before returning never has
an offset committed ahead of them.  While a handler runs, its batch counts as an unacknowledged message, so a
rebalance waits for it as it waits for an agent's event.

Two corrections to Faust's bookkeeping of committed offsets keep a partition's commit from falling behind for good
after a rebalance: a commit the broker refused is not recorded as done, and a seek to the committed offsets takes the
broker's word for them, even where it holds none.  Behind both, a check every few seconds compares the broker's
committed offsets with what the handlers processed, and reads again a partition whose commit stays behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from time import monotonic
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING, ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.futures import notify

Handler = Callable[[Sequence[Any]], Awaitable[None]]  # gets aiokafka ConsumerRecords (topic, partition, offset, value)


class InFlight:
    """A batch being handled, standing in Faust's set of unacknowledged messages until its handler returns."""

    __slots__ = ("acked", "refcount", "__weakref__")

    def __init__(self, size: int) -> None:
        self.acked = False
        self.refcount = size  # what Faust's "waiting for tasks" warning prints


FETCH_WAIT_MS = 100  # longest a fetch waits at the broker for data on partitions that have none


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with fetches that the broker holds for at most `FETCH_WAIT_MS`.

    aiokafka keeps one fetch in flight per broker, for all of its partitions.  Once the delivery topics are read to
    their end, the broker holds that fetch until Faust's 1.5 s wait runs out, and a busy partition that was drained
    in the meantime (the examples the worker writes to itself) waits for it: one fetch's worth (1 MiB) of examples
    per 1.5 s is all the learner would get.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_WAIT_MS  # read when the consumer starts and builds its fetcher
        return consumer


STUCK_AFTER_S = 15.0  # a partition whose commit stays behind what was processed this long is read again
STUCK_CHECK_EVERY_S = 5.0  # each check asks the broker for the committed offsets of the partitions processed


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a fetch loop that gives handled topics their records a fetch at a time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holes: dict[TP, tuple[int, float]] = {}  # partition -> (broker's committed offset, since when)
        self._processed: dict[TP, int] = {}  # partition -> the last offset a handler processed
        self._next_stuck_check = monotonic() + STUCK_CHECK_EVERY_S

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        handlers: dict[str, Handler] = getattr(self.app, "batch_handlers", {})
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if monotonic() >= self._next_stuck_check:
                    await self._check_commits(handlers)
                    self._next_stuck_check = monotonic() + STUCK_CHECK_EVERY_S
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)  # a fetch that returns at once must still let the loop breathe
                if records and not self.should_stop:
                    if not self.flow_active:  # fetched while a rebalance stopped the flow: read again later
                        await self._seek_back()
                    else:
                        await self._dispatch(records, active, handlers)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _check_commits(self, handled: Mapping[str, Any]) -> None:
        """Read again any handled partition whose commit has stopped behind what was processed (see `_stuck`)."""
        if not self.flow_active or self.app.rebalancing:
            self._holes.clear()
            return
        try:
            assigned = self.assignment()
            candidates = [tp for tp in list(self._processed) if tp.topic in handled and tp in assigned]
            broker = await self._broker_committed(candidates)
        except Exception as e:  # the broker away, or a rebalance under way: the next check looks again
            self.log.info("committed offsets not checked (%r)", e)
            return
        await self._read_again(self._stuck(monotonic(), broker))

    async def _broker_committed(self, tps: list[TP]) -> dict[TP, int | None]:
        """What the broker holds as this group's committed offset of each of `tps` (None: nothing committed)."""
        consumer = self._thread._ensure_consumer()
        return {tp: await self._thread.call_thread(consumer.committed, tp) for tp in tps}

    def _stuck(self, now: float, broker: Mapping[TP, int | None]) -> dict[TP, int]:
        """The partitions whose committed offset on the broker has stayed at or below the last record processed
        for `STUCK_AFTER_S`, with that committed offset.

        Faust commits a partition up to the first offset not acknowledged.  If the acknowledgements that would move
        the commit go missing (records read past the committed offset before a seek and skipped after it, or
        offsets the worker takes as committed that the broker never took), the commit stays there for good:
        consumer lag that never clears, and all of it read again at the next restart.  In normal running a
        processed record is committed within a second, so a commit that lasts behind the records processed is
        repaired by reading the partition again from it.
        """
        stuck: dict[TP, int] = {}
        holes: dict[TP, tuple[int, float]] = {}
        for tp, committed in broker.items():
            processed = self._processed.get(tp)
            at = committed or 0
            if processed is None or processed < at:
                continue
            seen_at, since = self._holes.get(tp, (at, now))
            since = since if seen_at == at else now
            holes[tp] = (at, since)
            if now - since >= STUCK_AFTER_S:
                stuck[tp] = at
        self._holes = {tp: hole for tp, hole in holes.items() if tp not in stuck}
        return stuck

    async def _read_again(self, stuck: Mapping[TP, int]) -> None:
        """Forget what was acknowledged on `stuck` partitions and read them again from their committed offsets.

        Read again, their events are counted once all the same (the ledger and attribution know the event ids, and
        the learner the examples' offsets), and acknowledged in order, so the commit moves on.
        """
        if not stuck:
            return
        for tp, committed in stuck.items():
            acked = self._acked.get(tp)
            self.log.warning("commit of %s held at offset %d though offset %s was processed (committed here: %s, "
                             "acknowledged: %s); reading it again from %d", tp, committed, self._processed.get(tp),
                             self._committed_offset.get(tp), f"{min(acked)}..{max(acked)}" if acked else "none",
                             committed)
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)
            self._processed.pop(tp, None)
            self._committed_offset[tp] = committed or None
        try:
            await self.seek_wait(dict(stuck))
        except Exception as e:  # a rebalance took the partition meanwhile: its next owner reads it from there
            self.log.warning("seek to read %d partitions again failed (a rebalance seeks them anyway): %r", len(stuck), e)

    async def perform_seek(self) -> None:
        """Seek every assigned partition to its committed offset, and take the broker's word for what is committed.

        Faust's own seek leaves the committed offset it remembers for a partition the broker holds none for (never
        committed in this group), so a value from an earlier assignment would survive it and hold back every
        acknowledgement below it.
        """
        found = await self.seek_to_committed()
        for tp, offset in found.items():
            tp = ensure_TP(tp)
            self._read_offset[tp] = offset if offset is not None and offset >= 0 else None
            self._committed_offset[tp] = offset if offset is not None and offset > 0 else None

    async def _seek_back(self) -> None:
        """Seek to the committed offsets, as Faust's own fetch loop does when the flow is stopped.

        The assignment can change again between reading it and seeking (a second rebalance on the heels of the
        first): the seek then fails for a partition no longer ours.  That partition is someone else's to read, and
        the recovery after the rebalance seeks every partition it hands this worker, so the failure is logged and
        the loop goes on; letting it escape would kill the fetcher and with it the worker.
        """
        try:
            await self.perform_seek()
        except Exception as e:  # aiokafka's IllegalStateError, or a broker error mid-rebalance
            self.log.warning("seek back to committed offsets failed mid-rebalance (the next assignment seeks again): %r",
                             e)

    async def _dispatch(self, records: Mapping[TP, list[Any]], active: set[TP] | None,
                        handlers: dict[str, Handler]) -> None:
        generation = self.app.consumer_generation_id
        batches: dict[str, list[Any]] = {}
        offsets: dict[TP, list[int]] = {}
        others: list[tuple[TP, list[Any]]] = []
        for tp, recs in records.items():
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            if tp.topic not in handlers:
                others.append((tp, recs))
                continue
            fresh = await self._fresh(tp, recs)
            if fresh:
                batches.setdefault(tp.topic, []).extend(fresh)
                offsets[tp] = [r.offset for r in fresh]
        for topic, batch in batches.items():
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return  # a rebalance began: these are read again from the committed offsets
            await self._handle(handlers[topic], batch, {tp: o for tp, o in offsets.items() if tp.topic == topic})
        for tp, recs in others:  # Faust's own path, one message at a time
            for record in recs:
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    return
                if await self._fresh(tp, [record]):
                    await self.wait_first(self.callback(self._to_message(tp, record)), self.suspend_flow.wait())
                    self._read_offset[tp] = record.offset
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    async def _fresh(self, tp: TP, recs: list[Any]) -> list[Any]:
        """The records not read before (a seek can fetch some again); offset gaps are recorded as Faust does."""
        read = self._read_offset[tp]
        if read is not None:
            recs = [r for r in recs if r.offset >= read]
        if not recs:
            return recs
        if self.app.topics.acks_enabled_for(tp.topic):
            previous = read
            for r in recs:
                if previous and r.offset - previous > 1:  # compaction or transaction markers left a hole
                    await self._add_gap(tp, previous + 1, r.offset)
                previous = r.offset
        return recs

    async def _handle(self, handler: Handler, batch: list[Any], offsets: dict[TP, list[int]]) -> None:
        marker = InFlight(len(batch))
        self._unacked_messages.add(marker)  # type: ignore[arg-type]  # Faust only counts the set's members
        try:
            await handler(batch)
            now = monotonic()
            inbound = self.app.monitor.stream_inbound_time
            processed = self._processed
            for tp, offs in offsets.items():
                self._ack_offsets(tp, offs)
                self._read_offset[tp] = offs[-1]
                processed[tp] = offs[-1]
                inbound[tp] = now  # Faust's livelock check: this partition's events are being processed
            marker.acked = True
        finally:
            self._unacked_messages.discard(marker)  # type: ignore[arg-type]
            notify(self._waiting_for_ack)

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Faust's commit, except that offsets the broker did not take are not remembered as committed.

        Faust records the offsets as committed even when the commit failed because the group rebalanced meanwhile.
        A partition that comes back to this worker with no offset committed on the broker then keeps that record:
        the records below it, read again, are never acknowledged, and once nothing comes after them its commit
        stays behind for good (consumer lag that never clears, and all of it read again at each restart).  Here
        only a commit the broker took moves the record; the rebalance that follows a failed one seeks every
        partition to what the broker holds, and its records are read, acknowledged and committed again.
        """
        if self.in_transaction:
            return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        assignment = self.assignment()
        committable = {tp: offset for tp, offset in offsets.items() if tp in assignment}
        if not committable:
            return False
        await self.app.producer.flush()  # the handlers' writes reach the broker before the offsets that cover them
        if not await self._commit(committable):
            self.log.info("commit of %d partitions refused (the group rebalanced meanwhile); they are read again from "
                          "the offsets the broker holds", len(committable))
            return False
        self.app.tables.on_commit(committable)
        self._committed_offset.update(committable)
        self.app.monitor.on_tp_commit(committable)
        return True

    def _ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        """`Consumer.ack` for a batch of offsets of one partition: the next commit may include them."""
        committed = self._committed_offset[tp]
        index = self._acked_index[tp]
        new = [o for o in offsets if (committed is None or o >= committed) and o not in index]
        index.update(new)
        self._acked[tp].extend(new)
        self._n_acked += len(new)


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer


class BatchingApp(faust.App):
    """A Faust app whose consumer hands the topics in `batch_handlers` to their handler a fetch at a time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_handlers: dict[str, Handler] = {}

    def batch_agent(self, topic: faust.TopicT) -> Callable[[Handler], Handler]:
        """Subscribe to `topic` (every name in it) and give its records to the decorated coroutine, a fetch at a time."""

        def register(handler: Handler) -> Handler:
            self.topics.add(topic)
            for name in topic.topics:
                self.batch_handlers[name] = handler
            return handler

        return register

    def _new_transport(self) -> BatchingTransport:
        return BatchingTransport(self.conf.broker_consumer, self)
