"""Soft prompts against written ones, on the same held-out tokens: the table of docs/quality.md.

For 0, 1, 2 and 4 examples (written.py: whole prompts of training acts, drawn with the adapters'
seed) and each adapter named, in one process on one loaded model:
- held-out perplexity over exactly the same tokens (the first adapter's held-out acts, encoded as
  it was trained: evaluate.mean_loss with each prompt in front);
- mean ROUGE-L of greedy 64-token continuations of "I want you to act as a <act>." on the first
  N held-out acts (evaluate.rouge_compare);
- the context each spends (prompt tokens in front of the input) and the seconds of one 64-token
  generation of the default input, decoded alone, warm (one untimed run first, then the median).

    python scripts/written_baseline.py --model MODEL.gguf --dataset prompts.csv --adapters-dir DIR \
        --adapter reference-5x5-... --adapter reference-20x10-... --rouge 21 --out docs/written_baseline.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuning import adapters, written  # noqa: E402
from tuning.data import load_rows  # noqa: E402
from tuning.evaluate import mean_loss, rouge_compare  # noqa: E402
from tuning.generate import Decoding, generate  # noqa: E402
from tuning.hardware import cpu_kind, cpu_model  # noqa: E402
from tuning.model import load_base  # noqa: E402
from tuning.rows import encode_rows, held_out_for  # noqa: E402

INPUT = "I want you to act as a rapper."  # the seed's example, Compare's default input


def decode_seconds(base, prompt, repeats: int) -> tuple[float, int]:
    """Median seconds of one 64-token generation of INPUT with `prompt` in front, after one untimed run; tokens made."""
    decoding = Decoding(max_new_tokens=64)
    text = generate(base, prompt, INPUT, decoding)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        text = generate(base, prompt, INPUT, decoding)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(base.encode(text))


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

    results = []
    for label, prompt, tokens, acts in entries:
        started = time.perf_counter()
        loss = mean_loss(base, prompt, encoded, softs[0].config.batch_size)
        rouge = rouge_compare(base, prompt, rouge_rows)["tuned"] if rouge_rows else None
        seconds, made = decode_seconds(base, prompt, args.repeats)
        result = {"row": label, "prompt_tokens": tokens, "context_tokens": tokens + input_tokens,
                  "perplexity": math.exp(loss), "loss": loss, "rouge_l": rouge, "decode_s": seconds,
                  "decoded_tokens": made, "examples": acts}
        results.append(result)
        print(f"{label}: perplexity {result['perplexity']:.2f}, ROUGE-L {rouge if rouge is None else round(rouge, 4)}, "
              f"{tokens} prompt tokens, {seconds:.2f} s for {made} tokens ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)

    summary = {"model": args.model, "dataset": args.dataset, "cpu": f"{cpu_model()} ({cpu_kind()})", "dtype": str(base.dtype),
               "held_out_acts": len(held), "tokens_scored": sum(len(r) - 1 for r in encoded),
               "rouge_acts": len(rouge_rows), "input": INPUT, "input_tokens": input_tokens, "rows": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print("| prompt | context tokens | held-out perplexity | ROUGE-L | 64-token decode (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        rouge = "–" if r["rouge_l"] is None else f"{r['rouge_l']:.4f}"
        print(f"| {r['row']} | {r['prompt_tokens']} + {input_tokens} | {r['perplexity']:.2f} | {rouge} | "
              f"{r['decode_s']:.2f} ({r['decoded_tokens']} tokens) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
