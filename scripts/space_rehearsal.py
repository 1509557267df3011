"""Start the app exactly as a Hugging Face Space does, and check what a visitor and an MCP client get.

A Space runs `python app.py` with no flags; everything else comes from its environment: the
Space's id and host, `SYSTEM=spaces`, Gradio's server name and port, `GRADIO_MCP_SERVER` (a
Space variable), the OAuth client that `hf_oauth: true` registers, and the Hugging Face cache
that `preload_from_hub` filled at build time. This script builds that world on one machine, with
no network:

1. copies the repository's committed files (what `git push` sends to the Space) to a folder;
2. puts a model into a fresh `HF_HOME` in the Hub cache layout, as `openai-community/gpt2`
   (`--model-dir` a saved model folder, or a tiny random GPT-2 built here);
3. optionally trains the reference adapters into the copy first (`--references`), as if committed;
4. runs `python app.py` there with the Space's environment and checks: the page and its six
   tabs, the Log in button, Compare opening on the reference adapters with nothing training,
   a first Compare answer, the MCP tool list, and no traceback in the server's log.

It prints the seconds from process start to the page and to the first Compare answer, and
exits 1 when a check fails. The browser is Debian's chromium driven by Playwright.

    python scripts/space_rehearsal.py --references             # a tiny model: checks the wiring in ~1 minute
    python scripts/space_rehearsal.py --model-dir /models/gpt2 --references --keep
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # served.py beside this file, however it is loaded
from served import free_port, wait_for_page  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "openai-community/gpt2"  # the app's default model, which a Space preloads
API_TOOLS = {"list_acts", "list_saved_adapters", "compare_texts", "train_adapter", "training_status",
             "stop_training_job", "evaluate_adapter"}
TABS = ["Dataset", "Train", "Compare", "Evaluate", "Sweep & history", "Adapters"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def committed_files(repo: Path, dest: Path) -> int:
    """Copy what `git push` would send (tracked files, as in the work tree) to `dest`; how many."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, check=True, capture_output=True).stdout
    count = 0
    for name in filter(None, names.decode().split("\0")):
        source = repo / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
            count += 1
    return count


