"""A run report anyone can open: one self-contained `report.html`, plus the model card (`README.md`).

`measure()` computes what the report shows, on the model at hand: held-out perplexity base vs
tuned (evaluate.held_out, the adapter's own batch size; with `shots`, the base model with that
many written examples of training acts too, written.py), ROUGE-L and base-vs-tuned samples for a
few held-out acts (evaluate.rouge_compare), each virtual token's nearest vocabulary tokens, and
the loss chart drawn from the adapter's saved history. `report_html()` and `model_card()` turn
those findings into a page and a Hugging Face model card; `write_report()` writes both, with the
chart as `loss.png` next to the card.

The page needs no network: its one image is inlined as `data:image/png;base64,...`, its style
is inline, it has no script, and every text in it (act names and prompts come from a dataset,
meta from a possibly uploaded adapter) goes through `html.escape`.

What it does not do: train, push to the Hub (hub.py), or choose which adapter to report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import written as written_prompt
from .adapters import CONFIG_FILE, WEIGHTS_FILE
from .data import Row
from .evaluate import Metrics, check_rouge_fits, held_out, nearest_tokens, rouge_compare
from .formatting import duration
from .generate import Decoding
from .hardware import cpu_model
from .history import held_out_points
from .rows import held_out_for
from .model import Base, SoftPrompt

CHART_FILE = "loss.png"  # next to README.md: the card shows it by this relative name
CARD_FILE = "README.md"
REPORT_FILE = "report.html"
NEAREST_K = 5


@dataclass
class Findings:
    """Everything the report and the card show about one adapter, computed once."""

    name: str
    soft: SoftPrompt
    dataset: str
    held_out_acts: list[str]
    perplexity: dict[str, Metrics] | None  # evaluate.held_out's result; None without held-out rows
    rouge: dict | None  # rouge_compare()'s result: base, tuned, rows (the samples); None with samples=0
    nearest: list[list[tuple[str, float]]]  # [num_virtual_tokens][NEAREST_K] (token, cosine)
    chart: bytes  # the loss chart, PNG
    machine: dict[str, str]
    seconds: float  # how long measuring took
    written: written_prompt.Written | None = None  # the examples scored as "written" in perplexity and rouge


def measure(
    base: Base,
    soft: SoftPrompt,
    rows: Sequence[Row],
    dataset: str,
    name: str,
    decoding: Decoding | None = None,
    samples: int = 3,
    shots: int = 0,
) -> Findings:
    """Score `soft` against the base model on the held-out acts of `rows` and draw its loss chart.

    The held-out acts are the ones the adapter recorded when it was trained on `dataset`, else the
    seeded split's (rows.held_out_for). `samples` held-out acts are decoded (greedy, 64 new
    tokens unless `decoding` says otherwise) for ROUGE-L and the side-by-side samples; 0 skips that.
    `shots` > 0: the base model with that many training acts' prompts written in front
    (written.for_adapters) is scored too, as "written", by the same calls; refused before any
    scoring when it does not fit the context.
    """
    t0 = time.perf_counter()
    held = held_out_for(soft, rows, dataset)
    examples = None
    if shots and held:
        examples = written_prompt.for_adapters(base, [soft], rows, dataset, shots)
        check_rouge_fits(base, examples, held[:samples], decoding)
    perplexity = held_out(base, soft, held, written=examples) if held else None
    in_front = None if examples is None else written_prompt.embeddings(base, examples)
    rouge = rouge_compare(base, soft, held[:samples], decoding, written=in_front) if held and samples > 0 else None
    return Findings(
        name=name, soft=soft, dataset=dataset, held_out_acts=[r.act for r in held], perplexity=perplexity,
        rouge=rouge, nearest=nearest_tokens(base, soft, NEAREST_K), chart=loss_chart(soft),
        machine=machine(base), seconds=time.perf_counter() - t0, written=examples,
    )


def build_report(
    base: Base,
    soft: SoftPrompt,
    rows: Sequence[Row],
    dataset: str,
    name: str,
    out_dir: Path | str,
    decoding: Decoding | None = None,
    samples: int = 3,
    where: str | None = None,
    shots: int = 0,
) -> tuple[Path, Path]:
    """`measure()` then `write_report()`: (path of report.html, path of README.md) under `out_dir`.

    `where`: the adapter's folder, for the card's usage snippet (default `adapters/<name>`).
    `shots`: a written-prompt row of that many examples (`measure`).
    """
    findings = measure(base, soft, rows, dataset, name, decoding, samples, shots)
    return write_report(findings, out_dir, repo_id=where)


def write_report(findings: Findings, out_dir: Path | str, repo_id: str | None = None,
                 base_model: str | None = None) -> tuple[Path, Path]:
    """Write report.html, README.md (the model card) and loss.png into `out_dir`; returns (html, card) paths.

    `repo_id` and `base_model` go into the card (see `model_card`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CHART_FILE).write_bytes(findings.chart)
    html_path = out / REPORT_FILE
    html_path.write_text(report_html(findings), encoding="utf-8")
    card = model_card(findings.soft, findings.name, card_metrics(findings),
                      findings.rouge["rows"] if findings.rouge else [], CHART_FILE, repo_id, base_model)
    card_path = out / CARD_FILE
    card.save(card_path)
    return html_path, card_path


