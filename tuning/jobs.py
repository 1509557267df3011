"""Long jobs that outlive the browser tab that started them, and the one training slot.

A `Job` runs an event generator (a training, a sweep) in its own thread and keeps every
event it yielded, so any number of followers can read them: the tab that pressed Train,
and after a reload the same browser's new tab, which replays the events and goes on from
there. `Jobs` is the process's registry: at most one running job per owner (a browser), one
training at a time on the machine (the slot: two trainings on 2 cores each run at half
speed), followers per job, and a stop when the last follower has been gone for `grace`
seconds (a closed tab frees the slot; a reload re-attaches within the grace).

What it does not do: know about Gradio, words or charts. Events are handed to `on_event`
(the app folds them into a `progress.RunView`) in the job's thread, under the job's lock.
"""

from __future__ import annotations

import contextvars
import ctypes
import shutil
import tempfile
import threading
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any, Callable, Iterable


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_memory_arenas(arenas: int = 2) -> None:
    """At most `arenas` glibc malloc arenas in this process: a server's many threads otherwise each keep their own."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc
        pass


def release_freed_memory() -> None:
    """Hand the memory a finished job freed back to the system.

    glibc keeps freed blocks in its per-thread arenas, and each job runs in a thread of its own:
    a server's memory grew by a gigabyte over a soak of short trainings (docs/testing.md "Soak").
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


