"""Is the Hugging Face Hub there? One short question, asked once, and a "no" remembered for a minute.

`datasets` and `transformers` retry for ~30 s before they give up on a Hub that cannot be
reached, on every call. The loaders (data.load_rows, model.load_base) ask `hub_reachable()`
first: a few seconds at most, and after a failure every call answers False at once for
HUB_RETRY_S seconds, so a page that loads on every click waits once. `is_connection_error()`
tells "could not reach the Hub" from "the Hub refused" in a loader's error.

What it does not do: download anything, or decide what to load instead (the loaders do).
"""

from __future__ import annotations

import threading
import time

HUB_PROBE_S = 4.0  # how long to wait for the Hub's first answer before calling it unreachable (seconds)
HUB_RETRY_S = 60.0  # after the Hub could not be reached, loaders skip it this long, then ask again (seconds)

_now = time.monotonic  # a module attribute so tests can move the clock
_hub_down_at: float | None = None  # _now() when the Hub last could not be reached


def offline_mode() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the Hub libraries then use their cache only."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def remember_hub_down() -> None:
    """A loader found the Hub unreachable on its own: `hub_reachable` answers False for HUB_RETRY_S."""
    global _hub_down_at
    _hub_down_at = _now()


def hub_reachable(repo_id: str, repo_type: str = "model") -> bool:
    """Whether the Hugging Face Hub answers a question about `repo_id` within HUB_PROBE_S seconds.

    Any answer counts, "not found" included (the loader then says what is wrong); no answer,
    a server error or offline mode (HF_HUB_OFFLINE) is False. After a False the Hub is not asked
    again for HUB_RETRY_S seconds: every call returns False at once. One short request, no
    retries: `datasets` and `transformers` retry for ~30 s before they give up, on every call.
    """
    global _hub_down_at
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:  # "me/my data", a pasted URL: no repository can have that id, and no request is made for it
        validate_repo_id(repo_id)
    except HFValidationError:
        return True  # not "the Hub is down" for everyone for a minute: the loader says what is wrong with the id
    if _hub_down_at is not None and _now() - _hub_down_at < HUB_RETRY_S:
        return False
    answered = _ask_hub(repo_id, repo_type)
    _hub_down_at = None if answered else _now()
    return answered


def _ask_hub(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    answer: list[bool] = []

    def ask() -> None:
        try:
            HfApi().repo_info(repo_id, repo_type=repo_type, timeout=HUB_PROBE_S)
            answer.append(True)
        except HfHubHTTPError as e:  # 401, 404, gated: the Hub answered; 5xx: it cannot serve now
            status = getattr(getattr(e, "response", None), "status_code", None)
            answer.append(status is not None and status < 500)
        except Exception:  # no route, DNS, a timeout, offline mode: whatever it is, no answer
            answer.append(False)

    # A thread with a deadline, not only the request's timeout: name resolution is outside
    # httpx's timeout and can hang far longer where no DNS server answers.
    thread = threading.Thread(target=ask, name="hub-probe", daemon=True)
    thread.start()
    thread.join(HUB_PROBE_S)
    return bool(answer) and answer[0]


def is_connection_error(error: BaseException) -> bool:
    """Whether `error`, or an error that caused it, says the Hub could not be reached (not that it refused)."""
    import httpx2  # huggingface_hub's HTTP client; its errors are not OSErrors

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (ConnectionError, TimeoutError, httpx2.TransportError)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False