# ---------------------------------------------------------------------------------------
# what the adapter recorded, read defensively: tuning_meta.json may come from an upload or the Hub


def _numbers(value) -> list[float | None]:
    """A list of finite numbers (None kept for "not measured"); anything else becomes None."""
    if not isinstance(value, list):
        return []
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    return [float(v) if ok(v) else None for v in value]


def _history(soft: SoftPrompt) -> dict[str, list]:
    """The saved loss history's step, train_loss, epoch, held_out_loss (and epoch_step) lists; empty when absent or odd."""
    h = soft.meta.get("history")
    h = h if isinstance(h, dict) else {}
    out = {k: _numbers(h.get(k)) for k in ("step", "train_loss", "epoch", "held_out_loss")}
    if len(out["step"]) != len(out["train_loss"]) or len(out["epoch"]) != len(out["held_out_loss"]):
        return {k: [] for k in out}
    ends = _numbers(h.get("epoch_step"))  # where each epoch ended; an older adapter has none
    if len(ends) == len(out["epoch"]) and None not in ends:
        out["epoch_step"] = ends
    return out


def _meta_number(soft: SoftPrompt, *keys: str) -> float | None:
    value = soft.meta
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return _numbers([value])[0]


def _steps_per_epoch(soft: SoftPrompt, history: dict[str, list]) -> int:
    """Training steps in one epoch: rows trained / batch size for a fresh run, else steps / epochs."""
    acts = soft.meta.get("acts")
    if isinstance(acts, list) and acts and "resumed" not in soft.meta:
        return max(1, math.ceil(len(acts) / soft.config.batch_size))  # one act name per training row
    steps, epochs = history["step"][-1:], history["epoch"][-1:]
    if steps and epochs and steps[0] and epochs[0]:
        return max(1, round(steps[0] / epochs[0]))
    return 1


# ---------------------------------------------------------------------------------------
# the chart and the machine


