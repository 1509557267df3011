"""The docs hold together: every relative link resolves, the README stays a user's page, the pages exist.

The README is for using the app and the CLI; what was measured lives in docs/ (quality, decoding,
performance, architecture, testing). A link is checked the way GitHub renders it: the file must
exist, and a `#anchor` must be the slug of a heading in the target (lower case, punctuation
dropped, spaces to hyphens, `-1`, `-2` for repeats), so `[GPU](docs/performance.md#gpu-issue-12)`
fails as soon as the heading "GPU (issue 12)" is renamed.
"""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("quality", "decoding", "performance", "architecture", "testing")
MAX_README_LINES = 400

pytestmark = pytest.mark.timeout(60)

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def body(path: Path) -> str:
    """The Markdown without YAML front matter and fenced code (a `# comment` in bash is no heading)."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        text = text[end + 5:] if end != -1 else text
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text.

    >>> slug("GPU (issue 12)"), slug("Full length: learning rate 0.1 with a 10% warm-up")
    ('gpu-issue-12', 'full-length-learning-rate-01-with-a-10-warm-up')
    >>> slug("3 epochs = 12 steps"), slug("`python -m tuning`, 5 × 5")
    ('3-epochs--12-steps', 'python--m-tuning-5--5')
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug in `path`, numbered as GitHub numbers repeats (`x`, `x-1`, `x-2`)."""
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(body(path)):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", body(path))
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^//", t, re.I)]


def broken(path: Path, target: str) -> str | None:
    """Why `target` (a link in `path`) does not resolve, or None when it does."""
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
        return f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor:
        if dest.is_dir() or dest.suffix != ".md":
            return f"{target}: an anchor into something that is not a Markdown page"
        if anchor not in anchors(dest):
            return f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("page", PAGES)
def test_each_docs_page_exists_and_opens_with_a_title_and_an_intro(page):
    lines = (ROOT / "docs" / f"{page}.md").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("# "), f"docs/{page}.md should open with its title"
    assert lines[1] == "" and lines[2] and not lines[2].startswith("#"), f"docs/{page}.md: an intro paragraph first"


def test_the_readme_stays_within_400_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move records of experiments to docs/"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    links = relative_links(path)
    problems = [why for target in links if (why := broken(path, target))]
    assert not problems, "\n".join(problems)


def test_the_readme_links_every_docs_page():
    links = {t.partition("#")[0] for t in relative_links(ROOT / "README.md")}
    assert {f"docs/{p}.md" for p in PAGES} <= links


