"""Share adapters through the Hugging Face Hub: push one with its card and report, pull one back.

`push()` uploads a model repo that `PeftModel.from_pretrained(base, repo_id)` loads: PEFT's two
files, our `tuning_meta.json` and optimizer state, the model card (`README.md`, report.py), the
loss chart it shows (`loss.png`) and the run report (`report.html`). Nothing else is uploaded.

`pull()` trusts nothing because it came from the Hub: it downloads only the adapter's own files
(`PULL_FILES`), checks their sizes before reading any of them, then loads them with
`adapters.load_folder`, every check an upload gets (safetensors only, an allow-listed config,
the shapes), and saves under a name that is free, never over an existing adapter. A local
folder laid out like a repo is pulled the same way (offline use, tests).

The token is the caller's (a visitor's own login in the app, `HF_TOKEN` or the stored login in
the CLI): it is passed to `HfApi` for this one call and never logged, stored or put in a
message. `pull(token=None)` goes anonymously, never with a token found on the machine, so a
server cannot lend its own login to a visitor.

What it does not do: log in, choose a repo name, or train.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from . import adapters
from .adapters import AdapterError
from .data import Row
from .generate import Decoding
from .model import Base

# The only files pull() downloads or copies; everything else in a repo (README.md, report.html,
# any code) is never fetched.
PULL_FILES = (adapters.CONFIG_FILE, adapters.WEIGHTS_FILE, adapters.META_FILE, adapters.OPTIMIZER_FILE)
PICKLE_FILE = "adapter_model.bin"  # looked for, never fetched: only to say why a repo cannot be used
MAX_PULL_BYTES = 50 * 2**20  # the app's upload cap; a GPT-2 prompt of 100 tokens with its optimizer is 1 MB


class HubError(ValueError):
    """A Hub push or pull that cannot be done as asked; the message is one sentence for the user."""


def push(
    name: str,
    repo_id: str,
    token: str,
    root: Path | str = adapters.DEFAULT_ROOT,
    private: bool = False,
    base: Base | None = None,
    rows: Sequence[Row] | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    decoding: Decoding | None = None,
    samples: int = 3,
) -> str:
    """Upload adapter `name` from `root` to the Hub model repo `repo_id` (created if missing); returns its URL.

    The report is computed first, on `base` and `rows` (loaded from the adapter's own base model and
    dataset when not given), so a failure there uploads nothing. `dataset` defaults to the adapter's.
    `base_model` names the Hub id of the model when the adapter was trained from a local copy: the
    card's `base_model` must be a Hub id. `private` applies when the repo is created; an existing
    repo keeps its visibility.
    """
    from huggingface_hub import HfApi

    from .report import is_hub_id, measure, write_report

    if not isinstance(token, str) or not token.strip():
        raise HubError("pushing to the Hub needs a Hugging Face token with write access; log in first")
    _check_repo_id(repo_id)
    soft = adapters.load(name, root, base=base)
    base_model = base_model or soft.base_model
    if not is_hub_id(base_model):
        raise HubError(f"this adapter's base model is the local path {base_model}; name its Hub id "
                       "(e.g. openai-community/gpt2) so the model card can say which model it tunes")
    if base is None:
        from .model import load_base

        base = load_base(soft.base_model)
        soft = adapters.load(name, root, base=base)
    dataset = dataset or soft.config.dataset
    if rows is None:
        from .data import load_rows

        rows = load_rows(dataset, soft.config.text_only)

    with tempfile.TemporaryDirectory(prefix="tuning-push-") as tmp:
        folder = Path(tmp) / "repo"
        folder.mkdir()
        source = Path(root) / name
        for file in PULL_FILES:  # the adapter's own files as saved (adapters.load checked them)
            if (source / file).is_file():
                shutil.copyfile(source / file, folder / file)
        shown = soft
        if base_model != soft.base_model:  # trained from a local copy: the upload names the Hub id, not our path
            _rename_model(folder, soft.base_model, base_model)
            model = base_model if soft.config.model == soft.base_model else soft.config.model
            shown = dataclasses.replace(soft, base_model=base_model, config=dataclasses.replace(soft.config, model=model))
        write_report(measure(base, shown, rows, dataset, name, decoding, samples), folder, repo_id, base_model)
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                              commit_message=f"Upload prompt-tuning adapter {name}")
        except Exception as e:  # network, auth, quota, a name taken: all the user's to fix, said in one sentence
            raise _hub_error(e, repo_id, token, "push to") from None
    return str(url)


def pull(
    repo_id: str,
    token: str | None,
    root: Path | str = adapters.DEFAULT_ROOT,
    name: str | None = None,
    revision: str | None = None,
    base: Base | None = None,
    max_count: int | None = None,
    max_bytes: int | None = None,
    local_ok: bool = True,
) -> Path:
    """Fetch a prompt-tuning adapter from a Hub repo (or a local folder laid out as one) and save it under `root`.

    Saved as `name`, default the repo's last part, sanitized; a taken name becomes name-2,
    name-3, ... (nothing is overwritten). With `base`, the adapter must fit that model.
    `max_count` and `max_bytes` are a server's caps (adapters.save). `local_ok=False` (a web
    server's visitors): `repo_id` is always a Hub id, never a folder on this machine. Returns the saved folder.
    """
    if not local_ok or not isinstance(repo_id, str) or not repo_id.strip():
        _check_repo_id(repo_id)  # before the name: an empty box is a repo problem, not a name one
    local = Path(repo_id).expanduser() if local_ok and isinstance(repo_id, str) and repo_id else None
    if name is None and local is not None and local.is_dir():
        name = local.resolve().name  # `pull .` or `pull ./`: the folder's own name, not "."
    wanted = adapters.sanitize_name(name if name is not None else str(repo_id).rstrip("/").rsplit("/", 1)[-1])
    if wanted.startswith(adapters.RESERVED_PREFIX):
        raise HubError(f"names starting with {adapters.RESERVED_PREFIX!r} are kept for the reference adapters; "
                       "give the adapter another name")
    with tempfile.TemporaryDirectory(prefix="tuning-pull-") as tmp:
        folder = Path(tmp) / "adapter"
        folder.mkdir()
        if local is not None and local.is_dir():
            _check_files(_local_sizes(local))
            for file in PULL_FILES:
                if (local / file).is_file():
                    shutil.copyfile(local / file, folder / file)
        else:
            _download(repo_id, token, revision, folder)
        _check_files({f.name: f.stat().st_size for f in folder.iterdir() if f.is_file()})  # what actually arrived
        soft = adapters.load_folder(folder, base)
        root = Path(root)
        taken = {p.name for p in root.iterdir()} if root.is_dir() else set()
        return adapters.save(soft, adapters.free_name(wanted, taken), root, overwrite=False,
                             max_count=max_count, max_bytes=max_bytes)


def _rename_model(folder: Path, local: str, hub_id: str) -> None:
    """Point the copied adapter files at `hub_id` where they name the local model path `local`.

    PEFT's adapter_config.json (`base_model_name_or_path`) and our tuning_meta.json (`base_model`,
    `config.model`): whoever pulls the adapter loads it on the Hub model, and this machine's paths
    stay here.
    """
    config_path = folder / adapters.CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = hub_id
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    meta_path = folder / adapters.META_FILE
    if meta_path.is_file():
        record = json.loads(meta_path.read_text(encoding="utf-8"))
        record["base_model"] = hub_id
        if isinstance(record.get("config"), dict) and record["config"].get("model") == local:
            record["config"]["model"] = hub_id
        meta_path.write_text(json.dumps(record, indent=2), encoding="utf-8")


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except (HFValidationError, TypeError):
        raise HubError(f"{repo_id!r} is not a Hub repo id; write it as owner/name") from None


def _local_sizes(folder: Path) -> dict[str, int]:
    """{file name: bytes} of the plain files at the top of `folder` (a symlink is refused, not followed)."""
    sizes = {}
    for f in folder.iterdir():
        if f.name in PULL_FILES and f.is_symlink():
            raise AdapterError(f"{f.name} is a symbolic link; an adapter's files must be plain files")
        if f.is_file() and not f.is_symlink():
            sizes[f.name] = f.stat().st_size
    return sizes


def _check_files(sizes: dict[str, int]) -> None:
    """Refuse a file list without safetensors weights, or whose adapter files are over MAX_PULL_BYTES, before reading any.

    The messages are the ones an upload gets (adapters.load_folder, the app's size cap).
    """
    if adapters.WEIGHTS_FILE not in sizes and PICKLE_FILE in sizes:
        raise AdapterError("this adapter has only adapter_model.bin (pickle), which is unsafe to load; "
                           "save it as safetensors")
    total = sum(size for file, size in sizes.items() if file in PULL_FILES)
    if total > MAX_PULL_BYTES:
        raise AdapterError(f"the adapter's files are over {MAX_PULL_BYTES // 2**20} MB; an adapter is far smaller")


def _download(repo_id: str, token: str | None, revision: str | None, folder: Path) -> None:
    """Download PULL_FILES of `repo_id` into `folder`, after checking the file list and sizes the Hub reports."""
    from huggingface_hub import snapshot_download

    _check_repo_id(repo_id)
    # token=False: anonymous. None would let huggingface_hub use a token stored on this machine.
    auth = token if isinstance(token, str) and token.strip() else False
    try:
        listed = snapshot_download(repo_id, revision=revision, token=auth, allow_patterns=[*PULL_FILES, PICKLE_FILE],
                                   local_dir=folder.parent / "dry-run", dry_run=True)
        _check_files({i.filename: i.file_size or 0 for i in listed})
        snapshot_download(repo_id, revision=revision, token=auth, allow_patterns=list(PULL_FILES),
                          local_dir=folder)
    except AdapterError:
        raise
    except Exception as e:  # offline, unknown or gated repo, bad revision: the user's to fix
        raise _hub_error(e, repo_id, token, "pull from") from None


def _hub_error(error: Exception, repo_id: str, token: str | None, doing: str) -> HubError:
    """One sentence for a failed Hub call, with the token (should a library ever echo it) blanked out."""
    from huggingface_hub.errors import (
        DryRunError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled,
        RepositoryNotFoundError, RevisionNotFoundError,
    )

    if isinstance(error, (DryRunError, LocalEntryNotFoundError)) and isinstance(error.__cause__, Exception):
        return _hub_error(error.__cause__, repo_id, token, doing)  # the Hub's own answer, e.g. "not found"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, GatedRepoError):
        text = f"{repo_id} is gated on the Hub; accept its terms there with your account first"
    elif isinstance(error, RepositoryNotFoundError):
        text = f"there is no model repo {repo_id} on the Hub (or it is private and this login cannot see it)"
    elif isinstance(error, RevisionNotFoundError):
        text = f"{repo_id} has no such revision"
    elif isinstance(error, HfHubHTTPError) and status in (401, 403):
        text = f"the Hub refused to let this login {doing} {repo_id} (HTTP {status}); check the token's write access"
    elif isinstance(error, (OfflineModeIsEnabled, LocalEntryNotFoundError, DryRunError, ConnectionError)) or (
        type(error).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException")
    ):
        text = f"could not reach the Hugging Face Hub to {doing} {repo_id} (no network?)"
    else:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        text = f"could not {doing} {repo_id} on the Hub: {first}"
    if token:
        text = text.replace(token, "***")
    return HubError(text)
