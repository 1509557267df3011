"""`python -m tuning`: train, generate, eval, list and delete from a terminal.

The second front end over the engine (the Gradio app is the first): the same TuneConfig,
the same train() events (shown as a tqdm bar), the same adapters folder. Errors a user can
cause print one line and exit 1; argparse's own usage errors exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path

from .config import DEFAULT_DATASET, DEFAULT_MODEL, PRECISIONS, SHOTS, TuneConfig, same_model

HUB_MODEL_HELP = "the Hub id --model is a local copy of: adapters trained on that id run on it"

# flags that are not a plain "--field value" of TuneConfig
_SPECIAL = {"acts", "text_only"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    # A flag left out is absent from the parsed args (SUPPRESS), not set to its default: TuneConfig
    # fills in its defaults for a new run, and `train --resume` keeps the adapter's own settings.
    for f in dataclasses.fields(TuneConfig):
        if f.name in _SPECIAL:
            continue
        kind = {int: int, float: float}.get(type(f.default), str)
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=argparse.SUPPRESS,
            help=f"{f.metadata.get('help', '')} (default: {f.default})",
        )
    parser.add_argument("--act", dest="acts", action="append", default=argparse.SUPPRESS, metavar="ACT",
                        help="train on this act only; repeat for several (default: all training acts)")
    parser.add_argument("--all-types", dest="text_only", action="store_false", default=argparse.SUPPRESS,
                        help="keep rows of every `type` (default: TEXT rows only when the column exists)")


def _add_decoding_flags(parser: argparse.ArgumentParser) -> None:
    from .config import Decoding  # not .generate: `--help` and usage errors need no torch

    for f in dataclasses.fields(Decoding):
        if f.name == "do_sample":
            parser.add_argument("--sample", dest="do_sample", action="store_true", help="sample instead of greedy decoding")
            continue
        kind = {int: int, float: float}[type(f.default)]
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                            help=f"(default: {f.default})")


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuning", description="Prompt-tune a causal LM and compare it with the base model.")
    parser.add_argument("--adapters-dir", default="adapters", help="where adapters are saved (default: adapters)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="prompt-tune and save an adapter", description="Prompt-tune a model and save the adapter.")
    _add_config_flags(p)
    p.add_argument("--name", help="adapter name (default: from the acts, tokens and epochs; with --resume, NAME)")
    p.add_argument("--resume", metavar="NAME",
                   help="continue training saved adapter NAME (its prompt and optimizer state) for --epochs more "
                        "epochs, with its own settings unless flags change them; saved back under NAME (or --name)")
    p.add_argument("--hub-model", metavar="ID",
                   help="with --resume and --model: the Hub id --model is a local copy of, when the adapter was "
                        "trained on that id")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an adapter already saved under --name (default: refuse before training starts)")

    p = sub.add_parser("generate", help="print base and tuned continuations side by side",
                       description="Continue TEXT with the base model and one or two adapters, in one batch, "
                                   "with the same decoding settings and seed for every column.")
    p.add_argument("text", help="input text, e.g. 'I want you to act as a rapper.'")
    p.add_argument("--adapter", action="append", required=True, metavar="NAME",
                   help="name of a saved adapter; give it twice to compare two adapters with the base model")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"base": ..., "<adapter>": ...} ("written": ... too with --shots or '
                        '--written) and nothing else on stdout')
    p.add_argument("--model", help="model to load (default: the adapters' base model)")
    p.add_argument("--hub-model", metavar="ID", help=HUB_MODEL_HELP)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    baseline = p.add_mutually_exclusive_group()
    _add_shots_flag(baseline, "also a column of the base model with K examples of training acts written in front")
    baseline.add_argument("--written", metavar="TEXT",
                          help="also a column of the base model with TEXT written in front: your own prompt to "
                               "beat, instead of --shots examples")
    p.add_argument("--dataset", help="where --shots draws examples from (default: the first adapter's dataset)")
    _add_decoding_flags(p)

    p = sub.add_parser("eval", help="held-out loss and perplexity, base vs tuned")
    p.add_argument("--adapter", required=True, help="name of a saved adapter")
    p.add_argument("--model", help="model to load (default: the adapter's base model)")
    p.add_argument("--hub-model", metavar="ID", help=HUB_MODEL_HELP)
    p.add_argument("--dataset", help="dataset (default: the adapter's)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--batch-size", type=_positive_int, default=8, help="rows scored at once (default: 8)")
    p.add_argument("--rouge", type=int, default=0, metavar="N",
                   help="also ROUGE-L of greedy generations on up to N held-out acts, base vs tuned (default: 0, off)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per act for --rouge (default: 64)")
    _add_shots_flag(p, "also the base model with K examples of training acts written in front, scored on the same tokens")

    _add_bench_command(sub)

    p = sub.add_parser("sweep", help="train one prompt per (tokens, epochs) cell and compare them",
                       description="Reproduce the seed's experiment: one prompt per virtual tokens x epochs cell, "
                                   "held-out perplexity (and ROUGE-L) base vs tuned; writes sweep.csv and sweep.png.")
    _add_sweep_flags(p)

    p = sub.add_parser("reference", help="train the reference adapters (the seed's 5x5 and 20x10) if missing",
                       description="Train the seed's two runs on all training acts (seed 0, default recipe) and keep "
                                   "them as reference-5x5-... and reference-20x10-... for this model and dataset; "
                                   "the app opens Compare on them. Saved ones are not trained again.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id, folder or .gguf (default: {DEFAULT_MODEL})")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"Hub id or file (default: {DEFAULT_DATASET})")

    _add_share_commands(sub)

    p = sub.add_parser("acts", help="list the dataset's acts: name and prompt length in words",
                       description="List the acts (roles) of a dataset, one line each with its prompt's length in "
                                   "words. Without the Hub the default dataset is read from the snapshot shipped "
                                   "with this package, and the last line says so.")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"Hub id or file (default: {DEFAULT_DATASET})")
    p.add_argument("--search", default="", metavar="TEXT",
                   help="only acts whose name or prompt contains TEXT, ignoring case")
    p.add_argument("--all-types", dest="text_only", action="store_false",
                   help="keep rows of every `type` (default: TEXT rows only when the column exists)")

    sub.add_parser("list", help="list saved adapters")
    p = sub.add_parser("delete", help="delete a saved adapter")
    p.add_argument("name")
    return parser


def _add_shots_flag(parser, what: str) -> None:
    parser.add_argument("--shots", type=int, default=0, choices=(0, *SHOTS), metavar="K",
                        help=f"{what}: a written-prompt baseline, K one of {', '.join(map(str, SHOTS))} "
                             "(default: 0, off)")


def _add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="measure training and generation speed against the seed recipe",
                       description="Training throughput (seed recipe vs ours), FLOP ceiling, generation "
                                   "timings and peak memory on a GPT-2-124M-shaped model with random weights, offline.")
    p.add_argument("--steps", type=int, default=12,
                   help="timed rows, in batches of 8: every part trains on the same steps x 8 rows (default: 12)")
    p.add_argument("--batch-size", type=int, help="our batch size (default: the training default)")
    p.add_argument("--length-multiple", type=int, metavar="N",
                   help="pad our batches to a multiple of N positions (default: chosen for the machine, 16 with "
                        "bf16 on an AMX CPU, else 1); when that is not 1, ours also runs without the padding")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed epochs over the timed rows first; ours' first is its cold start (default: 1)")
    p.add_argument("--dataset", help="prompts .csv (default: ../shared/data/awesome-chatgpt-prompts/prompts-2025-01.csv)")
    p.add_argument("--tokenizer", help="GPT-2 tokenizer folder (default: ../shared/data/gpt2-tokenizer)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON here")


def ctrl_c_stops():
    """(stop event, restore): the first Ctrl-C sets the event, the second aborts; restore() undoes it."""
    from tqdm import tqdm

    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        tqdm.write("stopping after this step (Ctrl-C again to abort) ...")

    previous = signal.signal(signal.SIGINT, on_sigint)
    return stop, lambda: signal.signal(signal.SIGINT, previous)


def _default_name(config: TuneConfig) -> str:
    what = config.acts[0] if len(config.acts) == 1 else ("acts" if config.acts else "all")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{what}-{config.num_virtual_tokens}tok-{config.epochs}ep-{stamp}"


def _run_name(args, config: TuneConfig, root: Path) -> tuple[str, bool]:
    """(the name `train` saves under, whether that is the resumed adapter's own): refused before training
    when --name is taken (unless --overwrite); the default name is a free one."""
    from . import adapters

    taken = {p.name for p in root.iterdir()}  # every folder name (loading each adapter to list it adds none)
    if not (args.name or args.resume):  # a one-second stamp: two runs started together must not meet
        return adapters.free_name(adapters.sanitize_name(_default_name(config)), taken), False
    name = adapters.sanitize_name(args.name or args.resume)
    continued = args.resume is not None and name == args.resume  # a resumed run is saved back over itself
    if name in taken and not (continued or args.overwrite):
        raise ValueError(f"an adapter named {name!r} already exists in {root}; choose another --name, "
                         f"pass --overwrite to replace it, or --resume {name} to continue it")
    return name, continued


def cmd_train(args) -> int:
    from tqdm import tqdm

    from . import adapters
    from .model import load_base
    from .events import Done, EpochEnd, Start, Step
    from .history import trained_so_far
    from .rows import split_rows
    from .train import data_parallel, resume_config, resume_note, train

    names = {f.name for f in dataclasses.fields(TuneConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}  # only the flags typed (see _add_config_flags)
    if "init_text" in given:  # the text only seeds the prompt under init=text: asking for it asks for that
        if given.setdefault("init", "text") != "text":
            raise ValueError(f"--init-text seeds the prompt only with --init text, not --init {given['init']}")
    if args.hub_model and not args.resume:
        raise ValueError("--hub-model applies to --resume only: a new run records the model it loads")
    resume = None
    if args.resume:
        if given.keys() & {"init", "init_text"}:
            raise ValueError("--init and --init-text do not apply to --resume: training continues the adapter's prompt")
        resume = adapters.load(args.resume, args.adapters_dir)
        config = resume_config(resume, given.pop("epochs", TuneConfig().epochs), **given)
    else:
        config = TuneConfig(**given)
    root = _writable_folder(args.adapters_dir)  # before minutes of training, not after
    name, continued = _run_name(args, config, root)
    rows = _rows(config.dataset, config.text_only)
    train_rows, held = split_rows(rows, config)
    # Under `accelerate launch` every process trains its share; only the first one talks and saves.
    rank, world = data_parallel()
    main_process = rank == 0
    if main_process:
        if world > 1:
            print(f"data parallel: {world} processes share every batch of {config.batch_size} rows", file=sys.stderr)
        print(f"loading {config.model} ...", file=sys.stderr)
    if resume is None:
        base = load_base(config.model, config.precision)
    else:  # a local --model may stand in for the Hub model the adapter was trained on
        base = _base_for(resume.base_model, given.get("model"), config.precision, args.hub_model, announce=False)
    if resume is not None and main_process:
        steps, epochs = trained_so_far(resume)
        print(f"resuming {args.resume} at step {steps} (epoch {epochs}) for {config.epochs} more epochs")
        if note := resume_note(resume):
            print(f"note: {note}")

    # First Ctrl-C: stop after the current step and keep what was learned. Second: abort.
    stop, restore_ctrl_c = ctrl_c_stops()
    bar, subset = None, False  # subset: the epoch ends scored some of the held-out acts (a short run)
    try:
        for event in train(base, train_rows, config, held, stop, resume=resume, resume_name=args.resume):
            if isinstance(event, Done):
                done = event
            elif not main_process:
                continue
            elif isinstance(event, Start):
                tqdm.write(f"{event.train_rows} training rows, {event.held_out_rows} held-out rows")
                bar = tqdm(total=event.total_steps, initial=event.resumed_at, unit="step", dynamic_ncols=True)
            elif isinstance(event, Step):
                bar.update(1)
                bar.set_postfix(epoch=event.epoch, loss=f"{event.loss:.3f}", tok_s=f"{event.tokens_per_s:.0f}")
            elif isinstance(event, EpochEnd):
                subset |= bool(_on_fewer(event, len(held)))
                tqdm.write(_epoch_line(event, len(held)))
    finally:
        restore_ctrl_c()
        if bar is not None:
            bar.close()
    if not main_process:
        return 0
    path = _save_or_rescue(done.soft, name, root, overwrite=args.overwrite or continued)
    name = path.name
    state = "stopped early" if done.stopped else "finished"
    steps = f"{done.steps} more steps ({done.soft.meta['steps']} in all)" if resume is not None else f"{done.steps} steps"
    if subset:  # what was saved is every held-out act's
        print(_all_held_out_line(done.soft, len(held)))
    print(f"{state} after {steps} in {done.elapsed:.1f} s; saved adapter {name!r} to {path}")
    return 0


def _epoch_line(event, held_rows: int) -> str:
    """'epoch 1: train loss 3.6173, held-out loss 3.5602 on 5 of 20 held-out acts (base model 3.5421)'."""
    held_text = "" if event.held_out_loss is None else (
        f", held-out loss {event.held_out_loss:.4f}{_on_fewer(event, held_rows)} (base model {event.base_held_out_loss:.4f})")
    return f"epoch {event.epoch}: train loss {event.train_loss:.4f}{held_text}"


def _all_held_out_line(soft, held_rows: int) -> str:
    """A short run's saved numbers, on every held-out act: 'held-out loss 3.4757 on all 20 held-out acts (base model 3.5421)'."""
    metrics = soft.meta["metrics"]
    return (f"held-out loss {metrics['held_out_loss']:.4f} on all {held_rows} held-out acts "
            f"(base model {metrics['base_held_out_loss']:.4f})")


def _on_fewer(event, held_rows: int) -> str:
    """' on 5 of 20 held-out acts' when a short run's epoch end scored a subset of them, else ''."""
    if event.held_out_acts is None or event.held_out_acts >= held_rows:
        return ""
    return f" on {event.held_out_acts} of {held_rows} held-out acts"


def _rows(dataset: str, text_only: bool = True):
    """load_rows, and one line on stderr when the shipped snapshot stood in for the Hub (the app says it too)."""
    from .data import load_rows, source_note

    rows = load_rows(dataset, text_only)
    if note := source_note(dataset):
        print(f"note: {note}", file=sys.stderr)
    return rows


def _writable_folder(folder: str | Path, what: str = "adapters") -> Path:
    """`folder`, made if missing and checked writable; else a one-line error before any work starts."""
    import tempfile

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ValueError(f"cannot save {what} in {path}: {e.strerror or e}") from e
    return path


def _save_or_rescue(soft, name: str, root: Path, overwrite: bool = False) -> Path:
    """Save the trained prompt; when that fails after all (a full disk), save it in a temp folder instead.

    Training took minutes: a failed save must not lose it, and must not replace an adapter that
    was saved under the same name while it trained (another run, a pull): without `overwrite`
    it takes the next free name and says so. The error still says what went wrong.
    """
    import tempfile

    from . import adapters

    try:
        try:
            return adapters.save(soft, name, root, overwrite=overwrite)
        except adapters.AdapterError:
            if overwrite or not (root / adapters.sanitize_name(name)).exists():
                raise
            free = adapters.free_name(adapters.sanitize_name(name), {p.name for p in root.iterdir()})
            print(f"note: an adapter named {name!r} was saved while this one trained; saving this one as {free!r}",
                  file=sys.stderr)
            return adapters.save(soft, free, root, overwrite=False)
    except (OSError, adapters.AdapterError) as e:
        rescue = Path(tempfile.mkdtemp(prefix="tuning-rescued-"))
        try:
            saved = adapters.save(soft, name, rescue)
        except Exception:
            raise ValueError(f"the adapter could not be saved in {root} ({e}), nor in {rescue}") from e
        raise ValueError(f"the adapter could not be saved in {root} ({e}); it was saved in {saved} instead: "
                         f"copy that folder into your adapters folder") from e


def _base_for(base_model: str, model: str | None, precision: str, hub_model: str | None = None,
              announce: bool = True):
    """The model an adapter trained on `base_model` runs on: that one, or `--model` when given.

    `hub_model` (`--hub-model`): the Hub id `model` is a local copy of, so an adapter trained on
    that id fits it (the offline advice is to start from a local copy). Whether the adapter fits
    is checked where it is loaded or resumed against this model (`Base.mismatch`).
    """
    from .model import load_base

    if model is None:
        if base_model == "unknown":
            raise ValueError("the adapter does not record which model it was trained on; name it with --model")
        if announce:
            print(f"loading {base_model} ...", file=sys.stderr)
        return load_base(base_model, precision)
    if announce:
        print(f"loading {model} ...", file=sys.stderr)
    base = load_base(model, precision)
    # a copy: the cached model keeps its own names
    return dataclasses.replace(base, hub_id=hub_model) if hub_model else base


def _load_adapter_and_base(args):
    from . import adapters

    soft = adapters.load(args.adapter, args.adapters_dir)
    base = _base_for(soft.base_model, args.model, args.precision, args.hub_model)
    return adapters.load(args.adapter, args.adapters_dir, base=base), base  # checked against the model


def cmd_generate(args) -> int:
    import contextlib
    import json

    from . import adapters, written
    from .generate import Decoding, stream_compare

    names = args.adapter
    if len(names) > 2:
        raise ValueError(f"give one or two adapters to compare with the base model, got {len(names)}")
    if len(set(names)) < len(names):
        raise ValueError(f"the adapter {names[0]!r} is named twice; give two different adapters")
    if args.json and "base" in names:
        raise ValueError("--json names the base model's text 'base'; rename the adapter called 'base' to compare it")
    wants_written = bool(args.shots) or args.written is not None
    if args.json and wants_written and "written" in names:
        raise ValueError("--json names the written prompt's text 'written'; rename the adapter called 'written' "
                         "to compare it")
    if args.dataset and not args.shots:
        raise ValueError("--dataset applies to --shots only: it is where the examples are drawn from")
    if args.written is not None and not args.written.strip():
        raise ValueError("--written is empty: give the text to write in front of the input, or leave it out")
    fields = {f.name for f in dataclasses.fields(Decoding)}
    decoding = Decoding(**{k: v for k, v in vars(args).items() if k in fields})
    softs = [adapters.load(name, args.adapters_dir) for name in names]
    if args.model is None and not same_model(softs[0].base_model, softs[-1].base_model):
        raise ValueError(f"{names[0]!r} was trained on {softs[0].base_model} and {names[1]!r} on "
                         f"{softs[1].base_model}; compare adapters of one base model")
    # stdout carries the result only (one JSON object with --json): whatever a library prints goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        base = _base_for(softs[0].base_model, args.model, args.precision, args.hub_model)
        softs = [adapters.load(name, args.adapters_dir, base=base) for name in names]  # checked against the model
        baseline = _written_baseline(args, base, softs, decoding) if wants_written else None
        prompts = softs if baseline is None else [written.embeddings(base, baseline), *softs]
        titles = ["base"] + (["written"] if baseline else []) + list(names)
        texts = ("",) * len(titles)
        # one batch for every column: the written row is decoded beside the others, not after them
        for texts in stream_compare(base, prompts, args.text, decoding):
            pass
    if args.json:
        print(json.dumps(dict(zip(titles, texts))))
        return 0
    if baseline is not None and baseline.examples:
        print(_examples_line(baseline))
    written_column = [(f"written ({baseline.describe()})", texts[1])] if baseline else []
    tuned = [(f"tuned ({name})", text) for name, text in zip(names, texts[-len(names):])]
    print(side_by_side(("base", texts[0]), *written_column, *tuned))
    return 0


def _written_baseline(args, base, softs, decoding):
    """The written prompt `generate` puts beside the adapters (--shots examples or --written text), refused unless
    it fits the context with the input and every new token: cutting the input to make room would change the question."""
    from . import written

    if args.shots:
        dataset = args.dataset or softs[0].config.dataset
        baseline = written.for_adapters(base, softs, _rows(dataset, softs[0].config.text_only), dataset, args.shots)
    else:
        baseline = written.from_text(base, args.written)
    written.check_fits(base, baseline, len(base.encode(args.text)), decoding.max_new_tokens)
    return baseline


def side_by_side(*columns: tuple[str, str], width: int | None = None) -> str:
    """Titled texts as wrapped columns side by side, `width` characters in all (default: the terminal's).

    >>> print(side_by_side(("a", "one two"), ("b", "three"), width=23))
    a          | b
    ---------- | ----------
    one two    | three
    >>> print(side_by_side(("a", "x"), ("b", ""), ("c", "z"), width=36))
    a          | b          | c
    ---------- | ---------- | ----------
    x          | (nothing)  | z
    >>> print(side_by_side(("base", "x"), ("written (2 examples)", "y"), width=23))
    base       | written (2
               | examples)
    ---------- | ----------
    x          | y
    """
    width = width or min(shutil.get_terminal_size((100, 20)).columns, 160)
    col = max((width - 3 * (len(columns) - 1)) // len(columns), 10)
    # a long title wraps rather than being cut: "written (2 examples · 164 tokens)" must keep its count
    titles = [textwrap.wrap(title, col) or [""] for title, _ in columns]
    tall = max(len(t) for t in titles)

    def lines(title, text):
        body = [w for para in (text.strip() or "(nothing)").splitlines() for w in (textwrap.wrap(para, col) or [""])]
        return title + [""] * (tall - len(title)) + ["-" * col] + body

    blocks = [lines(title, text) for title, (_, text) in zip(titles, columns)]
    height = max(len(b) for b in blocks)
    blocks = [b + [""] * (height - len(b)) for b in blocks]
    return "\n".join(" | ".join(f"{x:<{col}}" for x in row).rstrip() for row in zip(*blocks))


def cmd_eval(args) -> int:
    from . import written
    from .evaluate import check_rouge_fits, held_out
    from .generate import Decoding
    from .rows import held_out_for

    if args.rouge < 0:
        raise ValueError(f"--rouge is a number of held-out acts, 0 or more, got {args.rouge}")
    decoding = Decoding(max_new_tokens=args.max_new_tokens)  # checked before minutes of loading
    soft, base = _load_adapter_and_base(args)
    config = dataclasses.replace(soft.config, dataset=args.dataset or soft.config.dataset)
    rows = _rows(config.dataset, config.text_only)
    held = held_out_for(soft, rows, config.dataset)
    if not held:
        raise ValueError("there are no held-out rows to evaluate on")
    acts = held[: args.rouge]
    baseline = None
    if args.shots:
        baseline = written.for_adapters(base, [soft], rows, config.dataset, args.shots)
        check_rouge_fits(base, baseline, acts, decoding)  # before minutes of scoring, not after
    result = held_out(base, soft, held, args.batch_size, written=baseline)
    print(f"held-out: {len(held)} acts, {result['base'].tokens:,} tokens of {config.dataset}")
    if baseline is not None:
        print(_examples_line(baseline))
    labels = {"base": "base", "written": f"written ({baseline.describe()})" if baseline else "", "tuned": "tuned"}
    names = [name for name in ("base", "written", "tuned") if name in result]
    width = max(6, *(len(labels[name]) for name in names))
    print(f"{'':{width}} {'loss':>8} {'perplexity':>11}")
    for name in names:
        m = result[name]
        print(f"{labels[name]:{width}} {m.loss:8.4f} {m.perplexity:11.2f}")
    if acts:
        from tqdm import tqdm

        from .evaluate import rouge_compare

        prompt = None if baseline is None else written.embeddings(base, baseline)
        with tqdm(total=len(acts), unit="act", desc="ROUGE-L", dynamic_ncols=True) as bar:
            rouge = rouge_compare(base, soft, acts, decoding,
                                  progress=lambda done, total: bar.update(done - bar.n), written=prompt)
        scores = "  ".join(f"{name} {rouge[name]:.4f}" for name in names)
        print(f"ROUGE-L on {len(acts)} held-out acts (greedy, {args.max_new_tokens} new tokens): {scores}")
    return 0


def _examples_line(baseline) -> str:
    """'written prompt: 2 examples from the training side: Poet, Chef': which acts the baseline was written from."""
    return f"written prompt: {baseline.label} from the training side: {', '.join(r.act for r in baseline.examples)}"


def cmd_bench(args) -> int:
    import json

    from . import bench

    if args.json_path:  # minutes of measuring first: find out now if the file cannot be written
        _writable_folder(Path(args.json_path).absolute().parent, "the bench's JSON")
    result = bench.run(steps=args.steps, warmup=args.warmup, dataset=args.dataset, tokenizer_dir=args.tokenizer,
                       batch_size=args.batch_size, length_multiple=args.length_multiple)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# the TuneConfig fields a sweep varies nothing of but lets the user set
_SWEEP_FIELDS = ("model", "dataset", "precision", "learning_rate", "batch_size", "seed", "held_out_fraction",
                 "max_length", "init", "warmup_fraction", "weight_decay")


def _add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TuneConfig):
        if f.name in _SWEEP_FIELDS:
            kind = {int: int, float: float}.get(type(f.default), str)
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                                help=f"{f.metadata.get('help', '')} (default: {f.default})")
    parser.add_argument("--grid", default="5x5,20x10",
                        help="cells as TOKENSxEPOCHS, comma-separated (default: 5x5,20x10, the seed's two runs)")
    parser.add_argument("--rouge", type=int, default=0, metavar="N",
                        help="also ROUGE-L on up to N held-out acts per cell, base vs tuned (default: 0, off)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per act for --rouge (default: 64)")
    parser.add_argument("--shots", type=_shot_counts, default=(), metavar="K,K",
                        help="also the base model with K examples of training acts written in front, for each K "
                             f"given (of {', '.join(map(str, SHOTS))}, comma-separated): written-prompt rows on the "
                             "same held-out tokens (default: none)")
    parser.add_argument("--out", default="sweep", help="folder for sweep.csv and sweep.png (default: sweep)")


