"""tuning/data.py: loading both dataset schemas, hostile files, the split by act, finding acts.

Offline: the Hub path is exercised with a fake `datasets` module; the real snapshots in
../shared/data are used when present and the tests on them skip otherwise (fail under CI: conftest.need).
"""

from __future__ import annotations

import csv
import json
import sys
import time
import types
from pathlib import Path

import pytest

from tuning.data import DataError, Row, find_act, load_rows, select, split_by_act

from conftest import need

SNAPSHOTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "awesome-chatgpt-prompts"
OLD = SNAPSHOTS / "prompts-2025-01.csv"  # act,prompt
NEW = SNAPSHOTS / "prompts-2025-11.csv"  # act,prompt,for_devs,type


def snapshot(path: Path) -> str:
    need(path.is_file(), f"needs the dataset snapshot {path}")
    return str(path)


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return str(path)


def rows_of(*pairs: tuple[str, str]) -> list[Row]:
    """Rows as load_rows would make them, without a file: [("A", "p")] -> [Row("A", "p", "a")]."""
    return [Row(act=a, prompt=p, group=" ".join(a.split()).casefold()) for a, p in pairs]


# --- the real snapshots -----------------------------------------------------------------


def test_old_schema_snapshot_loads_all_209_rows():
    rows = load_rows(snapshot(OLD))
    assert len(rows) == 209
    assert rows[0].act == "An Ethereum Developer"
    assert rows[0].prompt.startswith("Imagine you are an experienced Ethereum developer")


def test_new_schema_snapshot_keeps_its_221_text_rows():
    # 224 rows: 221 TEXT, 3 JSON (Code Review Assistant, Data Transformer, Story Generator)
    rows = load_rows(snapshot(NEW))
    assert len(rows) == 221
    assert "Data Transformer" not in {r.act for r in rows}


def test_new_schema_snapshot_keeps_all_224_rows_when_not_text_only():
    rows = load_rows(snapshot(NEW), text_only=False)
    assert len(rows) == 224
    assert "Data Transformer" in {r.act for r in rows}


@pytest.mark.parametrize(
    "path, suffixed, groups",
    [
        (OLD, {"Life Coach (2)", "ChatGPT prompt generator (2)"}, 204),
        (NEW, {"Life Coach (2)", "Prompt Generator (2)", "Python Interpreter (2)", "Chess Player (2)"}, 215),
    ],
    ids=["old", "new"],
)
def test_snapshot_duplicated_acts_are_distinguishable(path, suffixed, groups):
    rows = load_rows(snapshot(path))
    acts = [r.act for r in rows]
    assert len(set(acts)) == len(acts)
    assert {a for a in acts if a.endswith(" (2)")} == suffixed
    # case variants ("Chess Player" / "chess player") share a group without being renamed
    assert len({r.group for r in rows}) == groups


def test_snapshot_loads_fast():
    start = time.perf_counter()
    load_rows(snapshot(NEW))
    assert time.perf_counter() - start < 1.0


# --- CSV quirks -------------------------------------------------------------------------


def test_csv_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write(tmp_path, "p.csv", "\ufeffact,prompt\nPoet,Write poems.\n".encode("utf-8"))
    assert load_rows(path) == rows_of(("Poet", "Write poems."))


def test_csv_space_before_quoted_field_is_skipped(tmp_path):
    path = write(tmp_path, "p.csv", 'act, prompt\nPoet, "Write poems, please."\n')
    assert load_rows(path) == rows_of(("Poet", "Write poems, please."))


def test_csv_multi_line_quoted_prompt_keeps_its_newlines(tmp_path):
    path = write(tmp_path, "p.csv", 'act,prompt\nPoet,"Line one.\nLine two."\nRapper,Rap.\n')
    assert load_rows(path) == rows_of(("Poet", "Line one.\nLine two."), ("Rapper", "Rap."))