def tiny_model(dest: Path) -> None:
    """A tiny random GPT-2 with a byte-level BPE trained on the bundled dataset snapshot (no download)."""
    import csv

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    with open(REPO / "tuning" / "snapshot" / "awesome-chatgpt-prompts.csv", encoding="utf-8") as f:
        texts = [row["prompt"] for row in csv.DictReader(f)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def preload(model_dir: Path, hf_home: Path) -> Path:
    """Lay `model_dir` out as `preload_from_hub` leaves the model: the Hub cache under HF_HOME; the snapshot folder."""
    digest = hashlib.sha1(str(model_dir.resolve()).encode()).hexdigest()  # stands in for the commit hash
    repo = hf_home / "hub" / f"models--{MODEL_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / digest
    snapshot.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, snapshot / item.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(digest)
    return snapshot


def space_environment(hf_home: Path, port: int) -> dict[str, str]:
    """The variables a Gradio Space with `hf_oauth: true` and GRADIO_MCP_SERVER set runs under."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGINGFACE", "GRADIO_", "TUNING_", "SPACE", "OAUTH_", "TRANSFORMERS_"))}
    return {
        **keep,
        "SPACE_ID": "rehearsal/prompt-tuning", "SPACE_AUTHOR_NAME": "rehearsal", "SPACE_REPO_NAME": "prompt-tuning",
        "SPACE_HOST": "rehearsal-prompt-tuning.hf.space", "SYSTEM": "spaces",
        "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port), "GRADIO_MCP_SERVER": "true",
        "OAUTH_CLIENT_ID": "rehearsal-client", "OAUTH_CLIENT_SECRET": "rehearsal-secret",
        "OAUTH_SCOPES": "openid profile write-repos manage-repos", "OPENID_PROVIDER_URL": "https://huggingface.co",
        "HF_HOME": str(hf_home), "PYTHONUNBUFFERED": "1",
    }


async def mcp_tools(url: str) -> list[str]:
    """The tool names an MCP client sees at the app's MCP endpoint (streamable HTTP)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url + "gradio_api/mcp/") as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return sorted(tool.name for tool in (await session.list_tools()).tools)


def browse(url: str, t0: float, results: dict, timeout_s: float) -> None:
    """The page as a visitor meets it: six tabs, Log in, Compare on the references, a first answer."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=timeout_s * 1000)  # its own default is 5 s; a busy machine needs more
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url)
        for name in TABS:
            expect(page.get_by_role("tab", name=name, exact=True)).to_be_visible()
        results["tabs"] = TABS
        page.get_by_role("tab", name="Adapters", exact=True).click()
        page.get_by_text("The Hugging Face Hub: push or load an adapter").click()  # the accordion it sits in
        login = page.get_by_role("button", name="Sign in with Hugging Face")
        login.wait_for(state="visible")
        results["login_button"] = login.is_visible()
        page.get_by_role("tab", name="Compare", exact=True).click()
        picked = page.locator("#compare-adapter input")
        expect(picked).to_have_value(re.compile(r"^reference-"))
        results["compare_opens_on"] = picked.input_value()
        page.get_by_role("button", name="Generate").click()
        for column in ("#base-output textarea", "#tuned-output textarea"):
            expect(page.locator(column)).not_to_have_value("", timeout=timeout_s * 1000)
        results["seconds_to_first_answer"] = round(time.monotonic() - t0, 1)
        # read once the answer is in: before, the line may hold Gradio's timer of the event that fills it ("0.3s")
        results["reference_line"] = page.locator("#reference-status").inner_text().strip()
        results["first_answer"] = {"base": page.locator("#base-output textarea").input_value()[:120],
                                   "tuned": page.locator("#tuned-output textarea").input_value()[:120]}
        browser.close()


def rehearse(args: argparse.Namespace, work: Path) -> dict:
    results: dict = {"checks": {}}
    space = work / "space"
    results["files_copied"] = committed_files(REPO, space)
    hf_home = work / "hf-home"
    model_dir = Path(args.model_dir) if args.model_dir else work / "tiny-gpt2"
    if not args.model_dir:
        tiny_model(model_dir)
    preload(model_dir, hf_home)
    if args.references:  # as if trained on your machine and committed (README "Deploy to a Space")
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "tuning", "reference"], cwd=space, check=True, capture_output=True,
                       env={**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
        results["seconds_training_references"] = round(time.monotonic() - t, 1)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (space / "adapters").glob("*/*"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = work / "app.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=space_environment(hf_home, port),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_page(url, process, args.timeout)
        results["seconds_to_page"] = round(time.monotonic() - t0, 1)
        browse(url, t0, results, args.timeout)
        results["mcp_tools"] = asyncio.run(mcp_tools(url))
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    after = sorted((p.name, p.stat().st_mtime_ns) for p in (space / "adapters").glob("*/*"))
    log_text = log_path.read_text(errors="replace")
    checks = results["checks"]
    checks["six tabs"] = results.get("tabs") == TABS
    checks["Log in button shown"] = bool(results.get("login_button"))
    tools = {re.sub(r"^prompt_tuning_", "", name) for name in results.get("mcp_tools", [])}  # a Space prefixes its name
    checks["the documented API as MCP tools, and only it"] = tools == API_TOOLS
    checks["Compare opens on a reference adapter"] = results.get("compare_opens_on", "").startswith("reference-")
    checks["no traceback in the log"] = "Traceback" not in log_text
    if args.references:
        checks["nothing trained at start"] = (before == after and
                                              "Training the reference adapters" not in results.get("reference_line", ""))
    results["log_tail"] = log_text.splitlines()[-15:]
    results["ok"] = all(checks.values())
    if args.keep:
        results["kept"] = str(work)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a saved model folder to preload as openai-community/gpt2 "
                                            "(default: a tiny random GPT-2 built here)")
    parser.add_argument("--references", action="store_true",
                        help="train the reference adapters into the copy first, as if committed")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the page, and for each step")
    parser.add_argument("--json", dest="json_out", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (the copy, HF_HOME, the app's log)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="space-rehearsal-"))
    try:
        results = rehearse(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for name, passed in results["checks"].items():
        print(f"{'ok  ' if passed else 'FAIL'} {name}")
    print(f"page after {results.get('seconds_to_page')} s; first Compare answer after "
          f"{results.get('seconds_to_first_answer')} s (from process start)")
    print("MCP tools:", ", ".join(results.get("mcp_tools", [])))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    if not results["ok"]:
        print("\n".join(["server log (last lines):", *results["log_tail"]]))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
