"""Jobs that outlive a tab (tuning.jobs): followers, the one training slot, stop after the last follower left."""

from __future__ import annotations

import threading
import time

import pytest

from tuning.jobs import Job, Jobs


def counting(n: int, pause: float = 0.01, started: list | None = None):
    """An event source yielding 1..n, checking its stop flag between events as train() does."""
    def events(stop: threading.Event):
        if started is not None:
            started.append(time.perf_counter())
        for i in range(1, n + 1):
            if stop.is_set():
                return
            time.sleep(pause)
            yield i
    return events


def test_a_job_keeps_every_event_for_any_follower():
    seen = []
    job = Job("a", "count", counting(5), seen.append).start()
    assert job.join(timeout=10)
    assert job.events == [1, 2, 3, 4, 5] == seen and job.finished and job.error is None
    assert job.wait(0, timeout=0.1) == 5  # a late follower (a reloaded tab) gets them all at once


def test_an_error_is_kept_for_the_followers_to_word():
    def broken(stop):
        yield 1
        raise ValueError("the loss became nan")

    job = Job("a", "broken", broken).start()
    assert job.join(timeout=10)
    assert job.events == [1] and isinstance(job.error, ValueError) and job.finished


def test_one_owner_runs_one_job_at_a_time():
    jobs = Jobs()
    jobs.start(Job("a", "a training", counting(1000)))
    with pytest.raises(RuntimeError, match="this browser is already running a training"):
        jobs.start(Job("a", "another", counting(1)))
    jobs.start(Job("b", "b's", counting(1)))  # another browser is fine
    assert jobs.stop("a") is not None and jobs.running("a").join(timeout=10)
    assert jobs.running("a") is None and jobs.stop("a") is None


def test_finished_jobs_are_let_go_when_another_starts():
    jobs = Jobs()
    done = [jobs.start(Job(owner, "quick", counting(2))) for owner in ("a", "b", "c")]
    assert all(job.join(timeout=10) for job in done)
    latest = jobs.start(Job("d", "d's", counting(1000)))
    assert list(jobs._jobs.values()) == [latest]  # a, b and c never asked again: their events are not held forever
    assert jobs.stop("d") is latest and latest.join(timeout=10)


def test_the_slot_lets_one_training_run_at_a_time_and_says_the_second_waits():
    jobs, waited, started = Jobs(), [], []
    first = jobs.start(Job("a", "first", counting(20, 0.02, started), slot=jobs.slot))
    time.sleep(0.1)
    second = jobs.start(Job("b", "second", counting(3, 0.0, started), slot=jobs.slot, on_wait=lambda: waited.append(1)))
    assert first.join(timeout=10) and second.join(timeout=10)
    assert waited == [1] and second.events == [1, 2, 3]
    assert started[1] >= started[0] + 20 * 0.02 * 0.9  # the second began only after the first ended


def test_visitors_get_the_slot_in_the_order_they_asked_for_it():
    jobs, order = Jobs(), []

    def noting(name):
        def events(stop):
            order.append(name)
            time.sleep(0.03)
            yield name
        return events

    first = jobs.start(Job("first", "first", counting(100, 0.03), slot=jobs.slot))
    waiting = []
    for n in range(6):
        waiting.append(jobs.start(Job(f"v{n}", f"v{n}", noting(f"v{n}"), slot=jobs.slot)))
        deadline = time.monotonic() + 5
        while jobs.slot.waiting < n + 1 and time.monotonic() < deadline:  # each asks after the one before
            time.sleep(0.005)
    assert jobs.slot.waiting == 6
    first.stop.set()
    assert first.join(timeout=10) and all(job.join(timeout=10) for job in waiting)
    assert order == [f"v{n}" for n in range(6)]


def test_a_visitor_who_stops_waiting_leaves_the_line():
    jobs, started = Jobs(), []
    jobs.start(Job("a", "first", counting(1000, 0.01), slot=jobs.slot))
    quitter = jobs.start(Job("b", "quitter", counting(3, 0.0, started), slot=jobs.slot))
    time.sleep(0.05)
    after = jobs.start(Job("c", "after", counting(2, 0.0, started), slot=jobs.slot))
    time.sleep(0.05)
    quitter.stop.set()
    assert quitter.join(timeout=5)
    jobs.stop("a")
    assert after.join(timeout=5) and after.events == [1, 2] and quitter.events == []
    assert not jobs.slot.wanted


def test_a_job_stopped_while_it_waits_for_the_slot_never_starts():
    jobs, started = Jobs(), []
    jobs.start(Job("a", "first", counting(1000, 0.01), slot=jobs.slot))
    second = jobs.start(Job("b", "second", counting(3, 0.0, started), slot=jobs.slot))
    time.sleep(0.1)
    second.stop.set()
    assert second.join(timeout=5) and second.events == [] and started == []
    jobs.stop("a")


def test_a_job_stops_after_its_last_follower_left_for_the_grace():
    jobs = Jobs(grace=0.4)
    job = jobs.start(Job("a", "long", counting(10_000, 0.005)))
    jobs.follow(job, "tab-1")
    jobs.follow(job, "tab-2")
    jobs.leave("tab-1")
    time.sleep(0.4)
    assert not job.stop.is_set()  # tab-2 still follows
    left = time.monotonic()
    jobs.leave("tab-2")
    time.sleep(0.2)
    assert not job.stop.is_set() and not job.finished  # half the grace: it runs on (a reload may re-attach)
    assert job.stop.wait(timeout=5) and job.join(timeout=5)  # then it stops
    assert time.monotonic() - left > 0.35  # not stopped early (a timer may wake a hair early)


