"""The run report: one self-contained report.html and the model card, from a tiny trained adapter, offline."""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import pytest
from huggingface_hub import ModelCard

from tuning import adapters
from tuning.cli import main
from tuning.config import TuneConfig
from tuning.data import load_rows
from tuning.evaluate import compare
from tuning.generate import Decoding
from tuning.model import SoftPrompt
from tuning.report import Findings, build_report, loss_chart, model_card, report_html
from tuning.events import Done
from tuning.rows import encode_rows, held_out_for, split_rows
from tuning.train import train

PNG = b"\x89PNG\r\n\x1a\n"
SHORT = Decoding(max_new_tokens=8)


def trained_soft(base, csv) -> SoftPrompt:
    """A real prompt: 4 virtual tokens trained 2 epochs on the tiny model (6 training acts, 2 held out)."""
    config = TuneConfig(model=base.model_id, dataset=str(csv), num_virtual_tokens=4, epochs=2, batch_size=2,
                        learning_rate=0.1, held_out_fraction=0.25, precision="fp32")
    train_rows, held = split_rows(load_rows(str(csv)), config)
    done = [e for e in train(base, train_rows, config, held) if isinstance(e, Done)][0]
    return done.soft


@pytest.fixture(scope="module")
def report(base, tiny_csv, tmp_path_factory):
    """(soft, rows, report.html text, README.md path) of a report with 2 samples."""
    soft = trained_soft(base, tiny_csv)
    rows = load_rows(str(tiny_csv))
    out = tmp_path_factory.mktemp("report")
    html_path, card_path = build_report(base, soft, rows, str(tiny_csv), "poet-4x2", out, SHORT, samples=2)
    return soft, rows, html_path.read_text(encoding="utf-8"), card_path


def test_report_is_one_file_over_5_kb_with_the_chart_inline(report):
    html = report[2]
    assert len(html.encode()) > 5 * 1024
    inline = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(inline) == 1 and base64.b64decode(inline[0]).startswith(PNG)


def test_report_loads_nothing_from_the_network(report):
    html = report[2].lower()
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)


def test_report_shows_the_name_perplexities_samples_and_machine(report, base, tiny_csv):
    soft, rows, html, _ = report
    held = held_out_for(soft, rows, str(tiny_csv))
    expected = compare(base, soft, encode_rows(base, held, soft.config), soft.config.batch_size)
    assert "poet-4x2" in html
    for who in ("base", "tuned"):
        assert f"{expected[who].perplexity:.2f}" in html
    assert expected["tuned"].perplexity < expected["base"].perplexity  # the prompt learned something
    assert "Samples: base vs tuned" in html and f"<h3>{held[0].act}</h3>" in html and f"<h3>{held[1].act}</h3>" in html
    assert "Nearest vocabulary tokens" in html and html.count("<tr><td class=n>") >= soft.num_virtual_tokens
    for word in ("torch", "transformers", "peft", "training time", "training precision"):
        assert word in html


def test_report_escapes_every_text(report, base):
    soft = report[0]
    hostile = "<script>alert(1)</script>"
    sample = {"act": hostile, "input": hostile, "base_text": hostile, "tuned_text": "</div><img src=x>",
              "base_rouge": 0.0, "tuned_rouge": 0.0}
    findings = Findings(name=hostile, soft=dataclasses.replace(soft, meta={**soft.meta, "precision": hostile}),
                        dataset=hostile, held_out_acts=[hostile], perplexity=None,
                        rouge={"base": 0.0, "tuned": 0.0, "rows": [sample]}, nearest=[[(hostile, 0.5)]],
                        chart=PNG, machine={"CPU": hostile}, seconds=1.0)
    html = report_html(findings)
    assert "<script" not in html and "<img src=x>" not in html and "&lt;script&gt;" in html


def test_loss_chart_survives_a_meta_without_history(report):
    soft = report[0]
    for history in (None, "not a dict", {"step": [1, 2], "train_loss": [1.0]}):
        assert loss_chart(dataclasses.replace(soft, meta={**soft.meta, "history": history})).startswith(PNG)


def test_card_has_the_hub_metadata(report):
    soft, _, _, card_path = report
    text = card_path.read_text(encoding="utf-8")
    assert "library_name: peft" in text and "base_model: tiny-gpt2" in text and "- prompt-tuning" in text
    card = ModelCard.load(card_path)
    assert card.data.library_name == "peft" and card.data.base_model == soft.base_model
    assert card.data.pipeline_tag == "text-generation" and card.data.tags == ["prompt-tuning", "peft"]
    assert card.data.datasets is None  # a local csv is no Hub dataset
    assert (card_path.parent / "loss.png").read_bytes().startswith(PNG) and "](loss.png)" in card.text


