"""The engine's batching rule: shortest remaining work first, a job's rows together, the
model's batch limit, and the starvation guard; then the order in a real engine."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from worker.generate.batching import job_order, next_batch
from worker.generate.engine import Engine, GenSpec

pytestmark = pytest.mark.timeout(120)


def job(name: str, submitted: float, key: str = "m") -> SimpleNamespace:
    return SimpleNamespace(name=name, submitted=submitted, _key=key)


def rows(j: SimpleNamespace, count: int, steps: int, done: int = 0) -> list[SimpleNamespace]:
    return [SimpleNamespace(job=j, index=i, table=range(steps), k=done) for i in range(count)]


def names(batch) -> list[str]:
    return [f"{r.job.name}{r.index}" for r in batch]


def test_least_remaining_work_first_with_each_jobs_rows_together() -> None:
    long, short, mid = job("L", 0.0), job("S", 1.0), job("M", 2.0)
    rs = rows(long, 2, 40) + rows(short, 3, 10) + rows(mid, 1, 40, done=5)
    # Remaining row-steps: L 80, S 30, M 35.
    assert [j.name for j in job_order(rs, now=3.0, starve_after=30)] == ["S", "M", "L"]
    assert names(next_batch(rs, lambda k: 5, 3.0, 30)) == ["S0", "S1", "S2", "M0", "L0"]
    assert names(next_batch(rs, lambda k: 2, 3.0, 30)) == ["S0", "S1"]


def test_equal_work_goes_in_arrival_order() -> None:
    a, b = job("A", 5.0), job("B", 1.0)
    rs = rows(a, 1, 20) + rows(b, 1, 20)
    assert names(next_batch(rs, lambda k: 1, 6.0, 30)) == ["B0"]


def test_a_job_waiting_past_starve_after_goes_first_oldest_first() -> None:
    old, older, fresh = job("O", 10.0), job("P", 5.0), job("F", 99.0)
    rs = rows(old, 1, 1000) + rows(older, 1, 900) + rows(fresh, 1, 2)
    assert names(next_batch(rs, lambda k: 1, 100.0, 30)) == ["P0"]
    assert names(next_batch(rs, lambda k: 3, 100.0, 30)) == ["P0", "O0", "F0"]
    # Guard off: pure shortest-first.
    assert names(next_batch(rs, lambda k: 1, 100.0, 0)) == ["F0"]


def test_a_batch_holds_one_model_at_its_own_limit() -> None:
    a, b = job("A", 0.0, key="x"), job("B", 1.0, key="y")
    rs = rows(a, 4, 50) + rows(b, 4, 5)
    limits = {"x": 3, "y": 2}
    assert names(next_batch(rs, limits.__getitem__, 2.0, 30)) == ["B0", "B1"]
    assert names(next_batch(rs[:4], limits.__getitem__, 2.0, 30)) == ["A0", "A1", "A2"]
    assert next_batch([], limits.__getitem__, 2.0, 30) == []


def test_in_the_engine_a_short_job_overtakes_a_long_one(ckpts) -> None:
    """Two rows per call: a 5-step job submitted while a 60-step job of 2 images runs gets
    the next calls and finishes first; both still give their seeds' images."""
    engine = Engine(
        "cpu", max_batch=2, threads=1, autocast="none", knee_fraction=0.0, progress_interval=0.0
    ).start()
    try:
        started = threading.Event()
        long = engine.submit(
            GenSpec("long", ckpts["u"], "u", count=2, seed=1, steps=60, sampler="ddim"),
            on_progress=lambda step, total, frac: started.set() if step >= 3 else None,
        )
        assert started.wait(60)
        long_done_then: list[bool] = []

        def short_progress(step: int, total: int, frac: float) -> None:
            if step == total:  # the engine thread, as the short job finishes
                long_done_then.append(long.done.is_set())

        short = engine.submit(
            GenSpec("short", ckpts["u"], "u", count=2, seed=3, steps=5), short_progress
        )
        assert short.wait(60) and long.wait(60)
        assert (long.status, short.status) == ("succeeded", "succeeded")
        assert long_done_then == [False]
        # The short job never shared a call: the rule gave it both rows of every call.
        assert short.network_calls == 5 and short.shared_calls == 0
        assert long.network_calls == 60
    finally:
        engine.stop()


def test_a_job_behind_a_full_call_reports_its_start_when_its_first_row_runs(ckpts) -> None:
    """Two rows per call and two 2-image jobs of equal length: the second waits until the
    first has finished (least remaining work first). ``on_start`` fires once per job, at its
    first network call, and ``started_at`` says when: the end of its wait for the engine."""
    engine = Engine(
        "cpu", max_batch=2, threads=1, autocast="none", knee_fraction=0.0, progress_interval=0.0
    ).start()
    try:
        started = threading.Event()
        first_starts: list[float] = []

        def first_progress(step: int, total: int, frac: float) -> None:
            if step >= 3:
                started.set()

        first = engine.submit(
            GenSpec("first", ckpts["u"], "u", count=2, seed=1, steps=40),
            first_progress,
            on_start=first_starts.append,
        )
        assert started.wait(60)
        second_starts: list[tuple[float, bool]] = []
        submitted = time.time()
        second = engine.submit(
            GenSpec("second", ckpts["u"], "u", count=2, seed=3, steps=40),
            on_start=lambda at: second_starts.append((at, first.done.is_set())),
        )
        assert first.wait(60) and second.wait(60)
        assert (first.status, second.status) == ("succeeded", "succeeded")
        assert first_starts == [first.started_at]
        # The second job's first call came after the first job had finished, once.
        assert len(second_starts) == 1 and second_starts[0][1] is True
        assert second_starts[0][0] == second.started_at and second.started_at > submitted
    finally:
        engine.stop()