def test_csv_windows_line_endings(tmp_path):
    path = write(tmp_path, "p.csv", "act,prompt\r\nPoet,Write poems.\r\nRapper,Rap.\r\n")
    assert load_rows(path) == rows_of(("Poet", "Write poems."), ("Rapper", "Rap."))


def test_csv_ragged_row_error_names_its_line(tmp_path):
    # line 4, not 5: the multi-line record above takes lines 2-3
    path = write(tmp_path, "prompts.csv", 'act,prompt\nPoet,"two\nlines"\nRapper,Rap,extra\nChef,Cook.\n')
    with pytest.raises(DataError, match=r"prompts\.csv line 4 has 3 fields, the header has 2"):
        load_rows(path)


def test_csv_unclosed_quote_is_an_error_not_a_swallowed_file(tmp_path):
    path = write(tmp_path, "p.csv", 'act,prompt\nPoet,"never closed\nRapper,Rap.\n')
    with pytest.raises(DataError, match=r"p\.csv line \d+ is not valid CSV"):
        load_rows(path)


def test_csv_non_utf8_bytes_are_reported_with_their_position(tmp_path):
    path = write(tmp_path, "p.csv", b"act,prompt\nCaf\xe9,Serve coffee.\n")
    with pytest.raises(DataError, match=r"p\.csv is not UTF-8 text \(byte 0xe9 at position 14\)"):
        load_rows(path)


