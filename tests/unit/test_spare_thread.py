"""The spare thread: it takes a caller's side part when free, never queues one behind
another caller's, and hands a failure back to the caller."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from catalens.search.spare_thread import SpareThread

pytestmark = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="the spare thread is only offered work with 2+ cores"
)


def test_a_free_spare_thread_runs_the_side_part_beside_the_callers_own() -> None:
    spare = SpareThread()
    started = threading.Event()

    def side() -> int:
        started.set()
        return threading.get_ident()

    def own() -> bool:
        return started.wait(10)  # only another thread can set it while this one waits

    there, waited = spare.beside(side, own)
    assert waited
    assert there != threading.get_ident()
    assert spare.lent == 1


def test_a_busy_spare_thread_leaves_both_parts_to_the_caller() -> None:
    spare = SpareThread()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(10)

    first = threading.Thread(target=spare.beside, args=(hold, lambda: release.wait(10)))
    first.start()
    try:
        assert holding.wait(10)
        here = threading.get_ident()
        assert spare.beside(threading.get_ident, threading.get_ident) == (here, here)
    finally:
        release.set()
        first.join(10)
    assert spare.lent == 1
    # Free again once the first caller is done.
    started = threading.Event()
    there, _ = spare.beside(
        lambda: started.set() or threading.get_ident(), lambda: started.wait(10)
    )
    assert there != threading.get_ident()


def test_failures_reach_the_caller() -> None:
    spare = SpareThread()

    def broken() -> None:
        raise ValueError("side")

    with pytest.raises(ValueError, match="side"):
        spare.beside(broken, lambda: None)
    with pytest.raises(KeyError):
        spare.beside(lambda: None, lambda: {}["own"])
    assert spare.beside(lambda: 1, lambda: 2) == (1, 2)  # still usable


def _in_child(spare: SpareThread, answers: multiprocessing.Queue[object]) -> None:
    started = threading.Event()
    there, _ = spare.beside(
        lambda: started.set() or threading.get_ident(), lambda: started.wait(10)
    )
    answers.put(there != threading.get_ident())


def test_a_forked_child_gets_a_spare_thread_of_its_own() -> None:
    spare = SpareThread()
    assert spare.beside(lambda: 1, lambda: 2) == (1, 2)  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    answers: multiprocessing.Queue[object] = context.Queue()
    child = context.Process(target=_in_child, args=(spare, answers))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert answers.get(timeout=5) is True
