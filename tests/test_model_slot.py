"""The one model slot: one holder at a time, first come first served, places in line told,
cancel while waiting, a cap on the line, re-entrant for its holder."""

import threading
import time

import pytest

from anystory.model_slot import ModelSlot, QueueFull, TurnCancelled


def wait_until(condition, timeout=10.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_turns_are_first_come_first_served_and_each_waiter_hears_its_place():
    slot, order, told = ModelSlot(poll_s=0.01), [], {}
    release = threading.Event()

    def holder():
        with slot.turn():
            order.append("holder")
            release.wait(10)

    def waiter(name):
        with slot.turn(on_wait=lambda ahead: told.setdefault(name, []).append(ahead)):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    wait_until(lambda: order == ["holder"])
    threads = []
    for n, name in enumerate(["a", "b", "c"]):
        threads.append(threading.Thread(target=waiter, args=(name,)))
        threads[-1].start()
        wait_until(lambda n=n: slot.waiting == n + 1)
    release.set()
    for t in [first, *threads]:
        t.join(10)
    assert order == ["holder", "a", "b", "c"]
    assert told["a"][0] == 1 and told["b"][0] == 2 and told["c"][0] == 3  # the holder, then those before
    assert told["c"] == sorted(told["c"], reverse=True)  # the place only ever comes closer


def test_a_waiter_can_cancel_and_the_line_moves_on():
    slot, release, cancel = ModelSlot(poll_s=0.01), threading.Event(), threading.Event()
    results = []

    def hold():
        with slot.turn():
            release.wait(10)

    def wait_and_cancel():
        try:
            with slot.turn(cancel=cancel):
                results.append("ran")
        except TurnCancelled:
            results.append("cancelled")

    holder = threading.Thread(target=hold)
    holder.start()
    wait_until(lambda: slot._owner is not None)
    waiter = threading.Thread(target=wait_and_cancel)
    waiter.start()
    wait_until(lambda: slot.waiting == 1)
    cancel.set()
    waiter.join(10)
    assert results == ["cancelled"] and slot.waiting == 0
    release.set()
    holder.join(10)
    with slot.turn():  # free again
        pass


def test_a_full_line_refuses_at_once_and_the_holder_reenters():
    slot, release = ModelSlot(max_waiting=1, poll_s=0.01), threading.Event()

    def hold():
        with slot.turn():
            with slot.turn():  # re-entrant: an encode inside a generation
                release.wait(10)

    threads = [threading.Thread(target=hold)]
    threads[0].start()
    wait_until(lambda: slot._owner is not None)
    threads.append(threading.Thread(target=lambda: slot.turn().__enter__()))
    threads[1].start()
    wait_until(lambda: slot.waiting == 1)
    with pytest.raises(QueueFull, match="the queue is full: 1 generations are waiting"):
        with slot.turn():
            pass
    release.set()
    for t in threads:
        t.join(10)
