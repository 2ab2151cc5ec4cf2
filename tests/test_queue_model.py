"""A hypothesis state machine drives a durable queue through publish,
consume, ack, nack, consumer close and router restart, against a model
that says exactly what must be waiting, in which order, and how often
each message has been delivered."""

import collections
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ringcast


class DurableQueueMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="ringcast-model-")
        self.next_id = 0
        self.waiting = collections.deque()   # model: ids in delivery order
        self.held = {}                       # id -> Message held by the consumer
        self.deliveries = collections.Counter()
        self.settled = set()
        self.open()

    def open(self):
        self.router = ringcast.Router(data_dir=self.dir, fsync="never")
        self.queue = self.router.declare_queue("q", durable=True, dead_letter="q.dlq")
        self.consumer = self.router.consume("q")

    @rule(n=st.integers(1, 3))
    def send(self, n):
        for _ in range(n):
            self.router.send("q", b"%d" % self.next_id)
            self.waiting.append(self.next_id)
            self.next_id += 1

    @rule()
    def receive(self):
        try:
            msg = self.consumer.recv_nowait()
        except ringcast.WouldBlock:
            assert not self.waiting
            return
        ident = int(msg.payload)
        assert ident == self.waiting.popleft()
        self.deliveries[ident] += 1
        assert msg.delivery_count == self.deliveries[ident]
        assert msg.redelivered == (self.deliveries[ident] > 1)
        self.held[ident] = msg

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def ack(self, data):
        ident = data.draw(st.sampled_from(sorted(self.held)))
        self.held.pop(ident).ack()
        self.settled.add(ident)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), requeue=st.booleans())
    def nack(self, data, requeue):
        ident = data.draw(st.sampled_from(sorted(self.held)))
        self.held.pop(ident).nack(requeue=requeue)
        if requeue:
            self.waiting.appendleft(ident)
        else:
            self.settled.add(ident)

    @rule()
    def close_consumer(self):
        self.consumer.close()
        for ident in sorted(self.held, reverse=True):  # returned in queue order, at the head
            self.waiting.appendleft(ident)
        self.held.clear()
        self.consumer = self.router.consume("q")

    @rule()
    def restart(self):
        self.router.close()
        self.waiting = collections.deque(sorted(set(self.waiting) | set(self.held)))
        self.held.clear()
        self.open()

    @invariant()
    def depth_matches(self):
        assert self.queue.depth == len(self.waiting)
        assert self.queue.unacked == len(self.held)

    def teardown(self):
        self.router.close()
        shutil.rmtree(self.dir, ignore_errors=True)


DurableQueueMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                                 deadline=None)
test_durable_queue_against_model = DurableQueueMachine.TestCase


def test_regression_close_returns_messages_in_queue_order_not_delivery_order():
    """Found by the machine above: 0 delivered, 1 delivered, 0 nacked and
    delivered again, consumer closed: 0 must come back before 1."""
    state = DurableQueueMachine()
    try:
        state.send(n=1)
        state.receive()
        state.send(n=1)
        state.receive()
        held = state.held.pop(0)
        held.nack(requeue=True)
        state.waiting.appendleft(0)
        state.receive()
        state.close_consumer()
        state.receive()  # asserts the model's order: 0 first
        state.depth_matches()
    finally:
        state.teardown()