def _shot_counts(text: str) -> tuple[int, ...]:
    """argparse type: '1,2,4' -> (1, 2, 4), each of SHOTS (a usage error, exit 2, otherwise)."""
    counts = []
    for part in text.replace(" ", "").split(","):
        if part not in {str(k) for k in SHOTS}:
            raise argparse.ArgumentTypeError(f"{part!r} is not one of {', '.join(map(str, SHOTS))}")
        counts.append(int(part))
    return tuple(sorted(set(counts)))


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from .generate import Decoding
    from .model import load_base
    from .sweep import (CellEvent, CellResult, SweepDone, SweepStart, WrittenResult, format_table, parse_grid, plot,
                        run_sweep, write_csv)
    from .events import EpochEnd, Step

    grid = parse_grid(args.grid)
    if args.rouge < 0:
        raise ValueError(f"--rouge is a number of held-out acts, 0 or more, got {args.rouge}")
    config = TuneConfig(**{k: getattr(args, k) for k in _SWEEP_FIELDS})
    out = _writable_folder(args.out, "the sweep's table and chart")
    decoding = Decoding(max_new_tokens=args.max_new_tokens)
    rows = _rows(config.dataset, config.text_only)
    print(f"loading {config.model} ...", file=sys.stderr)
    base = load_base(config.model, config.precision)

    # First Ctrl-C: stop the current cell after its step, skip the rest, still write what finished.
    stop, restore_ctrl_c = ctrl_c_stops()
    bar, results, written_rows, held_rows = None, [], [], 0
    try:
        for event in run_sweep(base, rows, config, grid, stop, args.rouge, decoding, args.shots):
            if isinstance(event, SweepStart):
                tqdm.write(f"{len(event.labels)} cells ({', '.join(event.labels)}), {event.train_rows} training rows, "
                           f"{event.held_out_rows} held-out rows")
                held_rows = event.held_out_rows
                bar = tqdm(total=event.total_steps, unit="step", dynamic_ncols=True)
            elif isinstance(event, CellEvent) and isinstance(event.event, Step):
                bar.update(1)
                bar.set_postfix(cell=event.label, epoch=event.event.epoch, loss=f"{event.event.loss:.3f}")
            elif isinstance(event, CellEvent) and isinstance(event.event, EpochEnd):
                e = event.event
                held_text = "" if e.held_out_loss is None else (
                    f", held-out loss {e.held_out_loss:.4f}{_on_fewer(e, held_rows)}")
                tqdm.write(f"{event.label} epoch {e.epoch}: train loss {e.train_loss:.4f}{held_text}")
            elif isinstance(event, CellResult) and args.rouge > 0:
                tqdm.write(f"{event.label}: ROUGE-L scored")
            elif isinstance(event, WrittenResult):
                tqdm.write(f"written prompt, {event.label} ({event.tokens:,} tokens): scored")
            elif isinstance(event, SweepDone):
                results, written_rows = event.results, event.written
    finally:
        restore_ctrl_c()
        if bar is not None:
            bar.close()
    if not results:
        raise ValueError("the sweep was stopped before any cell finished; nothing was written")
    print(format_table(results, written_rows))  # first: the numbers are on screen even if a write fails
    csv_path = write_csv(results, out / "sweep.csv", written_rows)
    png_path = plot(results, out / "sweep.png", written_rows)
    print(f"wrote {csv_path} and {png_path}")
    return 0