def test_a_reload_within_the_grace_keeps_the_job_running():
    jobs = Jobs(grace=0.3)
    job = jobs.start(Job("a", "long", counting(10_000, 0.005)))
    jobs.follow(job, "old-tab")
    jobs.close("old-tab")  # the page unloads …
    jobs.follow(job, "new-tab")  # … and the reloaded page re-attaches at once
    time.sleep(0.6)
    assert not job.stop.is_set() and not job.finished
    jobs.stop("a")
    assert job.join(timeout=5)


def test_each_owner_keeps_its_state_and_the_least_recent_goes_first():
    jobs = Jobs(max_owners=2)
    a = jobs.state("a", dict)
    assert jobs.state("a", dict) is a
    jobs.state("b", dict)
    jobs.state("a", dict)  # a is now the most recent
    jobs.state("c", dict)
    assert jobs.state("a", dict) is a and jobs.state("b", lambda: "new") == "new"


def test_an_owner_whose_run_still_goes_is_never_the_one_let_go():
    jobs = Jobs(max_owners=2)
    a = jobs.state("a", dict)
    running = jobs.start(Job("a", "a long training", counting(1000)))
    jobs.state("b", dict)
    jobs.state("c", dict)  # a is the least recent, but training: b goes instead
    assert jobs.state("a", dict) is a and jobs.state("b", lambda: "new") == "new"
    assert jobs.stop("a") is running and running.join(timeout=10)


def test_a_sessions_folder_holds_its_last_download_and_goes_with_it():
    jobs = Jobs()
    first = jobs.folder("s")
    second = jobs.folder("s")
    assert not first.exists() and second.is_dir()
    sweep = jobs.folder("s", "sweep")  # a running sweep's table: a download must not remove it
    third = jobs.folder("s")
    assert sweep.is_dir() and not second.exists() and third.is_dir()
    jobs.close("s")
    assert not third.exists() and not sweep.exists()


def test_a_background_job_hands_the_slot_to_a_visitor_between_two_steps_and_resumes_after():
    jobs, log = Jobs(), []

    def stamped(name, n, pause):
        def events(stop):
            for i in range(n):
                if stop.is_set():
                    return
                log.append((name, "start"))
                time.sleep(pause)
                log.append((name, "end"))
                yield i
        return events

    background = jobs.start(Job("reference", "references", stamped("bg", 40, 0.01), slot=jobs.slot, background=True))
    time.sleep(0.1)
    told = []  # what a waiting visitor reads: who holds the slot
    visitor = jobs.start(Job("a", "visitor", stamped("visitor", 5, 0.02), slot=jobs.slot,
                             on_wait=lambda: told.append(jobs.slot.held_in_background)))
    assert visitor.join(timeout=10) and background.join(timeout=10)
    assert told == [True] and not jobs.slot.held_in_background
    assert len(background.events) == 40 and len(visitor.events) == 5  # both finished, nothing lost
    first, last = log.index(("visitor", "start")), len(log) - 1 - log[::-1].index(("visitor", "end"))
    assert all(name == "visitor" for name, _ in log[first:last + 1])  # no background step ran meanwhile
    assert ("bg", "start") in log[:first] and ("bg", "start") in log[last:]  # it ran before and after


def test_a_background_job_waits_while_visitors_train():
    jobs = Jobs()
    visitor = jobs.start(Job("a", "visitor", counting(20, 0.01), slot=jobs.slot))
    time.sleep(0.05)
    waited = []
    background = Job("reference", "references", counting(3, 0.0), slot=jobs.slot, background=True,
                     on_wait=lambda: waited.append((len(visitor.events), background.paused)))
    jobs.start(background)
    assert visitor.join(timeout=10) and background.join(timeout=10)
    assert waited and waited[0][0] < 20 and background.events == [1, 2, 3]
    assert waited[0][1] and not background.paused  # paused while it waited for its first turn, not after


def test_a_job_runs_in_the_context_of_the_request_that_started_it():
    # ZeroGPU's spaces.GPU reads the visitor's request from a context variable (Gradio's
    # LocalContext.request) to charge the visitor's quota: the job's thread must see it.
    import contextvars

    request = contextvars.ContextVar("request", default=None)

    def events(stop):
        yield request.get()

    token = request.set("visitor-1")
    try:
        job = Job("a", "ctx", events)
    finally:
        request.reset(token)
    job.start()
    assert job.join(timeout=10) and job.events == ["visitor-1"]


def test_a_finished_job_hands_freed_memory_back(monkeypatch):
    """glibc keeps what each job's thread freed unless asked; the soak's server grew by a gigabyte without it."""
    from tuning import jobs

    trims = []
    monkeypatch.setattr(jobs, "release_freed_memory", lambda: trims.append(1))
    job = jobs.Job("owner", "a job", lambda stop: iter([1, 2]))
    job.start()
    assert job.join(10) and trims == [1]
    failing = jobs.Job("owner", "a failing job", lambda stop: (_ for _ in ()).throw(RuntimeError("x")))
    failing.start()
    assert failing.join(10) and trims == [1, 1]


def test_the_memory_calls_do_nothing_harmful_where_glibc_is_missing(monkeypatch):
    import ctypes

    from tuning import jobs

    def no_libc(name):
        raise OSError(f"{name}: not found")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    jobs.release_freed_memory()
    jobs.limit_memory_arenas()