def test_csv_non_utf8_position_counts_the_byte_order_mark(tmp_path):
    path = write(tmp_path, "p.csv", b"\xef\xbb\xbfact,prompt\nCaf\xe9,Serve coffee.\n")
    with pytest.raises(DataError, match=r"position 17\)"):
        load_rows(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_csv_empty_file_is_an_error(tmp_path, content):
    path = write(tmp_path, "p.csv", content)
    with pytest.raises(DataError, match=r"p\.csv is empty"):
        load_rows(path)


def test_csv_header_only_has_no_rows(tmp_path):
    path = write(tmp_path, "p.csv", "act,prompt\n")
    with pytest.raises(DataError, match=r"p\.csv has no rows with both an act and a prompt"):
        load_rows(path)


def test_csv_missing_column_error_names_it_and_lists_the_columns(tmp_path):
    path = write(tmp_path, "p.csv", "act,text\nPoet,Write poems.\n")
    with pytest.raises(DataError, match=r"no 'prompt' column \(columns found: 'act', 'text'\)"):
        load_rows(path)


def test_csv_both_columns_missing_are_both_named(tmp_path):
    path = write(tmp_path, "p.csv", "name,text\nPoet,Write poems.\n")
    with pytest.raises(DataError, match=r"no 'act' or 'prompt' column"):
        load_rows(path)


def test_csv_column_names_match_ignoring_case_and_spaces(tmp_path):
    path = write(tmp_path, "p.csv", " Act , PROMPT\nPoet,Write poems.\n")
    assert load_rows(path) == rows_of(("Poet", "Write poems."))


def test_csv_extra_columns_are_ignored(tmp_path):
    path = write(
        tmp_path, "p.csv", "contributor,act,for_devs,prompt,stars\nme,Poet,FALSE,Write poems.,5\n"
    )
    assert load_rows(path) == rows_of(("Poet", "Write poems."))


def test_whitespace_is_trimmed_and_rows_missing_act_or_prompt_are_dropped(tmp_path):
    content = 'act,prompt\n  Poet  ,"  Write poems.\n"\n,Orphan prompt.\nNo prompt,   \n   ,   \nRapper,Rap.\n'
    path = write(tmp_path, "p.csv", content)
    assert load_rows(path) == rows_of(("Poet", "Write poems."), ("Rapper", "Rap."))


def test_csv_100k_character_prompt_loads(tmp_path):
    long = "word " * 20_000 + "end"
    path = write(tmp_path, "p.csv", f'act,prompt\nTalker,"{long}"\n')
    (row,) = load_rows(path)
    assert len(row.prompt) == len(long) > 100_000


def test_csv_10k_rows_load_fast(tmp_path):
    lines = ["act,prompt"] + [f'Act {i},"I want you to act as number {i}, please."' for i in range(10_000)]
    path = write(tmp_path, "p.csv", "\n".join(lines) + "\n")
    start = time.perf_counter()
    rows = load_rows(path)
    assert len(rows) == 10_000
    assert time.perf_counter() - start < 1.0


# --- duplicates, type column ------------------------------------------------------------


def test_duplicated_act_names_get_numbered_in_file_order(tmp_path):
    content = "act,prompt\nLinux Terminal,one\nPoet,p\nLinux Terminal,two\nLinux Terminal,three\n"
    rows = load_rows(write(tmp_path, "p.csv", content))
    assert [(r.act, r.prompt, r.group) for r in rows] == [
        ("Linux Terminal", "one", "linux terminal"),
        ("Poet", "p", "poet"),
        ("Linux Terminal (2)", "two", "linux terminal"),
        ("Linux Terminal (3)", "three", "linux terminal"),
    ]


def test_duplicate_suffix_never_collides_with_a_real_name(tmp_path):
    content = "act,prompt\nPoet,one\nPoet (2),two\nPoet,three\n"
    acts = [r.act for r in load_rows(write(tmp_path, "p.csv", content))]
    assert acts == ["Poet", "Poet (2)", "Poet (3)"]


def test_group_is_casefolded_and_whitespace_normalised(tmp_path):
    content = "act,prompt\nChess  Player,one\nchess player,two\n"
    rows = load_rows(write(tmp_path, "p.csv", content))
    assert [r.act for r in rows] == ["Chess Player", "chess player"]  # a name shows on one line, single-spaced
    assert {r.group for r in rows} == {"chess player"}


def test_type_column_keeps_text_rows_only(tmp_path):
    content = "act,prompt,type\nPoet,p,TEXT\nPainter,draw,IMAGE\nParser,json,STRUCTURED\nRapper,r,text\n"
    rows = load_rows(write(tmp_path, "p.csv", content))
    assert [r.act for r in rows] == ["Poet", "Rapper"]


def test_type_column_is_ignored_when_not_text_only(tmp_path):
    content = "act,prompt,type\nPoet,p,TEXT\nPainter,draw,IMAGE\n"
    rows = load_rows(write(tmp_path, "p.csv", content), text_only=False)
    assert [r.act for r in rows] == ["Poet", "Painter"]


def test_type_column_without_text_rows_is_an_error(tmp_path):
    content = "act,prompt,type\nPainter,draw,IMAGE\nParser,json,STRUCTURED\n"
    with pytest.raises(DataError, match=r"no rows of type TEXT \(types found: IMAGE, STRUCTURED\)"):
        load_rows(write(tmp_path, "p.csv", content))


# --- JSON, JSON Lines, Parquet ----------------------------------------------------------


def test_json_list_of_objects(tmp_path):
    data = [{"act": "Poet", "prompt": " Write poems. ", "type": "TEXT"}, {"act": "Empty", "prompt": None}]
    assert load_rows(write(tmp_path, "p.json", json.dumps(data))) == rows_of(("Poet", "Write poems."))


def test_json_object_of_column_lists(tmp_path):
    data = {"act": ["Poet", "Rapper"], "prompt": ["Write poems.", "Rap."]}
    rows = load_rows(write(tmp_path, "p.json", json.dumps(data)))
    assert rows == rows_of(("Poet", "Write poems."), ("Rapper", "Rap."))


def test_json_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "p.json", '[\n{"act": "Poet", "prompt": "p"},\n{"act": }\n]')
    with pytest.raises(DataError, match=r"p\.json line 3 is not valid JSON"):
        load_rows(path)


def test_json_of_the_wrong_shape_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"list of objects or an object of column lists"):
        load_rows(write(tmp_path, "p.json", '{"act": "Poet", "prompt": "p"}'))