def cmd_acts(args) -> int:
    from .data import SNAPSHOT_DATE, load_rows, matching, source_note

    rows = load_rows(args.dataset, args.text_only)
    shown = matching(rows, args.search)
    width = max((len(r.act) for r in shown), default=3)
    for row in shown:
        print(f"{row.act:<{width}}  {len(row.prompt.split()):>5} words")
    where = args.dataset
    if source_note(args.dataset):
        where = (f"the snapshot of {args.dataset} shipped with this package (CC0, {SNAPSHOT_DATE}; "
                 "the Hub could not be reached)")
    found = f"{len(shown)} of {len(rows)} acts match {args.search.strip()!r}" if args.search.strip() else f"{len(rows)} acts"
    print(f"{found} from {where}")
    return 0


def cmd_list(args) -> int:
    from . import adapters

    items = adapters.list_adapters(args.adapters_dir)
    if not items:
        print(f"no adapters in {Path(args.adapters_dir).resolve()}")
        return 0
    rows = []
    for a in items:
        tuned, base = adapters.held_out_perplexity(a.get("metrics") or {})
        share = f"{tuned / base:.2f}x" if tuned is not None and base else "-"
        rows.append((a["name"], str(a["num_virtual_tokens"]), "-" if tuned is None else f"{tuned:.2f}", share,
                     str(a.get("created") or "-"), a["base_model"]))
    header = ("name", "tokens", "held-out ppl", "x base", "created", "base model")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]  # columns as wide as their longest cell
    for r in [header, *rows]:
        print(f"{r[0]:{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]:{widths[4]}}  {r[5]}")
    return 0


