"""Every value a client sends is checked again here, and an error the user can fix becomes one sentence.

The browser's limits (a slider's range, a textbox's max length) do not bind a raw API call, which
can send any JSON in any field: the `checked_*` functions and the `Checked*` components check it
on the server. `user_errors` is the boundary: the engine's errors a visitor caused (a bad setting,
a missing adapter, out of memory) become a `gr.Error` sentence; our own bugs still raise.
"""

from __future__ import annotations

import contextlib
import logging
import math

import gradio as gr
import torch

from tuning import hub
from tuning.adapters import AdapterError
from tuning.data import DataError
from tuning.events import TrainingError
from tuning.generate import GenerationError
from tuning.model import ModelError
from tuning.plan import PlanError
from tuning.written import WrittenError

log = logging.getLogger("tuning.app")


OUT_OF_MEMORY = "out of memory: try fewer virtual tokens, a smaller batch or a shorter run"
USER_ERRORS = (DataError, ModelError, AdapterError, GenerationError, TrainingError, PlanError, hub.HubError, WrittenError)
MAX_INPUT_CHARS = 4_000  # compare input; GPT-2's whole context is about 4,000 characters of English
MAX_FIELD_CHARS = 200  # act names, searches, adapter names


def refuse(message: str) -> gr.Error:
    """The one sentence a visitor sees; the server logs that line, not a traceback (it is not our bug)."""
    log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


@contextlib.contextmanager
def user_errors():
    """Turn an error the user can fix into one sentence on the page (and one log line); our own bugs still raise."""
    try:
        yield
    except USER_ERRORS as e:
        raise refuse(str(e)) from None
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError too
        if "out of memory" not in str(e).lower():
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the failed run's blocks back, so the next request can have them
        log.warning("out of memory: %s", str(e)[:200])
        raise gr.Error(OUT_OF_MEMORY, print_exception=False) from None


@contextlib.contextmanager
def disk_errors(doing: str = "write the adapter"):
    """A failed write or delete (disk full, read-only folder) is one sentence; adapters.save has already cleaned up."""
    try:
        yield
    except OSError as e:
        log.warning("could not %s: %s", doing, e)
        raise gr.Error(f"the server could not {doing} ({e.strerror or e}); nothing was changed",
                       print_exception=False) from None


def checked_text(value, label: str, max_chars: int) -> str:
    """`value` if it is text we can use, else gr.Error naming the problem in one sentence.

    None -> ''. 'مرحبا 👋' -> 'مرحبا 👋'. 'a\x00b', '\ud800' (a lone surrogate), 5 or 100,000 characters -> gr.Error.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise refuse(f"{label} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise refuse(f"{label} is {len(value):,} characters; this server takes at most {max_chars:,}")
    if "\x00" in value:
        raise refuse(f"{label} contains a NUL character; remove it and try again")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can carry one, nothing after this can
        raise refuse(f"{label} contains broken Unicode (a lone surrogate); paste it again as plain text") from None
    return value


def checked_number(value, label: str) -> float | int:
    """`value` if it is a finite int or float; 'abc', True, None, NaN, infinity -> gr.Error."""
    if value is None or value == "":  # a field the visitor cleared
        raise refuse(f"{label} is empty: enter a number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse(f"{label} must be a number, got {value!r}"[:200])
    if not math.isfinite(value):
        raise refuse(f"{label} must be a finite number, got {value}")
    return value


def checked_whole(value, label: str, lo: int, hi: int) -> int:
    """`value` as an int from `lo` to `hi` (20.0 is 20); 2.5, 'abc' or out of range -> gr.Error."""
    n = whole(checked_number(value, label))
    if not isinstance(n, int) or not lo <= n <= hi:
        raise refuse(f"{label} must be a whole number from {lo} to {hi}, got {value}")
    return n


def checked_name(value, label: str = "the adapter name") -> str | None:
    """A dropdown value that allows custom text: None, or text of at most 200 characters."""
    return checked_text(value, label, MAX_FIELD_CHARS) or None


def whole(value):
    """20.0 -> 20 (sliders and clients send floats); 2.5 stays 2.5 so TuneConfig names it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class CheckedText(gr.Textbox):
    """A Textbox whose `max_length` (default 200) also binds API calls, and that refuses NUL and broken Unicode."""

    is_template = True  # drawn by the frontend as a Textbox

    def preprocess(self, payload):
        return checked_text(payload, self.label or "the text", self.max_length or MAX_FIELD_CHARS)


def in_range(component, payload, preprocess):
    """Type and finiteness checked here, the range by Gradio (its message, with the field's label in front)."""
    value = checked_number(payload, component.label)
    try:
        return preprocess(value)
    except gr.Error as e:
        raise refuse(f"{component.label}: {e.message}") from None


class CheckedSlider(gr.Slider):
    """A Slider that refuses text, NaN and infinity with one sentence (Gradio's own check would crash on them)."""

    is_template = True

    def preprocess(self, payload):
        return in_range(self, payload, super().preprocess)


class CheckedRadio(gr.Radio):
    """A Radio that refuses a value outside its choices in one sentence (Gradio's own refusal logs a traceback)."""

    is_template = True

    def preprocess(self, payload):
        choices = [value for _, value in self.choices]
        if payload is not None and payload not in choices:
            raise refuse(f"{self.label} must be one of {', '.join(map(str, choices))}, got {str(payload)[:80]!r}")
        return super().preprocess(payload)


class CheckedCheckboxGroup(gr.CheckboxGroup):
    """A CheckboxGroup that refuses a value outside its choices, or no list, in one sentence (Gradio's own check
    logs a traceback, and crashes on a null)."""

    is_template = True

    def preprocess(self, payload):
        choices = [value for _, value in self.choices]
        if payload is None:
            payload = []
        if not isinstance(payload, list) or not all(v in choices for v in payload):
            raise refuse(f"{self.label} must be some of {', '.join(map(str, choices))}, got {str(payload)[:80]!r}")
        return super().preprocess(payload)


class CheckedNumber(gr.Number):
    """A Number that refuses text, NaN and infinity with one sentence (precision=0 would crash on them)."""

    is_template = True

    def preprocess(self, payload):
        return in_range(self, payload, super().preprocess)