def loss_chart(soft: SoftPrompt) -> bytes:
    """The run's loss curves as PNG bytes: train loss per step, held-out loss at each epoch end, the base model's line.

    Drawn with matplotlib's Agg backend (no display), as sweep.plot does.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = _history(soft)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        if history["step"]:
            ax.plot(history["step"], history["train_loss"], linewidth=1, alpha=0.7, label="train")
            held = [(s, v) for s, v, _ in held_out_points(history, _steps_per_epoch(soft, history))]
            if held:
                ax.plot(*zip(*held), marker="o", label="held-out (epoch end)")
        else:
            ax.text(0.5, 0.5, "no loss history saved with this adapter", ha="center", transform=ax.transAxes)
        base_loss = _meta_number(soft, "metrics", "base_held_out_loss")
        if base_loss is not None:
            ax.axhline(base_loss, color="black", linestyle="--", linewidth=1, label="base model, held-out")
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title(f"Prompt tuning: {soft.num_virtual_tokens} virtual tokens")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def machine(base: Base | None = None) -> dict[str, str]:
    """Where this report was computed: CPU, cores, GPU, Python and library versions, the model's precision."""
    import os

    import peft
    import torch
    import transformers

    info = {
        "CPU": f"{cpu_model()} ({os.cpu_count()} cores)",
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if base is not None:
        info["precision of this report"] = base.precision
    return info


# ---------------------------------------------------------------------------------------
# the model card


def is_hub_id(source: str) -> bool:
    """True for "owner/name" or "name" Hub ids, False for local paths and files.

    >>> is_hub_id("fka/awesome-chatgpt-prompts"), is_hub_id("./prompts.csv"), is_hub_id("/models/gpt2")
    (True, False, False)
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(source, str) or source.startswith((".", "/", "~")) or Path(source).exists():
        return False
    if source.lower().endswith((".csv", ".json", ".jsonl", ".parquet", ".gguf")):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def card_metrics(findings: Findings) -> dict:
    """The numbers the card shows: held-out acts and tokens, perplexity and loss, ROUGE-L; None where not measured.

    With a written prompt (`measure(shots=...)`): what it is ("2 examples · 164 tokens"), its acts, and its
    loss, perplexity and ROUGE-L beside base and tuned.
    """
    p, r, w = findings.perplexity, findings.rouge, findings.written
    scored = p is not None and "written" in p
    return {
        "held_out_acts": len(findings.held_out_acts),
        "tokens": p["base"].tokens if p else None,
        "base_loss": p["base"].loss if p else None,
        "tuned_loss": p["tuned"].loss if p else None,
        "base_perplexity": p["base"].perplexity if p else None,
        "tuned_perplexity": p["tuned"].perplexity if p else None,
        "rouge_acts": len(r["rows"]) if r else 0,
        "base_rouge": r["base"] if r else None,
        "tuned_rouge": r["tuned"] if r else None,
        "written": w.describe() if w is not None else None,
        "written_acts": [row.act for row in w.examples] if w is not None else [],
        "written_loss": p["written"].loss if scored else None,
        "written_perplexity": p["written"].perplexity if scored else None,
        "written_rouge": r.get("written") if r else None,
    }


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def md_inline(text: str) -> str:
    """Generated or dataset text on one line, with nothing the card would read as markup or HTML.

    >>> md_inline("a <b>\\n *c*")
    'a &lt;b&gt; &#42;c&#42;'
    """
    text = html.escape(" ".join(str(text).split()) or "(nothing)", quote=False)
    return re.sub(r"[`*_\[\]#|\\]", lambda m: f"&#{ord(m.group())};", text)  # one pass: "&#42;" stays


def _literal(text: str) -> str:
    """A Python string literal for a code block: quotes escaped, and no backtick that could end the block.

    >>> print(_literal('owner/model'), _literal('a"b`c'))
    "owner/model" "a\\"b\\u0060c"
    """
    return json.dumps(str(text)).replace("`", "\\u0060")


def _card_metrics_table(metrics: dict) -> list[str]:
    """The card's held-out section under its heading: a loss / perplexity (/ ROUGE-L) table, or why there is none."""
    if metrics.get("base_perplexity") is None:
        return ["No held-out acts were available to score."]
    body = [
        f"Scored on the same {metrics['tokens']:,} tokens of {metrics['held_out_acts']} held-out acts "
        "(every token after a prompt's first).",
        "",
        "| | loss | perplexity |" + (" ROUGE-L |" if metrics.get("base_rouge") is not None else ""),
        "|---|---:|---:|" + ("---:|" if metrics.get("base_rouge") is not None else ""),
    ]
    written = metrics.get("written_loss") is not None
    for who in ("base", "written", "tuned") if written else ("base", "tuned"):
        rouge = f" {_fmt(metrics.get(who + '_rouge'), '.4f')} |" if metrics.get("base_rouge") is not None else ""
        name = f"written ({md_inline(metrics['written'])})" if who == "written" else who
        body.append(f"| {name} | {_fmt(metrics[who + '_loss'], '.4f')} | "
                    f"{_fmt(metrics[who + '_perplexity'], '.2f')} |{rouge}")
    if written:
        body += ["", "Written: the base model with the prompts of training acts "
                     f"({md_inline(', '.join(metrics['written_acts']))}) written in front, each ended as training "
                     "reads a row: the baseline a soft prompt has to beat."]
    if metrics.get("base_rouge") is not None:
        body += ["", f"ROUGE-L: greedy continuations of \"I want you to act as a <act>.\" against the act's "
                     f"real prompt, {metrics['rouge_acts']} held-out acts."]
    return body


def _card_usage(base_model: str, where: str) -> list[str]:
    """The card's usage snippet (PEFT's own loading, the cache off) and why the cache is off."""
    return [
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained({_literal(base_model)})",
        f"tokenizer = AutoTokenizer.from_pretrained({_literal(base_model)})",
        f"model = PeftModel.from_pretrained(base, {_literal(where)})",
        "",
        'inputs = tokenizer("I want you to act as a poet.", return_tensors="pt")',
        "# use_cache=False: see the note below",
        "out = model.generate(**inputs, max_new_tokens=64, use_cache=False)",
        "print(tokenizer.decode(out[0], skip_special_tokens=True))",
        "```",
        "",
        "Note: with transformers 5.24 and peft 0.21, `PeftModel.generate` with the KV cache "
        "(`use_cache=True`, the default) returns wrong tokens after the first for prompt tuning. "
        "Generate with `use_cache=False` as above, or, faster, call the base model's own `generate` with "
        "`inputs_embeds` = the prompt (`model.get_prompt(1)`, or the `prompt_embeddings` tensor of "
        "`adapter_model.safetensors`) followed by the input's token embeddings, as this project's "
        "`tuning/generate.py` does.",
    ]


def model_card(
    soft: SoftPrompt,
    name: str,
    metrics: dict,
    samples: Sequence[dict],
    chart_file: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
):
    """A `huggingface_hub.ModelCard` for the adapter: metadata for the Hub, then what it is and how it did.

    Metadata: library_name peft, base_model, pipeline_tag text-generation, tags prompt-tuning and
    peft, datasets (the dataset when it is a Hub id). Body: what it is, held-out metrics
    (`card_metrics`), a usage snippet, the loss chart (`chart_file`, relative to the card), and
    base-vs-tuned samples (`iter_rouge` dicts). `repo_id` is where it will be found (default:
    the local folder `adapters/<name>`); `base_model` overrides the adapter's own base model
    (a Hub id for an adapter trained from a local copy).
    """
    from huggingface_hub import ModelCard, ModelCardData

    base_model = base_model or soft.base_model
    dataset = soft.meta["dataset"] if isinstance(soft.meta.get("dataset"), str) else soft.config.dataset
    data = ModelCardData(
        library_name="peft", base_model=base_model, pipeline_tag="text-generation",
        tags=["prompt-tuning", "peft"], datasets=[dataset] if is_hub_id(dataset) else None,
    )
    where = repo_id or f"adapters/{name}"
    c = soft.config
    body = [
        f"# {name}",
        "",
        f"A soft prompt for [{base_model}](https://huggingface.co/{base_model})"
        if is_hub_id(base_model) else f"A soft prompt for {md_inline(base_model)}",
        f"trained with PEFT prompt tuning: {soft.num_virtual_tokens} virtual tokens "
        f"(`[{soft.num_virtual_tokens}, {soft.embeddings.shape[1]}]` float32) placed in front of every input; "
        "the model itself is unchanged.",
        "",
        f"- dataset: {md_inline(dataset)}, {len(soft.meta_texts('acts'))} training rows, "
        f"{metrics.get('held_out_acts', 0)} held-out acts (never trained on)",
        f"- training: {c.epochs} epochs, learning rate {c.learning_rate:g}, batch {c.batch_size}, "
        f"init {c.init}, seed {c.seed}",
        "",
        "## Held-out metrics",
        "",
    ]
    body += _card_metrics_table(metrics)
    body += ["", "## Usage", ""] + _card_usage(base_model, where)
    if chart_file:
        body += ["", "## Loss", "", f"![training and held-out loss]({chart_file})"]
    if samples:
        body += ["", "## Samples, base vs tuned", "", "Greedy continuations of held-out acts' opening sentence."]
        for s in samples:
            body += [
                "", f"### {md_inline(s['act'])}", "", f"Input: {md_inline(s['input'])}", "",
                f"**base** (ROUGE-L {_fmt(s.get('base_rouge'), '.3f')})", "", "> " + md_inline(s["base_text"]), "",
                *([f"**written** (ROUGE-L {_fmt(s.get('written_rouge'), '.3f')})", "",
                   "> " + md_inline(s["written_text"]), ""] if "written_text" in s else []),
                f"**tuned** (ROUGE-L {_fmt(s.get('tuned_rouge'), '.3f')})", "", "> " + md_inline(s["tuned_text"]),
            ]
    body += ["", f"Files: `{CONFIG_FILE}` and `{WEIGHTS_FILE}` (PEFT's), `tuning_meta.json` (settings, acts, loss "
                 f"history), `{REPORT_FILE}` (the full run report, one self-contained page)."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


# ---------------------------------------------------------------------------------------
# the page

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.pair { display: grid; grid-auto-flow: column; grid-auto-columns: 1fr; gap: 1em; }
.pair div { background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }
img { max-width: 100%; }
code { background: #f0f0f0; padding: 0 0.2em; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _table(rows: Sequence[Sequence], head: Sequence[str] | None = None) -> str:
    """Rows of cells as an HTML table; numbers are right-aligned, everything is escaped."""
    def cell(v, tag="td"):
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f"<{tag}{' class=n' if numeric else ''}>{_e(v)}</{tag}>"

    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(cell(h, "th") for h in head) + "</tr>")
    out += ["<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows]
    return "\n".join(out + ["</table>"])


def report_html(f: Findings) -> str:
    """The report as one HTML page with no external resource: configuration, data, curves, metrics, samples, machine."""
    soft, meta = f.soft, f.soft.meta
    trained = soft.meta_texts("acts")
    train_seconds = _meta_number(soft, "train_seconds")
    chart = base64.b64encode(f.chart).decode("ascii")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Run report: {_e(f.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Run report: {_e(f.name)}</h1>",
        f"<p>A PEFT prompt-tuning adapter for <code>{_e(soft.base_model)}</code>: {soft.num_virtual_tokens} "
        f"virtual tokens × {soft.embeddings.shape[1]} numbers in front of every input; the model is unchanged.</p>",
        "<h2>Configuration</h2>",
        _table([(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in soft.config.to_dict().items()],
               ("setting", "value")),
        "<h2>Dataset and acts</h2>",
        f"<p>Dataset <code>{_e(f.dataset)}</code>. Trained on {len(trained)} rows ({len(set(trained))} acts); "
        f"scored on {len(f.held_out_acts)} held-out acts, never trained on.</p>",
        f"<details><summary>training acts</summary><p>{_e(', '.join(dict.fromkeys(trained)) or '–')}</p></details>",
        f"<details open><summary>held-out acts</summary><p>{_e(', '.join(f.held_out_acts) or '–')}</p></details>",
        "<h2>Loss</h2>",
        f'<img alt="training loss per step, held-out loss at each epoch end, the base model\'s held-out loss" '
        f'src="data:image/png;base64,{chart}">',
        "<h2>Held-out perplexity and ROUGE-L</h2>",
    ]
    if f.perplexity is None:
        parts.append("<p>No held-out acts to score.</p>")
    else:
        p = f.perplexity
        who_all = [who for who in ("base", "written", "tuned") if who in p]
        label = {"base": "base", "tuned": "tuned", "written": f"written ({f.written.describe()})" if f.written else ""}
        parts += [
            f"<p>{'Base, written and tuned' if 'written' in p else 'Base and tuned'} scored on the same "
            f"{p['base'].tokens:,} tokens (every token after a prompt's first), batch {soft.config.batch_size}.</p>",
            _table([(label[who], round(p[who].loss, 4), round(p[who].perplexity, 2),
                     "–" if f.rouge is None else round(f.rouge[who], 4)) for who in who_all],
                   ("model", "loss (nats)", "perplexity", "ROUGE-L")),
        ]
        if "written" in p and f.written is not None:
            parts.append(f"<p>Written: the base model with {_e(f.written.label)} of training acts "
                         f"({_e(', '.join(r.act for r in f.written.examples))}) written in front, each prompt ended "
                         "as training reads a row: the baseline a soft prompt has to beat.</p>")
    if f.rouge:
        three = "written_text" in f.rouge["rows"][0] if f.rouge["rows"] else False
        parts += [f"<h2>Samples: {'base, written and tuned' if three else 'base vs tuned'}</h2>",
                  f"<p>Greedy continuations of the opening sentence of {len(f.rouge['rows'])} held-out acts, "
                  "scored with ROUGE-L against the act's real prompt.</p>"]
        for s in f.rouge["rows"]:
            parts += [
                f"<h3>{_e(s['act'])}</h3><p>Input: <code>{_e(s['input'])}</code></p>",
                '<div class="pair">',
                f"<div><b>base</b> (ROUGE-L {s['base_rouge']:.3f})\n{_e(s['base_text'])}</div>",
                *([f"<div><b>written</b> (ROUGE-L {s['written_rouge']:.3f})\n{_e(s['written_text'])}</div>"]
                  if "written_text" in s else []),
                f"<div><b>tuned</b> (ROUGE-L {s['tuned_rouge']:.3f})\n{_e(s['tuned_text'])}</div>",
                "</div>",
            ]
    parts += [
        "<h2>Nearest vocabulary tokens</h2>",
        "<p>For each virtual token, the vocabulary tokens whose input embeddings are closest by cosine "
        "similarity. Trained prompts usually sit far from every real token: read this as a hint.</p>",
        _table([(i, ", ".join(f"{t!r} {s:.2f}" for t, s in near)) for i, near in enumerate(f.nearest)],
               ("virtual token", f"nearest {NEAREST_K} (cosine)")),
        "<h2>Machine, versions, time</h2>",
        _table([
            ("training precision", meta.get("precision") if isinstance(meta.get("precision"), str) else "–"),
            ("training time", "–" if train_seconds is None else f"{duration(train_seconds)} ({train_seconds:g} s)"),
            ("training steps", _meta_number(soft, "steps") or "–"),
            ("tokens per second", _meta_number(soft, "tokens_per_s") or "–"),
            ("created", meta.get("created") if isinstance(meta.get("created"), str) else "–"),
            ("report computed in", f"{f.seconds:.1f} s"),
        ], ("training", "")),
        "<p>This report was computed on:</p>",
        _table(list(f.machine.items()), ("machine", "")),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