def cmd_delete(args) -> int:
    from . import adapters

    adapters.delete(args.name, args.adapters_dir)
    print(f"deleted adapter {args.name!r}")
    return 0


def cmd_reference(args) -> int:
    from tqdm import tqdm

    from . import reference
    from .model import load_base
    from .events import Start, Step

    todo = reference.missing(args.adapters_dir, args.model, args.dataset)
    for cell in reference.GRID:
        if cell not in todo:
            print(f"{reference.name(args.model, args.dataset, *cell)}: already saved")
    if not todo:
        return 0
    root = _writable_folder(args.adapters_dir)  # before minutes of training, not after
    rows = _rows(args.dataset)
    print(f"loading {args.model} ...", file=sys.stderr)
    base = load_base(args.model)
    stop, restore_ctrl_c = ctrl_c_stops()
    bar = None

    def save(soft, name: str, root: Path) -> Path:  # a reference replaces a broken one of its own name
        return _save_or_rescue(soft, name, root, overwrite=True)

    try:
        for event in reference.train_references(base, rows, args.model, args.dataset, root, stop, todo, save):
            if isinstance(event, reference.ReferenceSaved):
                bar.close()
                tqdm.write(f"saved {event.name} to {event.folder}")
            elif isinstance(event.event, Start):
                bar = tqdm(total=event.event.total_steps, desc=f"reference {event.label}", unit="step",
                           dynamic_ncols=True)
            elif isinstance(event.event, Step):
                bar.update(1)
                bar.set_postfix(loss=f"{event.event.loss:.3f}", tok_s=f"{event.event.tokens_per_s:.0f}")
    finally:
        restore_ctrl_c()
        if bar is not None:
            bar.close()
    missing = reference.missing(args.adapters_dir, args.model, args.dataset)
    if missing:
        print("stopped: " + ", ".join(reference.name(args.model, args.dataset, *c) for c in missing) + " not saved")
        return 1
    return 0