def test_jsonl_one_object_per_line(tmp_path):
    content = '{"act": "Poet", "prompt": "Write poems."}\n\n{"act": "Rapper", "prompt": "Rap.", "x": 1}\n'
    rows = load_rows(write(tmp_path, "p.jsonl", content))
    assert rows == rows_of(("Poet", "Write poems."), ("Rapper", "Rap."))


def test_jsonl_keeps_line_and_paragraph_separators_inside_a_prompt(tmp_path):
    import json

    prompt = "First part\u2028second part\x85third"  # legal inside a JSON string; splitlines() would cut there
    content = json.dumps({"act": "Poet", "prompt": prompt}, ensure_ascii=False) + "\n"
    assert [r.prompt for r in load_rows(write(tmp_path, "p.jsonl", content))] == [prompt]


def test_jsonl_bad_line_is_named(tmp_path):
    content = '{"act": "Poet", "prompt": "p"}\n{"act": "Rapper", "prompt": \n'
    with pytest.raises(DataError, match=r"p\.jsonl line 2 is not valid JSON"):
        load_rows(write(tmp_path, "p.jsonl", content))


def test_parquet_file(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "p.parquet"
    pd.DataFrame(
        {
            "act": ["Poet", "Painter", None],
            "prompt": ["Write poems.", "Draw.", "orphan"],
            "type": ["TEXT", "IMAGE", "TEXT"],
        }
    ).to_parquet(path)
    assert load_rows(str(path)) == rows_of(("Poet", "Write poems."))


def test_corrupt_parquet_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"p\.parquet is not a readable Parquet file"):
        load_rows(write(tmp_path, "p.parquet", b"not parquet at all"))


# --- local paths vs Hub ids -------------------------------------------------------------


@pytest.mark.parametrize(
    "source", ["missing.csv", "./missing", "/no/such/file", "~/no-such-dir-xyz/p", "~no-such-user-xyz/p.csv"]
)
def test_missing_local_file_is_an_error(source):
    with pytest.raises(DataError, match=r"no dataset file at"):
        load_rows(source)


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path, "p.csv", "act,prompt\nPoet,Write poems.\n")
    assert load_rows("~/p.csv") == rows_of(("Poet", "Write poems."))


def test_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"is a folder"):
        load_rows(str(tmp_path))


def test_unknown_suffix_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"p\.txt is not a \.csv"):
        load_rows(write(tmp_path, "p.txt", "act,prompt\nPoet,p\n"))


class FakeDataset:
    def __init__(self, columns: dict[str, list]):
        self.columns = columns

    def to_dict(self) -> dict[str, list]:
        return self.columns


def fake_datasets(monkeypatch, load_dataset) -> list:
    calls: list = []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return load_dataset(*args, **kwargs)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=recording))
    monkeypatch.setattr("tuning.data.hub_reachable", lambda *args, **kwargs: True)  # the Hub answers
    return calls


def test_hub_id_goes_through_datasets_train_split(monkeypatch):
    calls = fake_datasets(monkeypatch, lambda *a, **k: FakeDataset({"act": ["Poet"], "prompt": ["p"]}))
    assert load_rows("fka/awesome-chatgpt-prompts") == rows_of(("Poet", "p"))
    assert calls == [(("fka/awesome-chatgpt-prompts",), {"split": "train"})]


