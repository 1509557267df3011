"""Many users at once: 8 clients generating while others train, each its own browser session.

Every client must get exactly what it gets alone (no other session's adapter or output leaks
in), the training slot must be taken by one run at a time, and memory must stay bounded.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import tuning.train
from app_fixtures import Client, serve
from ui.session import SESSION_RUN
from ui.tabs.compare import NO_PROMPT
from ui.training import NEW_PROMPT

TRAIN = dict(tokens=5, epochs=1, lr=0.1, batch=4, init="random", data="all training acts", acts=[], seed=0,
             resume=NEW_PROMPT)
TEXTS = ["I want you to act as a rapper.", "I want you to act as a poet.", "I want you to act as a chef."]


def train_args(**kw):
    return list({**TRAIN, **kw}.values())


def generate(client, adapter, seed, text):
    return client.predict(text, adapter, 16, "sample", 0.9, 0.95, 50, 1.0, seed, NO_PROMPT, 3, "none", "",
                          api_name="/generate")[:3]  # the texts: the cost line's time differs from call to call


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, slow_setup):
    demo, url = serve(tmp_path_factory.mktemp("load"))
    yield url
    demo.close()


def test_eight_clients_generating_while_others_train_each_get_their_own_answer(server, monkeypatch):
    active, most = [0], [0]
    lock = threading.Lock()
    real = tuning.train.token_losses

    def tracked(*args, **kwargs):  # how many training steps run at the same moment
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.02)
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(tuning.train, "token_losses", tracked)

    # three saved adapters, and two sessions that each keep their own (unsaved) run
    setup = Client(server, verbose=False)
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        setup.predict(*train_args(seed=seed), api_name="/train")
        setup.predict(name, None, api_name="/save_adapter")
    own = [Client(server, verbose=False) for _ in range(2)]
    for client, seed in zip(own, (4, 5)):
        client.predict(*train_args(seed=seed, tokens=7), api_name="/train")
    plan = [(None, "a"), (None, "b"), (None, "c"), (None, "a"), (None, "b"), (None, "c"),
            (own[0], SESSION_RUN), (own[1], SESSION_RUN)]
    clients = [c or Client(server, verbose=False) for c, _ in plan]
    jobs = [(client, adapter, i, TEXTS[i % 3]) for i, (client, (_, adapter)) in enumerate(zip(clients, plan))]

    alone = [generate(*job) for job in jobs]
    assert alone[6] != alone[7]  # the two sessions' runs really differ
    assert len({a for a in alone}) > 4

    before = rss_mb()
    trainers = [Client(server, verbose=False) for _ in range(2)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        training = [pool.submit(t.predict, *train_args(seed=9 + k, epochs=2), api_name="/train")
                    for k, t in enumerate(trainers)]
        together = [pool.submit(generate, *job) for job in jobs]
        results = [f.result(timeout=300) for f in together]
        logs = [f.result(timeout=300)[-1] for f in training]
    grown = rss_mb() - before

    assert results == alone  # nobody saw another session's adapter, run or output
    assert all("done: 6 steps" in log for log in logs)
    assert most[0] == 1  # the training slot was taken by one run at a time
    assert grown < 300, f"memory grew by {grown:.0f} MB"
    for c in {*clients, *own, *trainers, setup}:
        c.close()