# --- sharing: push, pull, report (tuning/hub.py, tuning/report.py)


def _add_share_commands(sub) -> None:
    def measured(p: argparse.ArgumentParser) -> None:  # what computing a report needs
        p.add_argument("--model", help="model to load (default: the adapter's base model)")
        p.add_argument("--hub-model", metavar="ID", help=HUB_MODEL_HELP)
        p.add_argument("--dataset", help="dataset whose held-out acts are scored (default: the adapter's)")
        p.add_argument("--precision", default="auto", choices=PRECISIONS)
        p.add_argument("--samples", type=int, default=3, metavar="N",
                       help="held-out acts decoded for ROUGE-L and base-vs-tuned samples (default: 3; 0: none)")
        p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per sample (default: 64)")

    p = sub.add_parser("push", help="upload an adapter with its model card and run report to the Hugging Face Hub",
                       description="Upload saved adapter NAME to the Hub model repo ID (created if missing): PEFT's "
                                   "files, tuning_meta.json and the optimizer state, README.md (the model card), "
                                   "loss.png and report.html. The token comes from HF_TOKEN or `hf auth login`.")
    p.add_argument("name", help="name of a saved adapter")
    p.add_argument("--repo", required=True, metavar="ID", help="Hub repo id, e.g. your-name/poet-20x10")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its setting)")
    p.add_argument("--base-model", metavar="ID",
                   help="Hub id of the base model, when the adapter was trained from a local copy of it")
    measured(p)

    p = sub.add_parser("pull", help="download an adapter from the Hugging Face Hub and save it",
                       description="Download a PEFT prompt-tuning adapter from Hub repo ID (or a local folder laid "
                                   "out as one): only its adapter files, checked like an upload, saved under a free "
                                   "name. A token from HF_TOKEN or `hf auth login` is used for private repos.")
    p.add_argument("repo", metavar="ID", help="Hub repo id (owner/name) or a local folder")
    p.add_argument("--name", help="save as this name (default: the repo's last part; a taken name gets -2, -3, ...)")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")

    p = sub.add_parser("report", help="write a self-contained run report (report.html) and model card (README.md)",
                       description="Score saved adapter NAME against its base model on held-out acts and write "
                                   "DIR/report.html (one file, no network, images inline), DIR/README.md (the model "
                                   "card) and DIR/loss.png.")
    p.add_argument("name", help="name of a saved adapter")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    measured(p)
    _add_shots_flag(p, "also a row of the base model with K examples of training acts written in front, scored "
                       "the same way")


