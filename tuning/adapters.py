"""Trained soft prompts on disk, as PEFT prompt-tuning adapter folders.

A saved adapter is `root/<name>/` holding what PEFT itself writes and reads
(`adapter_config.json`, `adapter_model.safetensors` with the one key `prompt_embeddings`,
shape `[num_virtual_tokens, hidden]`, float32), so `PeftModel.from_pretrained(model, folder)`
loads it, plus our `tuning_meta.json` (dataset, acts, loss history, metrics, created time)
and, when known, `tuning_optimizer.safetensors`: AdamW's state after the last step (`exp_avg`,
`exp_avg_sq` shaped like the prompt, `step` a scalar; float32), so training can be resumed.
PEFT ignores both files; a folder without the optimizer file loads with `optimizer_state=None`.

Saving is atomic: a crash mid-save leaves the previous adapter intact and no partial folder.
Loading reads safetensors only (never pickle) and checks every field a hostile or broken
upload could get wrong. Names are checked so that nothing is read or written outside `root`.

What this file does not do: train (train.py), or apply the prompt to a model (model.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import TuneConfig
from .model import Base, SoftPrompt


class AdapterError(ValueError):
    """An adapter that cannot be saved, found or loaded as asked; the message is one sentence for the user."""


DEFAULT_ROOT = Path("adapters")  # relative to the working directory; every function takes root=
META_FILE = "tuning_meta.json"
CONFIG_FILE = "adapter_config.json"  # PEFT's names
WEIGHTS_FILE = "adapter_model.safetensors"
WEIGHTS_KEY = "prompt_embeddings"  # the only key PEFT 0.21 writes and reads for prompt tuning (tuners_utils.BasePromptEncoder)
OPTIMIZER_FILE = "tuning_optimizer.safetensors"
OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq", "step")
MAX_OPTIMIZER_STEP = 2**24  # AdamW keeps `step` as float32, exact for whole numbers up to here
MAX_NAME = 64
RESERVED_PREFIX = "reference-"  # the reference adapters (reference.py): outside the caps, not a visitor's to change
MAX_VIRTUAL_TOKENS = 100  # TuneConfig's limit

_swap_lock = threading.Lock()  # two sessions saving the same name: the last one wins, cleanly


def sanitize_name(name: str) -> str:
    """A safe folder name: letters, digits, `-`, `_`, `.`; spaces become `-`; at most 64 characters.

    >>> sanitize_name("  My prompt: v2! ")
    'My-prompt-v2'
    >>> sanitize_name("../etc/passwd")
    'etcpasswd'
    """
    if not isinstance(name, str):
        raise AdapterError(f"an adapter name must be text, got {type(name).__name__}")
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "", name.strip().replace(" ", "-"))
    # A leading dot would hide the folder (and our temp folders start with one); no leading dash for shells.
    cleaned = cleaned.lstrip(".-")[:MAX_NAME]
    if not cleaned:
        raise AdapterError(f"{name!r} has no usable characters for an adapter name (letters, digits, - _ .)")
    return cleaned


def free_name(name: str, taken: set[str]) -> str:
    """`name`, or the first of name-2, name-3, ... not in `taken`: what a save that must not overwrite uses.

    The stem is shortened where the suffix would take the name past MAX_NAME characters (the
    name a save would keep), so a long taken name still gets a free one.

    >>> free_name("poet", {"poet", "poet-2"})
    'poet-3'
    """
    n, candidate = 2, name
    while candidate in taken:
        suffix = f"-{n}"
        candidate, n = f"{name[: MAX_NAME - len(suffix)].rstrip('-')}{suffix}", n + 1
    return candidate


def save(
    soft: SoftPrompt,
    name: str,
    root: Path | str = DEFAULT_ROOT,
    overwrite: bool = True,
    max_count: int | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Write `soft` to `root/<sanitize_name(name)>/` atomically and return that folder.

    The prompt is written as float32 `[num_virtual_tokens, hidden]`; `soft.meta` must be
    JSON-serialisable and free of NaN. `max_count` and `max_bytes` cap the adapters under
    `root` after this save (a shared server's disk); replacing an adapter counts its new size only.
    """
    name = sanitize_name(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = _adapter_dir(name, root)
    if target.exists() and not overwrite:
        raise AdapterError(f"an adapter named {name!r} already exists")

    embeddings = _checked_embeddings(soft)
    optimizer_state = None
    if soft.optimizer_state is not None:
        optimizer_state = _check_optimizer_state(soft.optimizer_state, tuple(embeddings.shape))
    created = soft.meta.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    record = {
        "format": 1,
        "base_model": soft.base_model,
        "config": soft.config.to_dict(),
        "meta": soft.meta,
        "created": created,
    }
    try:  # before any file is touched: a bad value leaves nothing behind
        meta_text = json.dumps(record, indent=2, allow_nan=False)  # tuples become lists
    except ValueError as e:
        raise AdapterError(f"the adapter's metadata has NaN or infinity in it, so it was not saved ({e})") from e

    peft_config = _peft_config(soft, embeddings)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    old: Path | None = None
    try:
        peft_config.save_pretrained(str(tmp))
        save_file({WEIGHTS_KEY: embeddings}, str(tmp / WEIGHTS_FILE))
        if optimizer_state is not None:
            save_file(optimizer_state, str(tmp / OPTIMIZER_FILE))
        (tmp / META_FILE).write_text(meta_text, encoding="utf-8")
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
        with _swap_lock:
            _check_room(root, name, sum(f.stat().st_size for f in tmp.iterdir()), max_count, max_bytes)
            if target.exists():
                if not overwrite:
                    raise AdapterError(f"an adapter named {name!r} already exists")
                moved = root / f".old-{secrets.token_hex(8)}"
                os.replace(target, moved)
                old = moved  # only once it is really there: the rollback moves it back
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    _fsync(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _checked_embeddings(soft: SoftPrompt) -> torch.Tensor:
    """The prompt as a float32 CPU copy, refused (AdapterError) when its shape, numbers or config are wrong."""
    embeddings = soft.embeddings.detach().to("cpu", torch.float32).contiguous().clone()
    if embeddings.dim() != 2 or not 1 <= embeddings.shape[0] <= MAX_VIRTUAL_TOKENS:
        raise AdapterError(f"a soft prompt must be [1-{MAX_VIRTUAL_TOKENS}, hidden], got {list(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise AdapterError("the soft prompt contains NaN or infinity (did the training diverge?), so it was not saved")
    if soft.config.num_virtual_tokens != embeddings.shape[0]:
        raise AdapterError(
            f"the config says {soft.config.num_virtual_tokens} virtual tokens but the prompt has {embeddings.shape[0]}"
        )
    return embeddings


def _peft_config(soft: SoftPrompt, embeddings: torch.Tensor):
    """PEFT's `PromptTuningConfig` for the saved prompt, so adapter_config.json is exactly what PEFT expects.

    The init is always "RANDOM" here: with "TEXT", PEFT would load a tokenizer (possibly from the
    network) whenever someone loads the adapter for training. Our real init is in tuning_meta.json.
    """
    from peft import PromptTuningConfig

    return PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=embeddings.shape[0],
        token_dim=embeddings.shape[1],
        num_transformer_submodules=1,
        num_attention_heads=soft.meta.get("num_attention_heads"),
        num_layers=soft.meta.get("num_layers"),
        base_model_name_or_path=soft.base_model,
        prompt_tuning_init="RANDOM",
        inference_mode=True,
    )


def load(name: str, root: Path | str = DEFAULT_ROOT, base: Base | None = None) -> SoftPrompt:
    """Load `root/<name>/`; `name` must be a sanitized name. With `base`, also check it fits that model."""
    folder = _adapter_dir(name, Path(root))
    if not folder.is_dir():
        raise AdapterError(f"no adapter named {name!r}")
    return load_folder(folder, base)


def load_folder(folder: Path | str, base: Base | None = None) -> SoftPrompt:
    """Validate and load any PEFT prompt-tuning folder (ours, or one PEFT wrote, or an upload).

    Returns a SoftPrompt with float32 CPU embeddings `[num_virtual_tokens, token_dim]`. A folder
    without tuning_meta.json gets a TuneConfig built from adapter_config.json and empty meta; one
    without tuning_optimizer.safetensors gets `optimizer_state=None` (resuming it starts a fresh AdamW).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"no adapter folder at {folder}")
    cfg = _read_json(folder / CONFIG_FILE, "adapter config")
    _check_config(cfg)
    if cfg.get("peft_type") != "PROMPT_TUNING":
        raise AdapterError(f"this is a {cfg.get('peft_type')} adapter; only PROMPT_TUNING adapters can be loaded")
    if cfg.get("task_type") != "CAUSAL_LM":
        raise AdapterError(f"this adapter's task_type is {cfg.get('task_type')}; only CAUSAL_LM is supported")
    v = cfg.get("num_virtual_tokens")
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VIRTUAL_TOKENS:
        raise AdapterError(f"num_virtual_tokens must be a whole number from 1 to {MAX_VIRTUAL_TOKENS}, got {v!r}")
    if cfg.get("num_transformer_submodules") not in (None, 1):
        raise AdapterError("num_transformer_submodules must be 1 for a causal LM adapter")
    token_dim = cfg.get("token_dim")
    if isinstance(token_dim, bool) or not isinstance(token_dim, int) or token_dim < 1:
        raise AdapterError(f"token_dim must be a positive whole number, got {token_dim!r}")
    embeddings = _read_prompt(folder)
    if list(embeddings.shape) != [v, token_dim]:
        raise AdapterError(
            f"the prompt tensor is {list(embeddings.shape)} but adapter_config.json says [{v}, {token_dim}]"
        )
    if base is not None and token_dim != base.hidden_size:
        raise AdapterError(f"this adapter's hidden size is {token_dim}, the loaded model's is {base.hidden_size}")
    optimizer_state = _read_optimizer(folder, (v, token_dim))

    base_model = cfg.get("base_model_name_or_path") or "unknown"
    meta: dict = {}
    if (folder / META_FILE).exists():
        record = _read_json(folder / META_FILE, "tuning metadata")
        if record.get("format") != 1:
            raise AdapterError(f"{META_FILE} has format {record.get('format')!r}; this version reads format 1")
        base_model = record.get("base_model") or base_model
        if not isinstance(record.get("config"), dict) or not isinstance(record.get("meta", {}), dict):
            raise AdapterError(f"{META_FILE} must hold a config and a meta object")
        try:
            config = TuneConfig.from_dict(record["config"])
        except (TypeError, ValueError) as e:
            raise AdapterError(f"the saved settings are invalid: {e}") from e
        if config.num_virtual_tokens != v:
            raise AdapterError(f"{META_FILE} says {config.num_virtual_tokens} virtual tokens, the tensor has {v}")
        meta = dict(record.get("meta", {}))
        if record.get("created"):
            meta.setdefault("created", record["created"])  # kept on a re-save
    else:  # a plain PEFT adapter
        config = TuneConfig(num_virtual_tokens=v, model=base_model)

    if base is not None and (why := base.mismatch(base_model)):
        raise AdapterError(why)
    return SoftPrompt(embeddings, base_model, config, meta, optimizer_state)


def list_adapters(root: Path | str = DEFAULT_ROOT) -> list[dict]:
    """One dict per loadable adapter under `root`, newest first; broken and temp folders are skipped.

    Keys: name, base_model, num_virtual_tokens, created (ISO time), config (dict), metrics (dict), size_bytes.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        name = folder.name
        if name.startswith(".") or folder.is_symlink() or not folder.is_dir():
            continue  # .tmp- and .old- folders of a save in progress (or one that crashed)
        try:
            if sanitize_name(name) != name:
                continue
            soft = load_folder(folder)  # every check a load makes: only loadable adapters are listed
            files = [f for f in folder.iterdir() if f.is_file() and not f.is_symlink()]
            size = sum(f.stat().st_size for f in files)
            created = soft.meta.get("created") or _iso(folder.stat().st_mtime)
        except (AdapterError, OSError):  # unreadable, or removed while we looked (another visitor's delete)
            continue
        metrics = soft.meta.get("metrics")
        found.append({
            "name": name,
            "base_model": soft.base_model,
            "num_virtual_tokens": soft.num_virtual_tokens,
            "created": created,
            "config": soft.config.to_dict(),
            "metrics": metrics if isinstance(metrics, dict) else {},  # an upload's meta may hold anything
            "size_bytes": size,
        })
    return sorted(found, key=lambda a: _timestamp(a["created"]), reverse=True)


def held_out_perplexity(metrics: dict) -> tuple[float | None, float | None]:
    """(tuned, base) held-out perplexity from a listed adapter's metrics; None where not measured.

    An upload's metadata may hold anything: only a finite loss of 0-50 nats counts.

    >>> [round(p, 2) for p in held_out_perplexity({"held_out_loss": 2.9, "base_held_out_loss": 3.5})]
    [18.17, 33.12]
    >>> held_out_perplexity({"held_out_loss": "junk"})
    (None, None)
    """
    def ppl(loss) -> float | None:
        ok = isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss) and 0 <= loss < 50
        return math.exp(loss) if ok else None

    return ppl(metrics.get("held_out_loss")), ppl(metrics.get("base_held_out_loss"))


def delete(name: str, root: Path | str = DEFAULT_ROOT) -> None:
    """Remove `root/<name>/`; `name` must be a sanitized name."""
    root = Path(root)
    folder = _adapter_dir(name, root)
    if not folder.is_dir():
        raise AdapterError(f"no adapter named {name!r}")
    # Move it aside first so a half-deleted folder is never listed as an adapter. Once moved it is
    # gone for every reader: a file the removal cannot take is left in the hidden folder, not reported.
    trash = root / f".old-{secrets.token_hex(8)}"
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(root: Path | str = DEFAULT_ROOT, older_than: float = 3600.0) -> int:
    """Remove the hidden `.tmp-*` and `.old-*` folders a crashed save or a failed removal left in `root`.

    Only folders untouched for `older_than` seconds go: a save in another process may be writing
    its `.tmp-` folder right now. Returns how many were removed (what cannot be removed stays, quietly).
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    cutoff = time.time() - older_than
    for folder in root.iterdir():
        if not folder.name.startswith((".tmp-", ".old-")) or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            if folder.stat().st_mtime > cutoff:
                continue
            shutil.rmtree(folder)
        except OSError:
            continue  # in use, or not ours to remove: the next start tries again
        removed += 1
    return removed


# adapter_config.json settings that make PEFT or transformers fetch or run code when someone loads
# the adapter: custom classes, remote code, and with TEXT init a tokenizer by name (PEFT's
# PromptEmbedding loads it when the adapter is loaded for training). We never need any of them.
_INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


def _check_config(cfg: dict) -> None:
    """Refuse an adapter_config.json that could download or run anything, whatever else it holds."""
    fetching = ["auto_mapping", "trust_remote_code"]
    init = cfg.get("prompt_tuning_init", "RANDOM")
    if init not in _INITS:
        raise AdapterError(f"prompt_tuning_init must be one of {', '.join(_INITS)}, got {init!r}")
    if init == "TEXT":
        fetching += ["tokenizer_name_or_path", "tokenizer_kwargs"]
    for key in fetching:
        if cfg.get(key) not in (None, False, {}):
            raise AdapterError(f"adapter_config.json sets {key}, which could download or run code; remove it")
    base_model = cfg.get("base_model_name_or_path")
    if base_model is not None and not isinstance(base_model, str):
        raise AdapterError(f"base_model_name_or_path must be text, got {type(base_model).__name__}")


def _check_room(root: Path, name: str, new_bytes: int, max_count: int | None, max_bytes: int | None) -> None:
    """Refuse a save that would leave more than `max_count` adapters or `max_bytes` bytes under root.

    The reference adapters (names starting with RESERVED_PREFIX) are the server's own: not counted.
    """
    if max_count is None and max_bytes is None:
        return
    others = [d for d in root.iterdir() if d.name != name and not d.name.startswith((".", RESERVED_PREFIX))
              and d.is_dir() and not d.is_symlink()]
    if max_count is not None and len(others) + 1 > max_count:
        raise AdapterError(f"this server keeps at most {max_count} adapters; delete one before saving another")
    used = sum(f.stat().st_size for d in others for f in d.iterdir() if f.is_file() and not f.is_symlink())
    if max_bytes is not None and used + new_bytes > max_bytes:
        raise AdapterError(
            f"saved adapters would take {_size(used + new_bytes)}, over this server's {_size(max_bytes)}; "
            "delete some before saving another"
        )


def _size(n: int) -> str:
    """2_500_000 -> '2.4 MB', 40_000 -> '39 KB'."""
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def _adapter_dir(name: str, root: Path) -> Path:
    """`root/name`, refusing any name that is not already sanitized or that would lead outside root.

    "../app.py", "/etc/passwd", "user/repo", "https://x" -> AdapterError.
    """
    try:
        valid = isinstance(name, str) and sanitize_name(name) == name
    except AdapterError:
        valid = False
    if not valid:
        raise AdapterError(f"{name!r} is not a valid adapter name")
    path = root / name
    # Defence in depth: the name check already rules out separators; a symlink could still lead out.
    if path.is_symlink() or path.resolve().parent != root.resolve():
        raise AdapterError(f"{name!r} is not a valid adapter name (it leads outside the adapters folder)")
    return path


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise AdapterError(f"the adapter folder has no {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise AdapterError(f"the {what} ({path.name}) is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise AdapterError(f"the {what} ({path.name}) must be a JSON object")
    return data


def _read_prompt(folder: Path) -> torch.Tensor:
    """The `[v, hidden]` tensor from adapter_model.safetensors, as float32. Never unpickles (.bin is refused)."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        if (folder / "adapter_model.bin").exists():
            raise AdapterError("this adapter has only adapter_model.bin (pickle), which is unsafe to load; save it as safetensors")
        raise AdapterError(f"the adapter folder has no {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != {WEIGHTS_KEY}:
                raise AdapterError(f"{WEIGHTS_FILE} must hold exactly the key {WEIGHTS_KEY!r}, found {sorted(keys)}")
            tensor = f.get_tensor(WEIGHTS_KEY)
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{WEIGHTS_FILE} is not a readable safetensors file: {e}") from e
    if tensor.dim() != 2:
        raise AdapterError(f"the prompt tensor must be 2-D [virtual tokens, hidden], got {list(tensor.shape)}")
    if not tensor.is_floating_point():
        raise AdapterError(f"the prompt tensor must be floating point, got {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise AdapterError("the prompt tensor contains NaN or infinity")
    return tensor


def _read_optimizer(folder: Path, shape: tuple[int, int]) -> dict[str, torch.Tensor] | None:
    """AdamW's state from tuning_optimizer.safetensors, checked against the prompt's `shape`; None without the file.

    The size is capped before anything is read (the tensors' bytes plus a small header), so an
    upload cannot make us read more than the adapter's own size twice over. Never unpickles.
    """
    path = folder / OPTIMIZER_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise AdapterError(f"{OPTIMIZER_FILE} must be a plain file")
    cap = 2 * shape[0] * shape[1] * 4 + 4 + 4096  # two float32 moments, a float32 step, the JSON header
    if path.stat().st_size > cap:
        raise AdapterError(f"{OPTIMIZER_FILE} is {path.stat().st_size} bytes; for this prompt it is at most {cap}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(OPTIMIZER_KEYS):
                raise AdapterError(f"{OPTIMIZER_FILE} must hold exactly the keys {list(OPTIMIZER_KEYS)}, found {sorted(keys)}")
            state = {k: f.get_tensor(k) for k in OPTIMIZER_KEYS}
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{OPTIMIZER_FILE} is not a readable safetensors file: {e}") from e
    return _check_optimizer_state(state, shape)


def _check_optimizer_state(state: dict, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Float32 CPU copies of AdamW's `exp_avg`, `exp_avg_sq` (both `shape`) and scalar `step`, or AdapterError.

    Every check that keeps a resumed run sane: exact keys, float32, the prompt's shape, finite,
    no negative second moment (its square root is taken), a whole step count of at least 1.
    """
    if not isinstance(state, dict) or set(state) != set(OPTIMIZER_KEYS):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise AdapterError(f"the optimizer state must hold exactly {list(OPTIMIZER_KEYS)}, found {found}")
    for key in OPTIMIZER_KEYS:
        value = state[key]
        want = () if key == "step" else shape
        if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
            raise AdapterError(f"the optimizer state's {key} must be a float32 tensor")
        if tuple(value.shape) != want:
            raise AdapterError(f"the optimizer state's {key} is {list(value.shape)}, expected {list(want)}")
        if not torch.isfinite(value).all():
            raise AdapterError(f"the optimizer state's {key} contains NaN or infinity")
    if (state["exp_avg_sq"] < 0).any():
        raise AdapterError("the optimizer state's exp_avg_sq has negative numbers; a second moment cannot")
    step = state["step"].item()
    if step != int(step) or not 1 <= step <= MAX_OPTIMIZER_STEP:
        raise AdapterError(f"the optimizer state's step must be a whole number from 1 to {MAX_OPTIMIZER_STEP}, got {step:g}")
    return {k: state[k].detach().to("cpu").contiguous().clone() for k in OPTIMIZER_KEYS}


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk, so a crash right after the rename cannot leave empty files."""
    if os.name == "nt" and path.is_dir():
        return  # Windows cannot open a folder for fsync
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _timestamp(created: str) -> float:
    try:
        when = datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()
