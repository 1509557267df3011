"""The dataset: (act, prompt) rows of `fka/awesome-chatgpt-prompts`, loaded, split by act, looked up.

`load_rows()` reads a Hub dataset id or a local .csv/.json/.jsonl/.parquet file into `Row`s
with trimmed text and unique display names: the second "Linux Terminal" becomes
"Linux Terminal (2)" and keeps the group "linux terminal". `split_by_act()` holds out whole
groups, so no act is both trained on and evaluated on. `find_act()` and `select()` turn
names a user typed into rows. Anything wrong with the data raises `DataError`, whose
message is one sentence for the user (with the line number for a broken CSV row).

Both schemas load: `act, prompt` (the 2025-01 snapshot) and `act, prompt, for_devs, type[, contributor]`;
with a `type` column, only TEXT rows are kept unless `text_only=False`.

Offline: when the Hub cannot be reached, the default dataset (`fka/awesome-chatgpt-prompts`)
loads from the copy shipped in `snapshot/` (CC0, see its LICENSE) and `source_note()` says so;
any other Hub dataset fails with one sentence. Whether the Hub is there is hubprobe.py's question.

What it does not do: tokenize (rows.py), download anything but the dataset itself, or
repair a broken file; a file we cannot read faithfully is an error, not a guess.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import random
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import DEFAULT_DATASET
from .hubprobe import hub_reachable, is_connection_error, offline_mode, remember_hub_down

SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
BOM = b"\xef\xbb\xbf"

# f/awesome-chatgpt-prompts' prompts.csv as of 2025-11 (CC0): the schema the Hub serves today
# (act, prompt, for_devs, type), 221 TEXT rows. Shipped in the package so a first start
# without the Hub still has a dataset; it is never used for any other dataset id.
SNAPSHOT = Path(__file__).parent / "snapshot" / "awesome-chatgpt-prompts.csv"
SNAPSHOT_DATE = "2025-11"


class DataError(ValueError):
    """The dataset cannot be used as given; the message is one sentence for the user."""


@dataclass(frozen=True)
class Row:
    act: str  # unique display name: duplicates get " (2)", " (3)" in file order
    prompt: str  # trimmed prompt text
    group: str  # the original act, casefolded and whitespace-normalised; one group = one act for splitting


def normalise(name: str) -> str:
    """The key two act names share when a user would call them the same act.

    NFKC first: "Café" typed with a combining accent is the same act as with "é".

    >>> normalise("  Linux   terminal ")
    'linux terminal'
    """
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()


# ---------------------------------------------------------------------------------------
# reading a table: every reader returns (column names, records), records as value lists


def _is_local(source: str) -> bool:
    # A Hub id looks like "owner/name"; so can a relative path, hence the suffix test.
    return (
        source.startswith((".", "/", "~"))
        or source.lower().endswith(SUFFIXES)
        or Path(source).exists()
    )


def _read_text(path: Path) -> str:
    """The file as text; a BOM is dropped, and non-UTF-8 bytes are reported by file position."""
    data = path.read_bytes()
    # Strip the BOM ourselves (rather than decode "utf-8-sig") so the error position is the file's.
    start = len(BOM) if data.startswith(BOM) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[start + e.start]
        raise DataError(f"{path.name} is not UTF-8 text (byte 0x{bad:02x} at position {start + e.start})") from None
    if not text.strip():
        raise DataError(f"{path.name} is empty")
    return text


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    text = _read_text(path)
    # The default limit (128 KiB) rejects long prompts; the C long caps it on Windows.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # skipinitialspace: `act, "prompt"` is common in hand-written files. strict: a stray quote
    # would otherwise swallow the rest of the file into one prompt, silently.
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True, strict=True)
    records: list[list[str]] = []
    header: list[str] | None = None
    line = 1  # where the next record starts; reader.line_num is where the last one ended
    try:
        for fields in reader:
            if fields:  # a blank line
                if header is None:
                    header = fields
                elif len(fields) != len(header):
                    raise DataError(
                        f"{path.name} line {line} has {len(fields)} fields, the header has {len(header)}"
                    )
                else:
                    records.append(fields)
            line = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path.name} line {reader.line_num} is not valid CSV: {e}") from None
    assert header is not None  # _read_text refused a blank file
    return header, records


def _read_json(path: Path) -> tuple[list[str], list[list[Any]]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path.name} line {e.lineno} is not valid JSON: {e.msg}") from None
    if isinstance(data, list):
        if not all(isinstance(item, dict) for item in data):
            raise DataError(f"{path.name} is a JSON list but not a list of objects")
        return _from_objects(data)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return _from_columns(data, path.name)
    raise DataError(f"{path.name} must hold a list of objects or an object of column lists")


def _read_jsonl(path: Path) -> tuple[list[str], list[list[Any]]]:
    objects = []
    # split("\n"), not splitlines(): U+2028 and U+0085 are legal inside a JSON string on one line
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path.name} line {number} is not valid JSON: {e.msg}") from None
        if not isinstance(item, dict):
            raise DataError(f"{path.name} line {number} is not a JSON object")
        objects.append(item)
    return _from_objects(objects)


def _read_parquet(path: Path) -> tuple[list[str], list[list[Any]]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a bad file; the user needs one sentence
        raise DataError(f"{path.name} is not a readable Parquet file: {_first_line(e)}") from None
    return _from_columns(frame.to_dict("list"), path.name)


class _Unreachable(Exception):
    """The Hub could not be reached (no connection, a timeout, offline mode); the message says how."""


def _read_hub(source: str) -> tuple[list[str], list[list[Any]]]:
    # With HF_HUB_OFFLINE set, `datasets` fails at once or reads its own cache (a Space's
    # preloaded copy): let it. Otherwise ask first: its download retries for ~30 s without a network.
    if not offline_mode() and not hub_reachable(source, "dataset"):
        raise _Unreachable("the Hub could not be reached (no connection)")
    import datasets  # slow to import, and only this path needs it

    try:
        dataset = datasets.load_dataset(source, split="train")
    except Exception as e:  # offline, unknown id, no train split, gated: all the user's to fix
        if is_connection_error(e):
            remember_hub_down()
            raise _Unreachable(_first_line(e)) from None
        raise DataError(
            f"could not load the dataset '{source}' from the Hugging Face Hub: {_first_line(e)}"
        ) from None
    return _from_columns(dataset.to_dict(), source)


# ---------------------------------------------------------------------------------------
# where a snapshot stood in for the Hub

_snapshot_notes: dict[str, str] = {}  # dataset id -> the note, while its rows came from SNAPSHOT


def source_note(dataset: str) -> str | None:
    """One line for the user when the last `load_rows(dataset)` read the shipped snapshot, else None.

    >>> source_note("fka/awesome-chatgpt-prompts")  # doctest: +SKIP
    'Offline: using the snapshot of fka/awesome-chatgpt-prompts shipped with this app (CC0, 2025-11, 221 acts)'
    """
    return _snapshot_notes.get(dataset)


def _from_objects(objects: list[dict]) -> tuple[list[str], list[list[Any]]]:
    """[{"act": "A", "prompt": "p"}, {"act": "B"}] -> (["act", "prompt"], [["A", "p"], ["B", None]])"""
    columns = list(dict.fromkeys(key for item in objects for key in item))
    return columns, [[item.get(c) for c in columns] for item in objects]


def _from_columns(data: dict[str, list], name: str) -> tuple[list[str], list[list[Any]]]:
    """{"act": ["A", "B"], "prompt": ["p", "q"]} -> (["act", "prompt"], [["A", "p"], ["B", "q"]])"""
    lengths = {len(v) for v in data.values()}
    if len(lengths) > 1:
        raise DataError(f"{name} has columns of different lengths ({', '.join(map(str, sorted(lengths)))})")
    columns = [str(c) for c in data]
    return columns, [list(values) for values in zip(*data.values())]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _text(value: Any) -> str:
    """A cell as trimmed text with "\n" line ends (a CRLF file's quoted newlines too); missing cells (None, NaN) are ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).replace("\r\n", "\n").replace("\r", "\n").strip()


def _name(value: Any) -> str:
    """An act's name on one line: runs of whitespace (newlines, tabs) one space, control characters gone."""
    text = "".join(ch for ch in _text(value) if ch.isspace() or unicodedata.category(ch) != "Cc")
    return " ".join(text.split())


def _read_file(source: str) -> tuple[str, list[str], list[list[Any]]]:
    """(the file's name, column names, records) of a local dataset file, read by its suffix."""
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # "~someone/..." for a user this machine does not know
        raise DataError(f"no dataset file at {source}") from None
    if not path.exists():
        raise DataError(f"no dataset file at {source}")
    if path.is_dir():
        raise DataError(f"{source} is a folder; give a .csv, .json, .jsonl or .parquet file")
    suffix = path.suffix.lower()
    readers = {".csv": _read_csv, ".json": _read_json, ".jsonl": _read_jsonl, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{path.name} is not a .csv, .json, .jsonl or .parquet file")
    return path.name, *readers[suffix](path)


# ---------------------------------------------------------------------------------------
# the public API


def load_rows(source: str, text_only: bool = True) -> list[Row]:
    """Rows with both an act and a prompt, in file order, from a Hub id or a local file.

    `source`: "fka/awesome-chatgpt-prompts", "prompts.csv", "~/data/prompts.jsonl", ...
    `text_only`: when the data has a `type` column, keep only rows of type TEXT.
    When the Hub cannot be reached, `DEFAULT_DATASET` loads from the shipped `SNAPSHOT` and
    `source_note(source)` says so; any other Hub id raises DataError.
    """
    if not source or not source.strip():
        raise DataError("no dataset given; name a Hub dataset or a .csv, .json, .jsonl or .parquet file")
    from_snapshot = False  # set when the Hub could not be reached and the shipped copy stands in
    if _is_local(source):
        name, columns, records = _read_file(source)
    else:
        name = source
        try:
            columns, records = _read_hub(source)
        except _Unreachable as e:
            # Only the default dataset has a shipped copy; any other id must not turn silently into it.
            if source != DEFAULT_DATASET:
                raise DataError(f"could not load the dataset '{source}' from the Hugging Face Hub: {e}") from None
            columns, records = _read_csv(SNAPSHOT)
            from_snapshot = True

    if not columns:  # "[]", or a Parquet file with no columns
        raise DataError(f"{name} has no rows with both an act and a prompt")
    # A BOM can survive inside a header that another tool wrote; strip() does not remove it.
    keys = [str(c).replace("\ufeff", "").strip().casefold() for c in columns]
    for key in ("act", "prompt", "type"):
        twins = [repr(c) for c, k in zip(columns, keys) if k == key]
        if len(twins) > 1:  # one would be read and the rows that use the other dropped
            raise DataError(f"{name} has {len(twins)} columns that name the {key}: {', '.join(twins)}; keep one")
    index = {k: i for i, k in reversed(list(enumerate(keys)))}
    missing = [c for c in ("act", "prompt") if c not in index]
    if missing:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise DataError(f"{name} has no {' or '.join(repr(c) for c in missing)} column (columns found: {found})")
    act_i, prompt_i = index["act"], index["prompt"]

    if text_only and "type" in index:
        type_i = index["type"]
        kept = [r for r in records if _text(r[type_i]).casefold() == "text"]
        if records and not kept:
            types = sorted({_text(r[type_i]) or "(empty)" for r in records})
            raise DataError(
                f"{name} has no rows of type TEXT (types found: {', '.join(types)}); load it with text_only=False"
            )
        records = kept

    rows: list[Row] = []
    seen: set[str] = set()
    for number, record in enumerate(records, start=1):
        for column, value in (("act", record[act_i]), ("prompt", record[prompt_i])):
            if value is not None and not isinstance(value, (str, int, float)):  # a list or an object: not a guess
                raise DataError(f"{name} row {number}: the {column} is a {type(value).__name__}, not text")
        act, prompt = _name(record[act_i]), _text(record[prompt_i])
        if not act or not prompt:
            continue
        display, n = act, 1
        while display in seen:  # a loop, not a count: the file may itself hold "Linux Terminal (2)"
            n += 1
            display = f"{act} ({n})"
        seen.add(display)
        rows.append(Row(act=display, prompt=prompt, group=normalise(act)))
    if not rows:
        raise DataError(f"{name} has no rows with both an act and a prompt")
    if from_snapshot:
        _snapshot_notes[source] = (f"Offline: using the snapshot of {source} shipped with this app "
                                   f"(CC0, {SNAPSHOT_DATE}, {len(rows)} acts)")
    else:
        _snapshot_notes.pop(source, None)
    return rows


def matching(rows: Sequence[Row], query: str) -> list[Row]:
    """The rows whose act or prompt contains `query`, ignoring case; all of them for an empty query."""
    q = query.strip().casefold()
    return [r for r in rows if not q or q in r.act.casefold() or q in r.prompt.casefold()]


def split_by_act(
    rows: list[Row], held_out_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Row], list[Row]]:
    """(train, held_out): whole groups are held out, so an act is never on both sides.

    About `held_out_fraction` of the groups (at least one when it is above 0 and there are two
    or more groups) are held out, chosen by `seed`. Each side keeps the input order.
    """
    if not 0 <= held_out_fraction <= 0.5:
        raise DataError(f"held_out_fraction must be between 0 and 0.5, got {held_out_fraction}")
    groups = sorted({r.group for r in rows})  # sorted: the shuffle must not depend on input order
    random.Random(seed).shuffle(groups)
    n_held = round(len(groups) * held_out_fraction)
    if held_out_fraction > 0 and len(groups) >= 2:
        n_held = max(n_held, 1)
    held = set(groups[:n_held])
    return [r for r in rows if r.group not in held], [r for r in rows if r.group in held]


def find_act(rows: Sequence[Row], name: str) -> Row:
    """The row whose act is `name`: exact first, then ignoring case and extra spaces."""
    if not name or not name.strip():
        raise DataError("the act name is empty")
    for row in rows:
        if row.act == name:
            return row
    key = normalise(name)
    for row in rows:
        if normalise(row.act) == key:
            return row
    acts = [r.act for r in rows]
    close = difflib.get_close_matches(name, acts, n=3)
    if not close:  # "linux termnal" vs "Linux Terminal": difflib is case-sensitive
        by_key = {normalise(a): a for a in reversed(acts)}
        close = [by_key[k] for k in difflib.get_close_matches(key, list(by_key), n=3)]
    hint = "; did you mean " + ", ".join(f"'{c}'" for c in close) + "?" if close else ""
    raise DataError(f"no act named '{name.strip()}'{hint}")


def select(rows: Sequence[Row], acts: Sequence[str]) -> list[Row]:
    """The rows for `acts` (each found by `find_act`), in the order given, each row once."""
    out: list[Row] = []
    for name in acts:
        row = find_act(rows, name)
        if row not in out:
            out.append(row)
    return out