def test_the_module_map_names_every_module():
    """docs/architecture.md has a line for app.py and every module in tuning/ and ui/ (keep it true when files move)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = ["app.py"] + sorted(f"tuning/{p.name}" for p in (ROOT / "tuning").glob("*.py")) \
        + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "ui").rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"add to the module map in docs/architecture.md: {missing}"


@pytest.mark.parametrize("heading, anchor", [
    ("GPU (issue 12)", "gpu-issue-12"),
    ("On an AVX2-only AMD EPYC (issue 12, 2026-12-04)", "on-an-avx2-only-amd-epyc-issue-12-2026-12-04"),
    ("Full length: learning rate 0.3 with a 10% warm-up (the default now)",
     "full-length-learning-rate-03-with-a-10-warm-up-the-default-now"),
    ("MCP and the documented API", "mcp-and-the-documented-api"),
    ("Share: the Hub and the run report", "share-the-hub-and-the-run-report"),
])
def test_slugs_follow_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


# The tests each row of docs/testing.md's reliability table counts, by file in the order of its "file" column:
# a name is one test function, a name ending in "*" every test function starting so. The "cases" cell
# must read the files' counts joined by " + ", each the collected cases of those tests (parametrize
# marks multiplied), so a case added or removed changes the count the table must show.
RELIABILITY_ROWS = {
    "hostile input through the raw API": {"test_hardening": [
        "test_hostile_generate_input_gets_one_sentence_and_the_app_keeps_serving",
        "test_hostile_training_settings_get_one_sentence_and_the_app_keeps_serving",
        "test_hostile_text_fields_get_one_sentence"]},
    "unusual but valid text": {"test_hardening": [
        "test_unusual_but_valid_text_simply_works", "test_one_character_past_the_input_limit_is_refused"]},
    "context budget": {
        "test_generate": ["test_input_exactly_at_the_context_limit_is_kept",
                          "test_input_one_past_the_limit_is_cut_from_the_front", "test_no_room_for_input_is_refused",
                          "test_long_input_generates_within_the_context"],
        "test_train": ["test_rows_end_with_eos_and_long_rows_are_cut_to_the_context"],
        "test_hardening": ["test_new_tokens_that_leave_no_room_in_the_context_are_refused_clearly"]},
    "dataset files": {"test_data": [
        "test_csv_*", "test_json_*", "test_jsonl_*", "test_parquet_file", "test_corrupt_parquet_*",
        "test_a_100_mb_csv_*", "test_a_crlf_file_*", "test_whitespace_is_trimmed_*", "test_type_column_*",
        "test_columns_that_differ_only_by_case_*", "test_a_prompt_that_is_a_list_*", "test_missing_local_file_*",
        "test_folder_is_an_error", "test_unknown_suffix_is_an_error", "test_empty_source_is_an_error"]},
    "a 10,000-row dataset in the app": {"test_hardening": ["test_a_10000_row_dataset_*"]},
    "adapter uploads": {
        "test_hardening": ["test_a_good_upload_loads_without_ever_unpickling",
                           "test_a_pickle_only_adapter_is_refused_without_unpickling",
                           "test_hostile_adapter_is_refused_and_nothing_is_saved"],
        "test_adapters": ["test_invalid_folders_are_refused"]},
    "zip archives": {
        "test_hardening": ["test_a_zip_*", "test_a_deeply_nested_zip_is_refused",
                           "test_an_upload_that_is_not_a_zip_is_refused",
                           "test_an_upload_with_a_member_pointing_outside_*", "test_an_upload_with_a_link_*"],
        "test_app": ["test_unzip_refuses_*", "test_upload_refuses_a_hostile_zip"]},
    "hostile names": {"test_hardening": ["test_hostile_names_are_refused_and_touch_nothing"],
                      "test_adapters": ["test_hostile_names_are_refused_and_what_they_point_at_survives"]},
    "Gradio's file route": {"test_hardening": ["test_the_file_route_serves_nothing_outside_what_the_app_hands_out"]},
    "faults": {
        "test_hardening": ["test_a_failed_save_*", "test_a_failed_delete_or_download_*", "test_a_nan_loss_*",
                           "test_out_of_memory_*", "test_a_cancelled_or_abandoned_run_*"],
        "test_adapters": ["test_failed_*", "test_leftover_folders_of_a_crashed_save_*"],
        "test_train": ["test_nan_loss_ends_the_run_without_a_result"],
        "test_browser": ["test_closing_the_tab_stops_its_training"]},
    "load": {"test_load": ["test_eight_clients_generating_while_others_train_each_get_their_own_answer"]},
    "full queue": {"test_hardening": ["test_a_full_queue_answers_with_a_clear_message"]},
    "disk": {"test_hardening": ["test_the_number_of_saved_adapters_is_capped",
                                "test_the_total_size_of_saved_adapters_is_capped",
                                "test_a_sessions_download_folder_is_removed_when_it_ends",
                                "test_an_upload_leaves_no_extraction_folder"]},
}


def parametrized_cases(module: str, patterns: list[str]) -> int:
    """How many cases pytest collects from the test functions of tests/<module>.py that `patterns` name.

    Read from the source (importing the modules would load Gradio and torch): each function's
    `pytest.mark.parametrize` argument lists, multiplied, a list given by a module constant's name
    counted where it is defined. A pattern that names nothing fails, so a renamed test is noticed.
    """
    tree = ast.parse((ROOT / "tests" / f"{module}.py").read_text(encoding="utf-8"))
    constants = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    total = 0
    for pattern in patterns:
        named = [f for f in functions if f.name == pattern or pattern.endswith("*") and f.name.startswith(pattern[:-1])]
        assert named, f"tests/{module}.py has no test {pattern}"
        for function in named:
            n = 1
            for mark in function.decorator_list:
                if isinstance(mark, ast.Call) and ast.unparse(mark.func).endswith("mark.parametrize"):
                    values = mark.args[1]
                    values = constants.get(values.id, values) if isinstance(values, ast.Name) else values
                    n *= len(values.keys if isinstance(values, ast.Dict) else values.elts
                             if isinstance(values, (ast.List, ast.Tuple)) else eval(ast.unparse(values)))
            total += n
    return total


def reliability_table() -> dict[str, tuple[list[str], str]]:
    """docs/testing.md's reliability table: {test group: (its files, its cases cell)}."""
    text = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    table = text.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): ([f.strip() for f in cells[1].split(",")], cells[2].strip()) for cells in rows[1:]}


def test_the_reliability_tables_counts_are_the_tests_it_names():
    table = reliability_table()
    assert len(table) == len(RELIABILITY_ROWS), "a row was added or removed: name its tests in RELIABILITY_ROWS"
    for group, (files, cases) in table.items():
        key = next((k for k in RELIABILITY_ROWS if group.startswith(k)), None)
        assert key is not None, f"name the tests of the row '{group[:50]}…' in RELIABILITY_ROWS"
        assert files == list(RELIABILITY_ROWS[key]), f"{key}: the file column should read {list(RELIABILITY_ROWS[key])}"
        counted = " + ".join(str(parametrized_cases(m, names)) for m, names in RELIABILITY_ROWS[key].items())
        assert cases == counted, f"{key}: the table says {cases} cases, the tests it names have {counted}"
