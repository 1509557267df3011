"""Soft prompts against written ones, on the same held-out tokens: the table of docs/quality.md.

For 0, 1, 2 and 4 examples (written.py: whole prompts of training acts, drawn with the adapters'
seed) and each adapter named, in one process on one loaded model:
- held-out perplexity over exactly the same tokens (the first adapter's held-out acts, encoded as
  it was trained: evaluate.mean_loss with each prompt in front);
- mean ROUGE-L of greedy 64-token continuations of "I want you to act as a <act>." on the first
  N held-out acts (evaluate.rouge_compare);
- the context each spends (prompt tokens in front of the input) and the seconds of one 64-token
  generation of the default input, decoded alone to its full length (end-of-text ignored), warm
  (one untimed round first, then the median of interleaved rounds).

    python scripts/written_baseline.py --model MODEL.gguf --dataset prompts.csv --adapters-dir DIR \
        --adapter reference-5x5-... --adapter reference-20x10-... --rouge 21 --out docs/written_baseline.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuning import adapters, written  # noqa: E402
from tuning.data import load_rows  # noqa: E402
from tuning.evaluate import mean_loss, rouge_compare  # noqa: E402
from tuning.generate import Decoding, stream_ids  # noqa: E402
from tuning.hardware import cpu_kind, cpu_model  # noqa: E402
from tuning.model import Base, load_base  # noqa: E402
from tuning.rows import encode_rows, held_out_for  # noqa: E402

INPUT = "I want you to act as a rapper."  # the seed's example, Compare's default input


@dataclasses.dataclass(eq=False)
class _Endless(Base):
    """The same model with no end-of-text: every generation runs its full length, so times compare."""

    @property
    def eos_id(self) -> int:
        return -1


def decode_seconds(base: Base, prompts: list, repeats: int) -> list[float]:
    """Median seconds of a 64-token generation of INPUT with each prompt in front, decoded alone.

    Rounds are interleaved (every prompt once per round) so a busy moment lands on all of them
    alike, and the first round is not timed (kernels are made for new shapes then).
    """
    endless = _Endless(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Base) if f.init})
    ids = base.encode(INPUT)
    decoding = Decoding(max_new_tokens=64)
    times: list[list[float]] = [[] for _ in prompts]
    for round_ in range(repeats + 1):
        for i, prompt in enumerate(prompts):
            started = time.perf_counter()
            *_, last = stream_ids(endless, [prompt], ids, decoding)
            assert len(last[0]) == 64
            if round_:
                times[i].append(time.perf_counter() - started)
    return [statistics.median(t) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--adapters-dir", required=True)
    parser.add_argument("--adapter", action="append", required=True, help="a saved adapter; repeat for more")
    parser.add_argument("--shots", default="1,2,4", help="example counts (default: 1,2,4)")
    parser.add_argument("--rouge", type=int, default=21, help="held-out acts for ROUGE-L (default: 21)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per row (default: 3)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--timing-only", action="store_true",
                        help="only time the generations again, updating the rows of --out (scores are deterministic)")
    args = parser.parse_args()

    base = load_base(args.model, args.precision)
    softs = [adapters.load(name, args.adapters_dir, base=base) for name in args.adapter]
    rows = load_rows(args.dataset)
    held = held_out_for(softs[0], rows, args.dataset)
    encoded = encode_rows(base, held, softs[0].config)
    rouge_rows = held[: args.rouge]
    input_tokens = len(base.encode(INPUT))
    print(f"{len(held)} held-out acts, {sum(len(r) - 1 for r in encoded):,} tokens scored; "
          f"ROUGE-L on {len(rouge_rows)}; {cpu_model()} ({cpu_kind()}); {base.dtype}", file=sys.stderr)

    entries = [("base (0 examples)", None, 0, None)]
    for k in (int(s) for s in args.shots.split(",")):
        w = written.for_adapters(base, softs, rows, args.dataset, k)
        written.check_fits(base, w, max(len(r) for r in encoded), what="the longest held-out prompt")
        entries.append((w.describe(), written.embeddings(base, w), w.tokens, [r.act for r in w.examples]))
    for name, soft in zip(args.adapter, softs):
        entries.append((f"{name} · {soft.num_virtual_tokens} virtual tokens", soft.embeddings, soft.num_virtual_tokens,
                        None))

    if args.timing_only:
        results = json.loads(Path(args.out).read_text())["rows"]
    else:
        results = []
        for label, prompt, tokens, acts in entries:
            loss = mean_loss(base, prompt, encoded, softs[0].config.batch_size)
            rouge = rouge_compare(base, prompt, rouge_rows)["tuned"] if rouge_rows else None
            results.append({"row": label, "prompt_tokens": tokens, "context_tokens": tokens + input_tokens,
                            "perplexity": math.exp(loss), "loss": loss, "rouge_l": rouge, "examples": acts})
            print(f"{label}: perplexity {math.exp(loss):.2f}, ROUGE-L {rouge}", file=sys.stderr)
    for result, seconds in zip(results, decode_seconds(base, [e[1] for e in entries], args.repeats)):
        result["decode_s"] = seconds
    load = os.getloadavg()[0]

    summary = {"model": args.model, "dataset": args.dataset, "cpu": f"{cpu_model()} ({cpu_kind()})", "dtype": str(base.dtype),
               "held_out_acts": len(held), "tokens_scored": sum(len(r) - 1 for r in encoded),
               "rouge_acts": len(rouge_rows), "input": INPUT, "load_average_after_timing": load, "input_tokens": input_tokens, "rows": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print("| prompt | context tokens (prompt + input) | held-out perplexity | ROUGE-L | 64-token decode (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        rouge = "–" if r["rouge_l"] is None else f"{r['rouge_l']:.4f}"
        print(f"| {r['row']} | {r['prompt_tokens']} + {input_tokens} | {r['perplexity']:.2f} | {rouge} | "
              f"{r['decode_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