def test_card_body_has_metrics_usage_and_samples(report, base, tiny_csv):
    soft, rows, _, card_path = report
    text = ModelCard.load(card_path).text
    held = held_out_for(soft, rows, str(tiny_csv))
    expected = compare(base, soft, encode_rows(base, held, soft.config), soft.config.batch_size)
    assert f"{expected['tuned'].perplexity:.2f}" in text and f"{expected['base'].perplexity:.2f}" in text
    assert 'PeftModel.from_pretrained(base, "adapters/poet-4x2")' in text and "use_cache=False" in text
    assert "inputs_embeds" in text  # the note on PEFT's cached generate
    assert f"### {held[0].act}" in text and "**tuned**" in text


def test_card_names_a_hub_dataset_and_the_repo(report):
    soft = report[0]
    soft = dataclasses.replace(soft, meta={**soft.meta, "dataset": "fka/awesome-chatgpt-prompts"})
    card = model_card(soft, "poet", {"held_out_acts": 0}, [], repo_id="someone/poet", base_model="openai-community/gpt2")
    assert card.data.datasets == ["fka/awesome-chatgpt-prompts"] and card.data.base_model == "openai-community/gpt2"
    assert 'PeftModel.from_pretrained(base, "someone/poet")' in card.text and "No held-out acts" in card.text


def test_report_with_shots_has_a_written_row_scored_by_the_same_held_out_call(report, base, tiny_csv, tmp_path):
    from tuning import written
    from tuning.evaluate import held_out

    soft, rows = report[0], report[1]
    html_path, card_path = build_report(base, soft, rows, str(tiny_csv), "poet-4x2", tmp_path, SHORT, samples=1, shots=2)
    html, card = html_path.read_text(encoding="utf-8"), ModelCard.load(card_path).text
    examples = written.for_adapters(base, [soft], rows, str(tiny_csv), 2)
    expected = held_out(base, soft, held_out_for(soft, rows, str(tiny_csv)), written=examples)["written"]
    label = f"written ({examples.describe()})"
    assert (f"<tr><td>{label}</td><td class=n>{round(expected.loss, 4)}</td>"
            f"<td class=n>{round(expected.perplexity, 2)}</td>") in html
    assert f"| {label} | {expected.loss:.4f} | {expected.perplexity:.2f} |" in card
    for act in (r.act for r in examples.examples):
        assert act in html.split("Written: ")[1].split("</p>")[0] and act in card.split("Written: ")[1].split("\n")[0]
    assert html.count("<b>written</b> (ROUGE-L ") == 1  # the one sample, three continuations side by side
    assert "Samples: base, written and tuned" in html and card.count("**written** (ROUGE-L ") == 1


def test_report_without_shots_has_no_written_row(report):
    html, card = report[2], report[3].read_text(encoding="utf-8")
    assert "written (" not in html and "<b>written</b>" not in html and "| written" not in card


@pytest.mark.parametrize("command", ["report", "push", "pull"])
def test_share_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and f"usage: python -m tuning {command}" in capsys.readouterr().out


def test_cli_report_end_to_end(report, tiny_model_dir, tmp_path, capsys):
    root = tmp_path / "adapters"
    # the trained prompt, recorded as trained on the tiny model saved to disk, so `report` can load it by path
    adapters.save(dataclasses.replace(report[0], base_model=str(tiny_model_dir)), "cli-poet", root)
    out = tmp_path / "out"
    assert main(["--adapters-dir", str(root), "report", "cli-poet", "--out", str(out), "--samples", "1",
                 "--max-new-tokens", "8", "--precision", "fp32"]) == 0
    assert f"wrote {out / 'report.html'} and {out / 'README.md'}" in capsys.readouterr().out
    html = (out / "report.html").read_text(encoding="utf-8")
    assert len(html.encode()) > 5 * 1024 and 'src="data:image/png;base64,' in html and "cli-poet" in html
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "library_name: peft" in card and f"base_model: {tiny_model_dir}" in card and "- prompt-tuning" in card
    assert f"PeftModel.from_pretrained(base, {json.dumps((root / 'cli-poet').as_posix())})" in card  # where it is


def test_cli_report_shots_adds_the_written_row(report, tiny_model_dir, tmp_path, capsys):
    root = tmp_path / "adapters"
    adapters.save(dataclasses.replace(report[0], base_model=str(tiny_model_dir)), "cli-poet", root)
    out = tmp_path / "out"
    assert main(["--adapters-dir", str(root), "report", "cli-poet", "--out", str(out), "--samples", "0",
                 "--precision", "fp32", "--shots", "1"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert re.search(r"<tr><td>written \(1 example · \d+ tokens\)</td><td class=n>[\d.]+</td>", html)
    assert "Base, written and tuned scored on the same" in html


def test_cli_report_of_an_unknown_adapter_is_one_line(tmp_path, capsys):
    assert main(["--adapters-dir", str(tmp_path), "report", "nope", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == "error: no adapter named 'nope'\n" and not (tmp_path / "out").exists()
