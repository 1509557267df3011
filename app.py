"""A page to *see* prompt tuning: pick an act, train a soft prompt, watch the loss, compare base and tuned.

The entry point a Hugging Face Space runs: the settings from flags or the environment, then the
page (`ui.layout.build_app`) and its launch. The page itself is the `ui/` package, one module per
tab; the engine it drives is `tuning/`, which never imports gradio.

    python app.py --model openai-community/gpt2 --dataset fka/awesome-chatgpt-prompts
"""

from __future__ import annotations

from ui import gpu_calls  # noqa: F401  first: on a ZeroGPU Space `spaces` must be imported before torch

import argparse
import asyncio
import contextlib
import logging
import os
import threading

import gradio as gr

from tuning import adapters
from tuning.config import DEFAULT_DATASET, DEFAULT_MODEL
from tuning.jobs import limit_memory_arenas
from tuning.model import load_base
from ui.checks import USER_ERRORS
from ui.layout import build_app
from ui.zips import MAX_UPLOAD_BYTES


def warm_up(model: str) -> None:
    with contextlib.suppress(*USER_ERRORS, OSError):
        load_base(model)


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("TUNING_MODEL", DEFAULT_MODEL))
    parser.add_argument("--dataset", default=os.environ.get("TUNING_DATASET", DEFAULT_DATASET))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=_env_int("GRADIO_SERVER_PORT", 7860))
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    parser.add_argument("--adapters-dir", default=os.environ.get("TUNING_ADAPTERS_DIR", str(adapters.DEFAULT_ROOT)))
    parser.add_argument("--max-epochs", type=int, default=_env_int("TUNING_MAX_EPOCHS", 50), help="1-50")
    parser.add_argument("--max-steps", type=int, default=_env_int("TUNING_MAX_STEPS", 2000),
                        help="longest run a user may start, in optimizer steps")
    parser.add_argument("--max-adapters", type=int, default=_env_int("TUNING_MAX_ADAPTERS", 200),
                        help="saved adapters kept on this server, all visitors together")
    parser.add_argument("--max-adapter-bytes", type=int, default=_env_int("TUNING_MAX_ADAPTER_BYTES", 500 * 2**20),
                        help="total size of the saved adapters, in bytes")
    parser.add_argument("--max-queue", type=int, default=_env_int("TUNING_MAX_QUEUE", 64),
                        help="events waiting at once; one more is answered 'queue is full'")
    parser.add_argument("--hub-model", default=os.environ.get("TUNING_HUB_MODEL"),
                        help="the Hub id of --model when it is a local copy (pushed model cards name it)")
    # None when not given: Gradio then reads GRADIO_MCP_SERVER, the only switch a Space has (it passes no flags)
    parser.add_argument("--mcp", action="store_const", const=True, default=None,
                        help="also serve the documented API as MCP tools at /gradio_api/mcp/ "
                             "(also GRADIO_MCP_SERVER=true)")
    parser.add_argument("--no-reference-adapters", dest="reference_adapters", action="store_false",
                        default=os.environ.get("TUNING_REFERENCE_ADAPTERS", "1") != "0",
                        help="do not train the reference adapters (the seed's 5x5 and 20x10) at start "
                             "(also TUNING_REFERENCE_ADAPTERS=0)")
    return parser.parse_args(argv)


async def _built(args: argparse.Namespace) -> gr.Blocks:
    return build_app(args.model, args.dataset, args.adapters_dir, args.max_epochs, args.max_steps,
                     args.max_adapters, args.max_adapter_bytes, args.max_queue,
                     reference_adapters=args.reference_adapters, hub_model=args.hub_model)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    limit_memory_arenas()  # before the server's threads start: each would otherwise keep freed memory of its own
    # Built inside a running event loop: outside one, Gradio makes a new loop for each internal app it
    # builds and drops the last, and a dropped loop's finalizer can print a traceback into the server log.
    app = asyncio.run(_built(args))
    # Load the base model while the page comes up, so the first Train click does not wait for it.
    # A failure here is not cached: the first request that needs the model tries again and says why.
    threading.Thread(target=warm_up, args=(args.model,), daemon=True, name="load-base").start()
    app.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD_BYTES,
               mcp_server=args.mcp)


if __name__ == "__main__":
    main()