def test_hub_failure_is_one_sentence(monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub\nlong traceback detail")

    fake_datasets(monkeypatch, fail)
    expected = r"^could not load the dataset 'x/y' from the Hugging Face Hub: Couldn't reach 'x/y' on the Hub$"
    with pytest.raises(DataError, match=expected):
        load_rows("x/y")


# --- split_by_act -----------------------------------------------------------------------


# Made-up datasets shaped like the snapshots, so the split's properties are checked anywhere:
# 209 rows of 204 acts (five acts come twice, differing only by case or spacing), and 221 rows
# of 221 acts.
REPEATED = rows_of(*[(f"Act {i}", f"prompt {i}") for i in range(204)],
                   *[(f"ACT  {i}", f"another prompt {i}") for i in (3, 50, 51, 120, 203)])
DISTINCT = rows_of(*[(f"Role {i}", f"prompt {i}") for i in range(221)])


def test_split_is_deterministic_for_a_seed():
    assert split_by_act(REPEATED, 0.1, seed=3) == split_by_act(REPEATED, 0.1, seed=3)


def test_split_differs_between_seeds():
    assert split_by_act(REPEATED, 0.1, seed=0)[1] != split_by_act(REPEATED, 0.1, seed=1)[1]


def test_split_does_not_depend_on_input_order():
    held = split_by_act(DISTINCT, 0.2, seed=0)[1]
    held_reversed = split_by_act(DISTINCT[::-1], 0.2, seed=0)[1]
    assert {r.act for r in held} == {r.act for r in held_reversed}


@pytest.mark.parametrize("rows", [REPEATED, DISTINCT], ids=["repeated acts", "distinct acts"])
@pytest.mark.parametrize("seed", range(5))
def test_split_never_puts_a_group_on_both_sides(rows, seed):
    train, held = split_by_act(rows, 0.5, seed)
    assert not {r.group for r in train} & {r.group for r in held}
    assert sorted(train + held, key=rows.index) == rows


def test_split_keeps_duplicates_together():
    rows = rows_of(("Poet", "a"), ("Rapper", "b"), ("poet", "c"), ("Chef", "d"))
    for seed in range(20):
        train, held = split_by_act(rows, 0.5, seed)
        assert sum(r.group == "poet" for r in held) in (0, 2)


def test_split_holds_out_the_rounded_share_of_groups():
    assert len({r.group for r in REPEATED}) == 204  # the repeated acts are one group each
    train, held = split_by_act(REPEATED, 0.1, seed=0)
    assert len({r.group for r in held}) == 20  # round(20.4)
    assert len(train) + len(held) == 209


def test_split_preserves_row_order_on_each_side():
    rows = rows_of(*[(f"Act {i}", "p") for i in range(30)])
    train, held = split_by_act(rows, 0.3, seed=0)
    assert train == [r for r in rows if r in train]
    assert held == [r for r in rows if r in held]


def test_split_with_fraction_zero_holds_out_nothing():
    rows = rows_of(("Poet", "a"), ("Rapper", "b"))
    assert split_by_act(rows, 0.0, seed=0) == (rows, [])


def test_split_holds_out_at_least_one_group():
    rows = rows_of(("Poet", "a"), ("Rapper", "b"), ("Chef", "c"))  # round(3 * 0.01) == 0
    assert len(split_by_act(rows, 0.01, seed=0)[1]) == 1


def test_split_of_a_single_group_holds_out_nothing():
    rows = rows_of(("Poet", "a"), ("poet", "b"))
    assert split_by_act(rows, 0.5, seed=0) == (rows, [])


@pytest.mark.parametrize("fraction", [-0.1, 0.51, 1.0])
def test_split_fraction_outside_0_to_half_is_an_error(fraction):
    with pytest.raises(DataError, match=r"held_out_fraction must be between 0 and 0\.5"):
        split_by_act(rows_of(("Poet", "a")), fraction)


# --- find_act, select -------------------------------------------------------------------

ACTS = rows_of(("Linux Terminal", "one"), ("Poet", "p"), ("Linux Terminal (2)", "two"), ("Chef", "c"))


def test_find_act_exact():
    assert find_act(ACTS, "Linux Terminal (2)").prompt == "two"


def test_find_act_ignores_case_and_extra_spaces():
    assert find_act(ACTS, "  linux   TERMINAL ").prompt == "one"


def test_find_act_exact_match_wins_over_a_case_variant():
    rows = rows_of(("Chess Player", "first"), ("chess player", "second"))
    assert find_act(rows, "chess player").prompt == "second"


def test_find_act_suggests_close_names():
    with pytest.raises(DataError, match=r"^no act named 'Linux Termnal'; did you mean 'Linux Terminal'"):
        find_act(ACTS, "Linux Termnal")


def test_find_act_suggests_despite_case():
    with pytest.raises(DataError, match=r"did you mean 'Linux Terminal'"):
        find_act(ACTS, "linux termnal")


def test_find_act_without_close_names_has_no_suggestion():
    with pytest.raises(DataError, match=r"^no act named 'Quantum Xylophone'$"):
        find_act(ACTS, "Quantum Xylophone")


@pytest.mark.parametrize("name", ["", "   "])
def test_find_act_empty_name_is_an_error(name):
    with pytest.raises(DataError, match=r"act name is empty"):
        find_act(ACTS, name)


def test_select_keeps_the_given_order_without_duplicates():
    chosen = select(ACTS, ["Chef", "poet", "Chef", "Linux Terminal (2)", "POET"])
    assert [r.act for r in chosen] == ["Chef", "Poet", "Linux Terminal (2)"]


def test_select_unknown_act_is_an_error():
    with pytest.raises(DataError, match=r"no act named 'Nobody'"):
        select(ACTS, ["Poet", "Nobody"])


def test_select_nothing_is_nothing():
    assert select(ACTS, []) == []


@pytest.mark.parametrize("source", ["", "  "])
def test_empty_source_is_an_error(source):
    with pytest.raises(DataError, match=r"no dataset given"):
        load_rows(source)


def test_a_100_mb_csv_loads_cleanly(tmp_path):
    # The live dataset keeps growing; a file of this size must load, not crash or hang.
    path = tmp_path / "big.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["act", "prompt"])
        for i in range(10_000):
            writer.writerow([f"Act {i}", f"word{i} " * 1_200])
    assert path.stat().st_size > 100 * 2**20
    rows = load_rows(str(path))
    assert len(rows) == 10_000 and rows[-1].prompt.startswith("word9999 word9999")


def test_an_act_written_with_a_combining_accent_is_the_same_act():
    from tuning.data import normalise

    composed, decomposed = "Caf\u00e9 Owner", "Cafe\u0301 Owner"
    assert normalise(composed) == normalise(decomposed)
    rows = [Row(composed, "p1", normalise(composed)), Row(decomposed, "p2", normalise(decomposed))]
    rows += [Row(f"Act {i}", "p", normalise(f"Act {i}")) for i in range(18)]
    for seed in range(10):  # never one on each side
        train, held = split_by_act(rows, 0.2, seed)
        assert len({r.group for r in train} & {r.group for r in held}) == 0


def test_a_crlf_file_gives_the_same_prompts_and_names_as_an_lf_file(tmp_path):
    lf = 'act,prompt\n"Poet","line one\nline two"\n"Chef ","cook"\n'
    crlf = lf.replace("\n", "\r\n")
    assert load_rows(write(tmp_path, "lf.csv", lf)) == load_rows(write(tmp_path, "crlf.csv", crlf))
    assert load_rows(write(tmp_path, "crlf2.csv", crlf))[0].prompt == "line one\nline two"


def test_act_names_are_one_line_without_control_characters(tmp_path):
    content = 'act,prompt\n"Linux\nTerminal","ls"\n"\x1b[31mRed\x1b[0m\tAct","p"\n"  Poet  ","p"\n'
    assert [r.act for r in load_rows(write(tmp_path, "p.csv", content))] == ["Linux Terminal", "[31mRed[0m Act", "Poet"]


def test_columns_that_differ_only_by_case_are_an_error_not_dropped_rows(tmp_path):
    content = '[{"Act": "A", "prompt": "p"}, {"act": "B", "prompt": "q"}]'
    with pytest.raises(DataError, match="2 columns that name the act: 'Act', 'act'; keep one"):
        load_rows(write(tmp_path, "p.json", content))


def test_a_prompt_that_is_a_list_is_an_error_not_its_python_repr(tmp_path):
    content = '{"act": "A", "prompt": ["a", "b"]}\n'
    with pytest.raises(DataError, match="p.jsonl row 1: the prompt is a list, not text"):
        load_rows(write(tmp_path, "p.jsonl", content))
