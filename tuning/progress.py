"""Training events -> what a person watches: chart points, log lines, one progress line.

`RunView` folds `train()`'s events (Start, Step, EpochEnd, Done) into the three things the app
shows while a run goes on, so that the same events always read the same way, whether they
arrive live, are replayed to a tab that re-attached after a reload, or come from a test.
It is a plain object over plain events: no widgets, no threads.

`SweepView` and `ReferenceView` do the same for a sweep and for the reference adapters' training.

What it does not do: run anything, or choose colours (a front end's business).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .evaluate import ROUGE_NEW_TOKENS
from .events import Done, EpochEnd, Paused, Start, Step
from .formatting import duration, number, plural
from .history import held_out_points
from .plan import SCORING_COST
from .reference import ReferenceSaved
from .sweep import CellEvent, CellResult, SweepDone, SweepStart, WrittenResult

clock = time.monotonic  # a module attribute so tests can move it
SERIES = ("train", "held-out", "base held-out")  # the series of one run's chart, in legend order


def paused_for_generation(event: Paused) -> str:
    """What a line says while a training gives way to a generation (a visitor's Compare) on the same CPU.

    >>> paused_for_generation(Paused(4, 2.5)), paused_for_generation(Paused(4, 0.2))
    ('paused while a generation runs on this CPU (at most 2s)', 'paused while a generation runs on this CPU (under a second)')
    """
    limit = f"at most {duration(event.max_seconds)}" if event.max_seconds >= 1 else "under a second"
    return f"paused while a generation runs on this CPU ({limit})"


@dataclass
class RunView:
    """One run as a person sees it. Feed it every event in order with `add`; read the fields.

    `step_cap`: where the run will stop (a server's cap may end it before its last epoch);
    `epochs`, `batch_size`: the run's settings (for the progress line and the time estimate).
    """

    step_cap: int
    epochs: int
    batch_size: int = 4
    notes: tuple[str, ...] = ()
    points: list[tuple[int, float, str]] = field(default_factory=list)  # (step, loss, series)
    log: list[str] = field(default_factory=list)
    progress: str = "waiting to start"
    finished: bool = False
    stopped: bool = False
    stopping: bool = False  # Stop was pressed; the run ends after its current step
    step: int = 0
    _held_rows: int = 0
    _held_share: float = 1.0  # share of the held-out tokens each epoch end scores (less for a short run)
    _subset_acts: int | None = None  # acts a short run's epoch ends scored (the chart's points), None: all
    _train_rows: int = 0
    _resumed_at: int = 0  # steps the prompt had trained before this run (a resumed adapter)
    _step_elapsed: float = 0.0  # seconds since the start at the last Step
    _train_seconds: float | None = None  # seconds spent in this run's steps so far (None: not known)
    _eval_seconds: list[float] = field(default_factory=list)  # each epoch end's scoring time
    _epochs_scored: int = 0
    _epochs_before: int = 0  # epochs of a resumed prompt's earlier runs

    def __post_init__(self) -> None:
        self.log = [f"note: {n}" for n in self.notes]

    # --- events in
    def add(self, event) -> None:
        if isinstance(event, Start):
            self._held_rows, self._train_rows, self._resumed_at = event.held_out_rows, event.train_rows, event.resumed_at
            self._held_share = event.epoch_held_out_share
            self.step = max(self.step, event.resumed_at)
            more = f" more, from step {event.resumed_at:,}" if event.resumed_at else ""
            self.log.append(f"training on {plural(event.train_rows, 'act')}, {event.held_out_rows:,} held out, "
                            f"{plural(self.step_cap - event.resumed_at, 'step')}{more}")
            self.progress = f"step {self.step:,} / {self.step_cap:,} · starting"
        elif isinstance(event, Step):
            self.step, self._step_elapsed = event.step, event.elapsed
            if event.tokens_per_s > 0:  # the time in steps alone, not waits between them (a paused background run)
                self._train_seconds = event.tokens / event.tokens_per_s
            self.points.append((event.step, event.loss, "train"))
            self.progress = (f"step {event.step:,} / {self.step_cap:,} · epoch {event.epoch} / {self.epochs} · "
                             f"{event.tokens_per_s:,.0f} tokens/s · about {duration(self.eta())} left")
        elif isinstance(event, Paused):  # the next Step (or EpochEnd) says where the run is again
            self.progress = f"step {self.step:,} / {self.step_cap:,} · {paused_for_generation(event)}"
        elif isinstance(event, EpochEnd):
            scoring = event.scoring_seconds
            self._eval_seconds.append(max(0.0, event.elapsed - self._step_elapsed) if scoring is None else scoring)
            self._epochs_scored = event.epoch
            if event.held_out_loss is not None:
                self.points.append((self.step, event.held_out_loss, "held-out"))
            if event.base_held_out_loss is not None and not self._has("base held-out"):
                self._base_line(event.base_held_out_loss)
            on = ""
            if event.held_out_acts is not None and event.held_out_acts < self._held_rows:
                self._subset_acts = event.held_out_acts
                on = f" on {event.held_out_acts:,} of {plural(self._held_rows, 'held-out act')}"
            self.log.append(f"epoch {event.epoch}: train {event.train_loss:.3f}, held-out "
                            f"{number(event.held_out_loss)}{on} ({duration(event.elapsed)})")
        elif isinstance(event, Done):
            self._done(event)
        if self.stopping and not self.finished:
            self.progress = f"stopping after this step… (step {self.step:,} / {self.step_cap:,})"

    def request_stop(self) -> None:
        """Stop was pressed: say so until the run has ended (no progress line overwrites it)."""
        if not self.finished:
            self.stopping = True
            self.progress = f"stopping after this step… (step {self.step:,} / {self.step_cap:,})"

    # --- what the time estimate knows
    def eta(self) -> float:
        """Seconds left: the remaining steps at the mean step time, plus the held-out scoring still to come.

        Scoring is counted in whole held-out sides: each epoch end scores a share of it for the
        prompt (all of it for a long run, a short run's subset, `Start.epoch_held_out_share`),
        the first also for the base model, and the last all of it for both (a short run's end,
        what Done saves). Once an epoch end has been measured, a side costs what it took; until
        then it is guessed from the step time: a forward pass over the held-out rows costs
        SCORING_COST of training steps over as many rows (a step trains its batch's rows: fewer
        when there are fewer training rows, as for one act).
        """
        done = self.step - self._resumed_at
        if done <= 0:
            return 0.0
        train_seconds = self._train_seconds if self._train_seconds is not None else (
            self._step_elapsed - sum(self._eval_seconds))
        per_step = max(train_seconds, 0.0) / done
        share, measured = self._held_share or 1.0, len(self._eval_seconds)
        if measured:  # the first epoch end scored the share twice (prompt and base model)
            per_side = self._eval_seconds[-1] / (share * (2 if measured == 1 else 1))
        else:
            rows_per_step = min(self.batch_size, self._train_rows or self.batch_size)
            per_side = per_step * math.ceil(self._held_rows / max(1, rows_per_step)) * SCORING_COST
        planned_epochs = min(self.epochs, math.ceil(self.step_cap / max(1, self._steps_per_epoch())))
        scored_before = self._epochs_before if self._resumed_at else 0
        ends = max(0, planned_epochs - max(self._epochs_scored, scored_before)) if self._held_rows else 0
        # each end the share, the last all of it for the prompt and the base model's rest, the first the base model's share
        sides = ends * share + 2 * (1 - share) + (0 if measured else share) if ends else 0.0
        return (self.step_cap - self.step) * per_step + sides * per_side

    def _steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.step_cap / self.epochs))

    def continue_from(self, history: dict, steps_per_epoch: int) -> None:
        """Draw a resumed prompt's earlier curve first, so its history continues on the same chart."""
        self.points += [(s, loss, "train") for s, loss in zip(history["step"], history["train_loss"])]
        self.points += held_out_points(history, steps_per_epoch)
        self.step = history["step"][-1] if history["step"] else 0
        self._epochs_before = history["epoch"][-1] if history["epoch"] else 0
        self.log.append(f"continuing a prompt trained for {plural(self.step, 'step')} "
                        f"({plural(self._epochs_before, 'epoch')})")

    # --- helpers
    def _has(self, series: str) -> bool:
        return any(s == series for _, _, s in self.points)

    def _base_line(self, loss: float) -> None:
        self.points += [(0, loss, "base held-out"), (self.step_cap, loss, "base held-out")]

    def _on_all(self, base_held: float | None) -> str:
        """After a short run's held-out loss: ' on all 20 held-out acts, base model 3.542' (its epochs' were on fewer)."""
        if self._subset_acts is None or not self._held_rows:
            return ""
        return f" on all {plural(self._held_rows, 'held-out act')}, base model {number(base_held)}"

    def _done(self, event: Done) -> None:
        self.finished, self.stopped, self.stopping = True, event.stopped, False
        metrics = event.soft.meta["metrics"]
        # A stopped run's prompt was scored once more at the stop (train() does that): draw it.
        held, base_held = metrics.get("held_out_loss"), metrics.get("base_held_out_loss")
        last_held = next((p for p in reversed(self.points) if p[2] == "held-out"), None)
        # (not onto a short run's points: those are its subset's, this is every held-out act's)
        if held is not None and (last_held is None or last_held[0] != self.step and self._subset_acts is None):
            self.points.append((self.step, held, "held-out"))
        if base_held is not None and not self._has("base held-out"):
            self._base_line(base_held)
        if event.stopped and self.step < self.step_cap:
            kept = event.soft.meta.get("steps", self.step)  # a run cut off from outside keeps its last snapshot
            self.log.append(f"stopped at step {self.step:,} of {self.step_cap:,} after {duration(event.elapsed)}: "
                            f"the prompt as it was after step {kept:,} is kept (held-out loss {number(held)}{self._on_all(base_held)}).")
            self.progress = f"stopped at step {self.step:,} / {self.step_cap:,} · the prompt so far is kept"
        else:
            self.log.append(f"done: {plural(event.steps, 'step')} in {duration(event.elapsed)}; "
                            f"held-out loss {number(held)}{self._on_all(base_held)}.")
            self.progress = f"step {self.step:,} / {self.step_cap:,} · done"


@dataclass
class SweepView:
    """A sweep as a person sees it: every cell's curves on one step axis, the results so far, one progress line."""

    cells: int
    x_end: int = 0  # the longest cell's last step: where the base model's line ends
    rouge_acts: int = 0
    labels: list[str] = field(default_factory=list)  # the cells' names ("5×5"): a reloaded page redraws its chart
    points: list[tuple[int, float, str]] = field(default_factory=list)
    results: list = field(default_factory=list)  # sweep.CellResult, in order
    progress: str = "waiting to start"
    finished: bool = False
    stopping: bool = False
    total: int = 0
    _done_before: int = 0  # steps of the finished cells
    _step: int = 0
    _seconds_before: float = 0.0
    _scoring_since: float | None = None  # clock() when the current cell's ROUGE-L scoring began
    _scoring_seconds: list[float] = field(default_factory=list)  # each scored cell's ROUGE-L time, as measured
    rouge_pace: float | None = None  # seconds per new token of a one-row generation, timed before the sweep
    _rouge_rows: int = 0  # the acts ROUGE-L will score: rouge_acts, at most the held-out acts
    shots: tuple[int, ...] = ()  # the written prompts' example counts, scored after the cells (run_sweep's `shots`)
    written: list = field(default_factory=list)  # sweep.WrittenResult, in order

    def __post_init__(self) -> None:
        self.shots = tuple(sorted(set(self.shots)))  # run_sweep scores each count once, in this order

    def add(self, event) -> None:
        if isinstance(event, SweepStart):
            self.total = event.total_steps
            self._rouge_rows = min(self.rouge_acts, event.held_out_rows)
            self.progress = (f"step 0 / {self.total:,} · {plural(self.cells, 'cell')} · "
                             f"{plural(event.held_out_rows, 'held-out act')}")
        elif isinstance(event, CellEvent):
            self._cell_event(event)
        elif isinstance(event, CellResult):
            self.results.append(event)
            if self._scoring_since is not None:
                self._scoring_seconds.append(clock() - self._scoring_since)
                self._scoring_since = None
            if len(self.results) == self.cells and not event.stopped and self.shots:
                self.progress = self._scoring_written()
        elif isinstance(event, WrittenResult):
            self.written.append(event)
            if len(self.written) < len(self.shots):
                self.progress = self._scoring_written()
        elif isinstance(event, SweepDone):
            self._done(event)
        if self.stopping and not self.finished:
            self.progress = f"stopping after this step… (step {self._done_before + self._step:,} / {self.total:,})"

    def _done(self, event: SweepDone) -> None:
        self.finished = True
        seconds = f"{duration(sum(r.seconds for r in event.results))} of training"
        whole = [r for r in event.results if not r.stopped]
        if not event.stopped and len(whole) == len(event.results):
            self.progress = f"done: {len(whole)} of {plural(self.cells, 'cell')} in {seconds}"
        else:  # a cut cell is in the results (its prompt is kept) but it did not finish
            cut = "".join(f", {r.label} cut at step {r.steps:,}"
                          for r in event.results if r.stopped)
            self.progress = f"stopped: {len(whole)} of {plural(self.cells, 'cell')} finished{cut} · {seconds}"
        if not self.shots:
            return
        if event.stopped:  # run_sweep scores no written row after a cut cell
            self.progress += " · written prompts not scored"
        elif len(event.written) == len(self.shots):
            self.progress += f" · {plural(len(event.written), 'written prompt')} scored"
        else:  # stopped while the written prompts were being scored
            self.progress += f" · stopped after {len(event.written)} of {plural(len(self.shots), 'written prompt')}"

    def _scoring_written(self) -> str:
        """'scoring the written prompts: 2 examples (2 / 3)…': the one being scored now, after the cells."""
        k = self.shots[len(self.written)]
        return f"scoring the written prompts: {plural(k, 'example')} ({len(self.written) + 1} / {len(self.shots)})…"

    def _cell_event(self, event) -> None:
        inner, name = event.event, event.label
        if isinstance(inner, Step):
            self._step = inner.step
            self.points.append((inner.step, inner.loss, f"{name} train"))
            done = self._done_before + inner.step
            left = self._left(done, self._seconds_before + inner.elapsed, event.cell)
            self.progress = (f"step {done:,} / {self.total:,} · cell {name} ({event.cell + 1} / {self.cells}) · "
                             f"epoch {inner.epoch} · {left}")
        elif isinstance(inner, Paused):
            self.progress = (f"step {self._done_before + self._step:,} / {self.total:,} · cell {name} · "
                             f"{paused_for_generation(inner)}")
        elif isinstance(inner, EpochEnd):
            if inner.held_out_loss is not None:
                self.points.append((self._step, inner.held_out_loss, f"{name} held-out"))
            self._base_line(inner.base_held_out_loss)
        elif isinstance(inner, Done):
            metrics = inner.soft.meta.get("metrics", {})
            if inner.stopped and metrics.get("held_out_loss") is not None and self._step:
                # a cell stopped mid-epoch was scored once more as kept: its last point, like the Train tab's
                self.points.append((self._step, metrics["held_out_loss"], f"{name} held-out"))
                self._base_line(metrics.get("base_held_out_loss"))
            self._done_before += inner.steps
            self._seconds_before += inner.elapsed
            self._step = 0
            if self.rouge_acts and not inner.stopped:  # a stopped cell is not scored
                self._scoring_since = clock()
                left = (f" · {self._left(self._done_before, self._seconds_before, event.cell)}"
                        if self._scoring_seconds else "")
                self.progress = (f"cell {name}: scoring ROUGE-L on up to {plural(self.rouge_acts, 'held-out act')}…"
                                 + left)

    def _left(self, done: int, seconds: float, cell: int) -> str:
        """'about 3m left': the training still to come at the pace of `done` steps in `seconds`, plus,
        once a cell was scored, ROUGE-L from `cell` on at its measured pace.

        Before the first cell is scored, ROUGE-L's time comes from `rouge_pace` (every act decoded
        for the base model once and for each cell, ROUGE_NEW_TOKENS tokens at most: an upper
        bound); without one, it is unknown and the line says so. The first cell's time also holds
        the base model's continuations, decoded once for every cell (sweep.run): once a later
        cell is scored, the pace leaves it out.
        """
        training_s = (self.total - done) * seconds / done if done else 0.0
        if not self.rouge_acts:
            return f"about {duration(training_s)} left"
        if not self._scoring_seconds:
            if self.rouge_pace is None:
                return f"about {duration(training_s)} of training left, then ROUGE-L"
            generations = (self.cells - cell + 1) * self._rouge_rows  # the base model's once, then each cell's
            return f"about {duration(training_s + generations * ROUGE_NEW_TOKENS * self.rouge_pace)} left"
        to_score = self.cells - cell  # this cell and the ones after it
        later = self._scoring_seconds[1:] or self._scoring_seconds
        pace = sum(later) / len(later)
        return f"about {duration(training_s + to_score * pace)} left"

    def _base_line(self, loss: float | None) -> None:
        if loss is not None and not any(s == "base held-out" for _, _, s in self.points):
            self.points += [(0, loss, "base held-out"), (self.x_end, loss, "base held-out")]

    def request_stop(self) -> None:
        if not self.finished:
            self.stopping = True
            self.progress = f"stopping after this step… (step {self._done_before + self._step:,} / {self.total:,})"


@dataclass
class ReferenceView:
    """The reference adapters' training as one line: "reference 20×10: step 120 / 480, about 3m 00s left"."""

    run: RunView | None = None
    label: str = ""
    saved: list[str] = field(default_factory=list)
    finished: bool = False
    gave_way: Paused | None = None  # the run waits for a generation (a visitor's Compare) until its next event

    def add(self, event) -> None:
        if isinstance(event, ReferenceSaved):
            self.saved.append(event.name)
            return
        if isinstance(event.event, Start):
            self.label, self.run = event.label, RunView(event.event.total_steps, event.cell[1])
        self.gave_way = event.event if isinstance(event.event, Paused) else None
        self.run.add(event.event)

    def line(self, paused: bool = False) -> str:
        """What Compare says while the references train, e.g. "Training the reference adapters (5×5 saved): …"."""
        saved = f" ({', '.join(n.split('-')[1].replace('x', '×') for n in self.saved)} saved)" if self.saved else ""
        head = f"Training the reference adapters{saved}: "
        if self.run is None:
            return head + ("waiting while a visitor trains" if paused else "loading the model…")
        if self.run.finished:
            return head + f"{self.label} done, saving…"
        where = head + f"{self.label} at step {self.run.step:,} / {self.run.step_cap:,}"
        if paused:
            return where + ", paused while a visitor trains"
        if self.gave_way is not None:
            return where + ", " + paused_for_generation(self.gave_way)
        return where + (f", about {duration(self.run.eta())} left" if self.run.step else ", starting")