def _token() -> str | None:
    """The user's Hugging Face token: HF_TOKEN, else the stored login; None without either. Never printed."""
    from huggingface_hub import get_token

    return get_token()  # reads HF_TOKEN first, then the file `hf auth login` wrote


def _report_inputs(args, out: str | None = None):
    """(soft, base, rows, dataset) for a report on args.name, as `eval` loads them; `out` checked writable first."""
    from . import adapters

    soft = adapters.load(args.name, args.adapters_dir)
    if args.samples < 0:
        raise ValueError(f"--samples must be 0 or more, got {args.samples}")
    if out is not None:  # before minutes of loading and measuring
        _writable_folder(out, "the report")
    base = _base_for(soft.base_model, args.model, args.precision, args.hub_model)
    soft = adapters.load(args.name, args.adapters_dir, base=base)  # checked against the model
    dataset = args.dataset or soft.config.dataset
    return soft, base, _rows(dataset, soft.config.text_only), dataset


def cmd_push(args) -> int:
    from . import hub
    from .generate import Decoding

    token = _token()
    if not token:
        raise ValueError("pushing needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    decoding = Decoding(max_new_tokens=args.max_new_tokens)  # checked before minutes of loading and measuring
    soft, base, rows, dataset = _report_inputs(args)
    url = hub.push(args.name, args.repo, token, args.adapters_dir, private=args.private, base=base, rows=rows,
                   dataset=dataset, base_model=args.base_model, decoding=decoding, samples=args.samples)
    print(f"pushed {args.name!r} to {url}")
    return 0


def cmd_pull(args) -> int:
    from . import hub

    folder = hub.pull(args.repo, _token(), args.adapters_dir, name=args.name, revision=args.revision)
    print(f"saved adapter {folder.name!r} to {folder}")
    return 0


def cmd_report(args) -> int:
    from . import adapters
    from .generate import Decoding
    from .report import build_report

    decoding = Decoding(max_new_tokens=args.max_new_tokens)  # checked before minutes of loading and measuring
    soft, base, rows, dataset = _report_inputs(args, args.out)
    where = (Path(args.adapters_dir) / adapters.sanitize_name(args.name)).as_posix()  # the card's usage snippet
    html_path, card_path = build_report(base, soft, rows, dataset, args.name, args.out, decoding, args.samples, where,
                                        shots=args.shots)
    print(f"wrote {html_path} and {card_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "bench": cmd_bench,
               "sweep": cmd_sweep, "reference": cmd_reference,
               "list": cmd_list, "delete": cmd_delete, "acts": cmd_acts,
               "push": cmd_push, "pull": cmd_pull, "report": cmd_report}
    try:
        return command[args.command](args)
    except BrokenPipeError:
        # `python -m tuning acts | head -1`: the reader has what it wanted. Point stdout at nothing
        # so Python's flush at exit does not complain, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C while loading, or the second one during training
        print("aborted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        # Our errors (DataError, ModelError, AdapterError, GenerationError, TrainingError, a bad
        # TuneConfig) carry one sentence for the user, and so does a file the OS refused; anything
        # else is a bug and keeps its traceback.
        if type(e).__module__.startswith("tuning") or type(e) is ValueError or isinstance(e, OSError):
            print(f"error: {e}", file=sys.stderr)  # an OSError is this machine's (a full disk, a permission)
            return 1
        raise