class Slot:
    """One training at a time on this machine. Visitors wait their turn, first come first served; a
    background job (the reference adapters) takes the slot only while no visitor waits, and gives it
    back between two of its steps as soon as one does (`Job(background=True)`).
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = False
        self._line: deque[object] = deque()  # the waiting visitors' tickets, the longest waiting first
        self._background_holds = False

    def acquire(self, stop: threading.Event, background: bool = False,
                on_wait: Callable[[], None] = lambda: None) -> bool:
        """Wait for the slot (calling `on_wait` once if it must); False when `stop` is set first.

        Visitors get it in the order they asked: a `notify_all` wakes every waiter, and without
        the line whichever thread ran first took the slot, so a visitor could wait through
        several trainings of visitors who came after.
        """
        ticket = object()
        with self._cond:
            if not background:
                self._line.append(ticket)
            try:
                told = False
                while self._busy or (self._line[0] is not ticket if not background else bool(self._line)):
                    if stop.is_set():
                        return False
                    if not told:
                        on_wait()
                        told = True
                    self._cond.wait(timeout=0.5)
                self._busy, self._background_holds = True, background
                return True
            finally:
                if not background:
                    self._line.remove(ticket)
                    self._cond.notify_all()  # the next in line may go once the slot is free

    def release(self) -> None:
        with self._cond:
            self._busy = self._background_holds = False
            self._cond.notify_all()

    @property
    def held_in_background(self) -> bool:
        """The slot's holder is a background job: a waiting visitor gets it after that job's current step."""
        return self._busy and self._background_holds

    @property
    def wanted(self) -> bool:
        """A visitor is waiting for the slot."""
        return bool(self._line)

    @property
    def waiting(self) -> int:
        """How many visitors wait for the slot."""
        return len(self._line)


class Job:
    """`events(stop)` run in a daemon thread once `start()` is called; `wait()` for news, `stop` to end it."""

    def __init__(self, owner: str, label: str, events: Callable[[threading.Event], Iterable[Any]],
                 on_event: Callable[[Any], None] = lambda e: None, slot: Slot | None = None,
                 on_wait: Callable[[], None] = lambda: None, view: Any = None, background: bool = False):
        self.owner, self.label = owner, label
        self.background = background  # yields the slot to visitors between its events
        self.paused = False  # a background job waiting for visitors' trainings to end
        self.view = view  # what followers read under `lock` (the app's progress.RunView)
        self.stop = threading.Event()
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self.finished = False
        self.followers: set[str] = set()
        self.lock = threading.Condition()
        self._make, self._on_event, self._slot, self._on_wait = events, on_event, slot, on_wait
        # The thread runs in a copy of the creator's context: a job started by a request still sees
        # that request's context variables (ZeroGPU's spaces.GPU reads the visitor's request there,
        # to charge the visitor's quota rather than nobody's).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), daemon=True, name=f"job-{label}")

    def start(self) -> "Job":
        self._thread.start()
        return self

    def _run(self) -> None:
        held = False
        try:
            if self._slot is not None:
                held = self._slot.acquire(self.stop, self.background, self._waiting)
                self.paused = False
                if not held:
                    return
            for event in self._make(self.stop):
                with self.lock:
                    self.events.append(event)
                    self._on_event(event)
                    self.lock.notify_all()
                if held and self.background and self._slot.wanted:
                    # A visitor waits: hand over between two steps; the generator simply waits here.
                    self._slot.release()
                    held = False
                    self.paused = True
                    held = self._slot.acquire(self.stop, background=True)
                    self.paused = False
                    if not held:
                        return
        except BaseException as e:  # handed to the followers, who word it
            self.error = e
        finally:
            if held:
                self._slot.release()
            release_freed_memory()
            with self.lock:
                self.finished = True
                self.lock.notify_all()

    def _waiting(self) -> None:
        with self.lock:
            self.paused = self.background  # a background job that has not started waits for visitors too
            self._on_wait()  # "waiting for the training slot"
            self.lock.notify_all()

    def wait(self, seen: int, timeout: float = 1.0) -> int:
        """Block until there are more than `seen` events, the job ended, or `timeout` passed; the event count."""
        with self.lock:
            self.lock.wait_for(lambda: len(self.events) > seen or self.finished, timeout=timeout)
            return len(self.events)

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Jobs:
    """The process's running jobs (one per owner), followers, the training slot and per-session folders."""

    def __init__(self, grace: float = 10.0, max_owners: int = 256):
        self.grace = grace  # seconds a job runs on with nobody following (a reload re-attaches meanwhile)
        self.slot = Slot()  # one training at a time
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._folders: dict[tuple[str, str], str] = {}  # (session, purpose) -> its folder
        self._owners: OrderedDict[str, Any] = OrderedDict()  # owner -> its state, least recently used first
        self._max_owners = max_owners

    # --- jobs
    def start(self, job: Job) -> Job:
        """Register and start `job`; RuntimeError when its owner already runs one."""
        with self._lock:
            current = self._jobs.get(job.owner)
            if current is not None and not current.finished:
                raise RuntimeError(f"this browser is already running {current.label}")
            for owner in [o for o, j in self._jobs.items() if j.finished]:  # their events (a whole prompt) go too
                del self._jobs[owner]
            self._jobs[job.owner] = job
        return job.start()

    def _running_locked(self, owner: str) -> bool:
        job = self._jobs.get(owner)
        return job is not None and not job.finished

    def running(self, owner: str | None) -> Job | None:
        """The owner's job while it runs (a finished one is forgotten)."""
        with self._lock:
            job = self._jobs.get(owner) if owner else None
            if job is not None and job.finished:
                del self._jobs[owner]
                return None
            return job

    def stop(self, owner: str | None) -> Job | None:
        """Ask the owner's running job to stop after its current step; the job, or None if none runs."""
        job = self.running(owner)
        if job is not None:
            job.stop.set()
        return job

    def follow(self, job: Job, session: str) -> None:
        with job.lock:
            job.followers.add(session)

    def leave(self, session: str) -> None:
        """`session` is gone (its tab closed): a job left with no follower stops after `grace` seconds."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            with job.lock:
                if session not in job.followers:
                    continue
                job.followers.discard(session)
                orphaned = not job.followers
            if orphaned:
                timer = threading.Timer(self.grace, self._stop_if_orphaned, args=(job,))
                timer.daemon = True
                timer.start()

    @staticmethod
    def _stop_if_orphaned(job: Job) -> None:
        with job.lock:
            if not job.followers:
                job.stop.set()

    # --- what each owner (browser) keeps between reloads
    def state(self, owner: str, make: Callable[[], Any]) -> Any:
        """The owner's state, made with `make()` the first time; the least recently used owner goes past `max_owners`."""
        with self._lock:
            if owner not in self._owners:
                self._owners[owner] = make()
                while len(self._owners) > self._max_owners:  # never one whose run still goes: its reload finds it
                    idle = next((o for o in self._owners if not self._running_locked(o) and o != owner), None)
                    if idle is None:
                        break
                    del self._owners[idle]
            self._owners.move_to_end(owner)
            return self._owners[owner]

    # --- per-session folders for downloads
    def folder(self, session: str, purpose: str = "download") -> Path:
        """A fresh folder for this session's next file of `purpose`; the previous one of that purpose is removed.

        Gradio copies a returned file into its own cache to serve it, so ours holds the last file
        only. Purposes do not share: a download does not remove the file a running sweep still shows.
        """
        with self._lock:
            old = self._folders.pop((session, purpose), None)
            self._folders[(session, purpose)] = new = tempfile.mkdtemp(prefix="tuning-session-")
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return Path(new)

    def close(self, session: str) -> None:
        """The session ended: leave its jobs and remove its folder."""
        self.leave(session)
        with self._lock:
            gone = [self._folders.pop(key) for key in [k for k in self._folders if k[0] == session]]
        for old in gone:
            shutil.rmtree(old, ignore_errors=True)
