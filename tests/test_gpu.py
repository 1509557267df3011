"""The GPU calls as a ZeroGPU Space runs them: pickled arguments and results, a forked worker, a stop that crosses.

No GPU here: what can be checked without one is exactly what ZeroGPU asks of the code
(everything pickles, the worker is a fork that finds the model it inherited, the stop reaches
it, durations come from the planned work and runs over the cap are refused up front).
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import pickle
import sys
import types

import pytest
import torch

import tuning.gpu as gpu
from tuning.config import GenerationError, TuneConfig
from tuning.data import Row
from tuning.generate import Decoding
from tuning.model import Base, ModelError, SoftPrompt
from tuning.plan import PlanError
from tuning.events import Done, EpochEnd, Start, Step, TrainingError
from tuning.train import train

from conftest import CORPUS, need

ROWS = [Row(act=f"Act {i}", prompt=t, group=f"act {i}") for i, t in enumerate(CORPUS)]


def config(**kw) -> TuneConfig:
    return TuneConfig(**{**dict(model="tiny-gpt2", dataset="test", num_virtual_tokens=4, epochs=2, batch_size=2,
                                learning_rate=0.1, seed=0), **kw})


def roundtrip(value):
    return pickle.loads(pickle.dumps(value))


@pytest.fixture(scope="module")
def base(tokenizer) -> Base:
    """This module's own tiny GPT-2: on a machine with a GPU the calls move it there (`on_accelerator`),
    and the session's shared one must stay where the other modules expect it."""
    from conftest import make_base

    return make_base(tokenizer)


def test_a_base_pickles_as_a_reference_to_the_loaded_model_not_its_weights(base):
    data = pickle.dumps(base)
    assert len(data) < 300  # a key, not 100k+ parameters
    assert pickle.loads(data) is base
    orphan = pickle.dumps(Base(base.model, base.tokenizer, "gone", "fp32"))  # collected once unreferenced
    import gc

    gc.collect()
    with pytest.raises(ModelError, match="has not loaded the model"):
        pickle.loads(orphan)


def test_a_copy_of_a_base_has_its_own_key_and_the_original_still_pickles(base):
    import dataclasses
    import gc

    copy = dataclasses.replace(base, model_id="another-name")
    assert copy.key != base.key and pickle.loads(pickle.dumps(copy)) is copy
    del copy
    gc.collect()  # the copy is gone; it must not have taken the original's place
    assert pickle.loads(pickle.dumps(base)) is base


def test_a_stop_flag_sees_its_jobs_stop_at_once_here_and_its_file_only_in_a_worker():
    import threading

    stop = threading.Event()
    flag = gpu.StopFlag(also=stop)
    assert not flag.is_set()
    stop.set()  # the Stop button: a training pausing for a generation sees it without an event passing
    assert flag.is_set()
    copy = pickle.loads(pickle.dumps(flag))  # what a ZeroGPU worker gets
    assert copy.also is None and copy.path == flag.path and not copy.is_set()
    flag.set()
    assert copy.is_set()
    flag.remove()


def test_everything_a_training_call_takes_and_yields_pickles(base):
    flag = gpu.StopFlag()
    args = (base, ROWS[:4], config(), ROWS[4:], flag)
    assert roundtrip(args)[0] is base
    events = list(gpu.train_run(*args))
    assert isinstance(events[0], Start) and isinstance(events[-1], Done)
    copies = [roundtrip(e) for e in events]
    assert [type(c) for c in copies] == [type(e) for e in events]
    assert [c.loss for c in copies if isinstance(c, Step)] == [e.loss for e in events if isinstance(e, Step)]
    soft = copies[-1].soft
    assert soft.embeddings.device.type == "cpu" and torch.equal(soft.embeddings, events[-1].soft.embeddings)
    assert all(t.device.type == "cpu" for t in soft.optimizer_state.values())


def test_generation_and_evaluation_calls_pickle_their_arguments_and_results(base):
    soft = SoftPrompt(torch.randn(4, base.hidden_size), "tiny-gpt2", config())
    decoding = Decoding(max_new_tokens=6)
    assert roundtrip((base, [soft], "I want you to act as a poet.", decoding))[0] is base
    texts = list(gpu.generate_run(base, [soft], "I want you to act as a poet.", decoding))
    assert texts and roundtrip(texts) == texts and len(texts[-1]) == 2
    results = list(gpu.evaluate_run(base, soft, ROWS[3:], ROWS[3:4], decoding))
    assert [kind for kind, _ in results] == ["perplexity", "rouge"]
    metrics = roundtrip(results[0][1])
    assert metrics["tuned"].perplexity == results[0][1]["tuned"].perplexity
    assert roundtrip(results[1][1]) == results[1][1]


def test_a_written_prompt_crosses_into_a_gpu_call_as_token_ids_and_is_scored_and_decoded_there(base):
    from tuning import written
    from tuning.generate import stream_many

    soft = SoftPrompt(torch.randn(4, base.hidden_size), "tiny-gpt2", config())
    w = written.examples(base, ROWS, ROWS[3:], 2, seed=0)
    assert roundtrip(w) == w and len(pickle.dumps(w)) < 2_000  # ids and rows, not a tensor
    decoding = Decoding(max_new_tokens=6)
    *_, texts = gpu.generate_run(base, roundtrip([w, soft]), "I want you to act as a poet.", decoding)
    *_, expected = stream_many(base, [None, written.embeddings(base, w), soft], "I want you to act as a poet.", decoding)
    assert list(texts) == expected and len(texts) == 3
    results = list(gpu.evaluate_run(base, soft, ROWS[3:], ROWS[3:4], decoding, written=roundtrip(w)))
    metrics, row = roundtrip(results[0][1]), roundtrip(results[1][1])
    assert set(metrics) == {"base", "tuned", "written"} and metrics["written"].tokens == metrics["base"].tokens
    assert "written_text" in row and 0 <= row["written_rouge"] <= 1
    # the call with a written prompt may take longer: a third scoring of every row, a third continuation per act
    assert gpu.evaluate_duration(base, soft, ROWS, ROWS, decoding, written=w) > gpu.evaluate_duration(base, soft, ROWS, ROWS, decoding)


def _worker(args, out, stop_after_first_step: bool) -> None:
    """A ZeroGPU worker's part: unpickle the arguments, run the generator, send each event back pickled."""
    try:
        base, rows, cfg, held, flag = pickle.loads(args)
        for event in gpu.train_run(base, rows, cfg, held, flag):
            out.put(pickle.dumps(event))
        out.put(None)
    except BaseException as e:  # shown by the parent
        out.put(pickle.dumps(RuntimeError(repr(e))))


@pytest.mark.skipif(torch.cuda.is_available(), reason="ZeroGPU's server has no GPU; a fork of one that has used CUDA cannot")
@pytest.mark.timeout(90)
def test_a_training_runs_in_a_forked_worker_that_finds_the_inherited_model_and_sees_the_stop(base):
    ctx = multiprocessing.get_context("fork")  # what ZeroGPU does: the worker is a fork of the server
    out, flag = ctx.SimpleQueue(), gpu.StopFlag()
    list(train(base, ROWS[:2], config(epochs=1)))  # the server has run torch (its OpenMP threads) before the fork
    args = pickle.dumps((base, ROWS, config(epochs=20, batch_size=1), ROWS[:1], flag))
    worker = ctx.Process(target=_worker, args=(args, out, True), daemon=True)
    worker.start()
    events = []
    try:
        while (item := out.get()) is not None:
            event = pickle.loads(item)
            assert not isinstance(event, RuntimeError), str(event)
            events.append(event)
            if isinstance(event, Step) and event.step == 2:
                flag.set()  # the page pressed Stop: the worker's run ends after its current step
    finally:
        worker.join(timeout=60)
        flag.remove()
    steps = [e for e in events if isinstance(e, Step)]
    done = events[-1]
    assert isinstance(done, Done) and done.stopped
    assert 2 <= len(steps) <= 3 < events[0].total_steps  # stopped within a step of the request, not 100 steps later
    assert done.soft.embeddings.shape == (4, base.hidden_size)
    assert worker.exitcode == 0


def test_a_stop_flag_is_a_file_another_process_sees_and_pickles_as_its_path(tmp_path):
    flag = gpu.StopFlag()
    copy = roundtrip(flag)
    assert copy.path == flag.path and not copy.is_set()
    flag.set()
    assert copy.is_set()
    flag.remove()
    assert not copy.is_set()


def test_a_stop_through_the_flag_keeps_what_was_learned(base):
    flag = gpu.StopFlag()
    events = []
    for event in gpu.train_run(base, ROWS, config(epochs=10, batch_size=1), (), flag):
        events.append(event)
        if isinstance(event, Step) and event.step == 3:
            flag.set()
    flag.remove()
    assert events[-1].stopped and events[-1].soft.meta["steps"] == 3


def test_training_duration_follows_the_planned_tokens_and_never_exceeds_the_cap(base, monkeypatch):
    monkeypatch.setattr(gpu, "_measured", {})
    monkeypatch.setattr(gpu, "DEFAULT_GPU_TOKENS_PER_S", 50.0)  # slow enough that the epochs show
    short = gpu.training_seconds(base, ROWS, config(epochs=1), ())
    long = gpu.training_seconds(base, ROWS, config(epochs=4), ())
    tokens = sum(len(base.encode(r.prompt)) + 1 for r in ROWS)
    assert short == pytest.approx(gpu.CALL_OVERHEAD_S + tokens / 50.0)
    assert long - gpu.CALL_OVERHEAD_S == pytest.approx(4 * (short - gpu.CALL_OVERHEAD_S))
    assert gpu.train_duration(base, ROWS, config(epochs=1), ()) == round(short * 1.5)
    monkeypatch.setattr(gpu, "MAX_CALL_SECONDS", 20)
    assert gpu.train_duration(base, ROWS, config(epochs=50), ()) == 20
    cpu_run = types.SimpleNamespace(soft=types.SimpleNamespace(meta={"device": "cpu", "tokens_per_s": 9.0}))
    gpu.note_run(cpu_run)  # a CPU run's speed says nothing about the GPU
    assert gpu.training_seconds(base, ROWS, config(epochs=1), ()) == pytest.approx(short)
    gpu_run = types.SimpleNamespace(soft=types.SimpleNamespace(meta={"device": "cuda", "tokens_per_s": 5000.0}))
    gpu.note_run(gpu_run)  # a finished GPU run measured the speed (in the server: the worker's memory is its own)
    assert gpu.training_seconds(base, ROWS, config(epochs=1), ()) == pytest.approx(gpu.CALL_OVERHEAD_S + tokens / 5000)


def test_a_training_records_the_device_it_ran_on(base):
    done = list(gpu.train_run(base, ROWS[:2], config(epochs=1), (), gpu.StopFlag()))[-1]
    assert done.soft.meta["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_other_durations_grow_with_their_work_and_stay_under_the_cap(base):
    soft = SoftPrompt(torch.randn(4, base.hidden_size), "tiny-gpt2", config())
    few, many = Decoding(max_new_tokens=8), Decoding(max_new_tokens=512)
    assert gpu.generate_duration(base, [soft], "x", few) < gpu.generate_duration(base, [soft], "x", many)
    assert gpu.evaluate_duration(base, soft, ROWS, ROWS[:1], few) < gpu.evaluate_duration(base, soft, ROWS, ROWS, many)
    one = gpu.sweep_seconds(base, ROWS, config(held_out_fraction=0.2), [(4, 1)])
    two = gpu.sweep_seconds(base, ROWS, config(held_out_fraction=0.2), [(4, 1), (4, 2)])
    assert two > 2 * one - gpu.CALL_OVERHEAD_S
    for value in (gpu.generate_duration(base, [soft], "x", many), gpu.sweep_duration(base, ROWS, config(), [(4, 50)] * 9)):
        assert 0 < value <= gpu.MAX_CALL_SECONDS


def test_a_sweeps_duration_counts_each_written_prompt_in_front_of_every_held_out_row_and_its_rouge_l(base, monkeypatch):
    from tuning import written
    from tuning.plan import SCORING_COST
    from tuning.rows import split_rows

    monkeypatch.setattr(gpu, "_measured", {})
    monkeypatch.setattr(gpu, "DEFAULT_GPU_TOKENS_PER_S", 50.0)
    cfg = config(held_out_fraction=0.2)
    held = split_rows(ROWS, cfg)[1]
    lengths = [len(base.encode(r.prompt)) + 1 for r in held]
    prompts = {k: written.examples(base, ROWS, held, k, cfg.seed) for k in (1, 2)}
    alone = gpu.sweep_seconds(base, ROWS, cfg, [(4, 1)])
    one = gpu.sweep_seconds(base, ROWS, cfg, [(4, 1)], shots=(1,))
    both = gpu.sweep_seconds(base, ROWS, cfg, [(4, 1)], shots=(2, 1, 1))  # each count once, as run_sweep scores them
    assert one - alone == pytest.approx(SCORING_COST * (prompts[1].tokens * len(held) + sum(lengths)) / 50.0)
    assert both - one == pytest.approx(SCORING_COST * (prompts[2].tokens * len(held) + sum(lengths)) / 50.0)
    rouge = gpu.sweep_seconds(base, ROWS, cfg, [(4, 1)], rouge_acts=1, shots=(1, 2))
    # one cell's base and tuned continuations, and one per written prompt: 64 new tokens each
    assert rouge - both == pytest.approx((2 + 2) * 64 * gpu.SECONDS_PER_NEW_TOKEN)


def test_work_over_the_cap_is_refused_with_the_estimate_and_the_cap(monkeypatch):
    monkeypatch.setattr(gpu, "MAX_CALL_SECONDS", 60)
    gpu.check_fits(59.0)
    with pytest.raises(PlanError, match=r"this run needs about 95 s of GPU time; .* at most 60 s"):
        gpu.check_fits(95.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does")
def test_on_a_machine_without_a_gpu_the_model_stays_where_it_is(base):
    assert gpu.on_accelerator(base) is base and base.device.type == "cpu"


def test_on_zero_gpu_the_server_loads_the_model_on_the_cpu(monkeypatch):
    from tuning.hardware import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # ZeroGPU's server says CUDA is there
    assert pick_device().type == "cuda"
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert pick_device().type == "cpu"  # a decorated call moves it (on_accelerator)


def test_fp16_training_scales_the_loss_and_keeps_the_prompt_in_float32(tokenizer, monkeypatch):
    from conftest import make_base

    half = make_base(tokenizer, precision="fp16")
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, x: scaled.append(self.is_enabled()) or real_scale(self, x))
    events = list(train(half, ROWS, config(epochs=2), ROWS[:1]))
    assert scaled and all(scaled)
    done = events[-1]
    assert done.soft.embeddings.dtype == torch.float32
    losses = [e.loss for e in events if isinstance(e, Step)]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert [e.held_out_loss is not None for e in events if isinstance(e, EpochEnd)] == [True, True]


def test_the_app_decorates_each_gpu_job_with_a_duration_computed_from_its_arguments(monkeypatch):
    decorated = {}

    def GPU(duration):
        def wrap(fn):
            decorated[fn.__wrapped__] = duration  # the call itself, its errors carried out as events
            return fn
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    from ui import gpu_calls

    try:
        importlib.reload(gpu_calls)
        assert decorated == {gpu.train_run: gpu.train_duration, gpu.sweep_run: gpu.sweep_duration,
                             gpu.generate_run: gpu.generate_duration, gpu.evaluate_run: gpu.evaluate_duration}
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        importlib.reload(gpu_calls)


def zero_gpu_stand_in(duration):
    """spaces.GPU as it behaves on ZeroGPU (spaces 0.51, zero/wrappers.py): every value crosses the process
    boundary pickled, a gr.Error is raised again as it is, and any other exception becomes
    gr.Error(<its class name>, title="ZeroGPU worker error")."""
    import gradio as gr

    def wrap(fn):
        def call(*args, **kwargs):
            try:
                for value in fn(*args, **kwargs):
                    yield roundtrip(value)
            except gr.Error:
                raise
            except Exception as e:
                raise gr.Error(type(e).__name__, title="ZeroGPU worker error", print_exception=False) from None
        return call
    return wrap


@pytest.mark.parametrize("call, error", [
    ("TRAIN_ON_GPU", TrainingError("the loss became nan at step 3 (epoch 1); try a lower learning rate")),
    ("GENERATE_ON_GPU", GenerationError("the input is 2,000 tokens; the model's context holds 1,024")),
    ("EVALUATE_ON_GPU", ModelError("could not download openai-community/gpt2: start with a local model: --model PATH")),
    ("SWEEP_ON_GPU", PlanError("this sweep needs about 900 s of GPU time")),
])
def test_an_error_inside_a_zero_gpu_call_reaches_the_visitor_as_its_sentence(monkeypatch, call, error):
    import gradio as gr

    from ui import gpu_calls
    from ui.checks import user_errors

    def fails(*args, **kwargs):
        yield "first"
        raise error

    names = {"TRAIN_ON_GPU": "train_run", "GENERATE_ON_GPU": "generate_run", "EVALUATE_ON_GPU": "evaluate_run",
             "SWEEP_ON_GPU": "sweep_run"}
    monkeypatch.setattr(gpu, names[call], fails)
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=zero_gpu_stand_in))
    try:
        importlib.reload(gpu_calls)
        events = getattr(gpu_calls, call)()
        assert next(events) == "first"
        with pytest.raises(gr.Error) as shown, user_errors():
            next(events)
        assert shown.value.message == str(error)  # not "TrainingError" (the class name is all ZeroGPU would keep)
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        monkeypatch.undo()
        importlib.reload(gpu_calls)


def test_a_sweep_on_zero_gpu_carries_its_shots_into_the_worker_and_asks_for_their_time(base, monkeypatch):
    from tuning.sweep import SweepDone, WrittenResult
    from ui import gpu_calls

    asked = []

    def GPU(duration):  # ZeroGPU computes the duration from the call's own arguments, then runs it in a worker
        def wrap(fn):
            worker = zero_gpu_stand_in(duration)(fn)

            def call(*args, **kwargs):
                asked.append(duration(*args, **kwargs))
                yield from worker(*roundtrip(args), **kwargs)
            return call
        return wrap

    monkeypatch.setattr(gpu, "_measured", {})
    monkeypatch.setattr(gpu, "DEFAULT_GPU_TOKENS_PER_S", 5.0)  # slow enough that the written rows' scoring shows
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    cfg = config(epochs=1, held_out_fraction=0.2)
    try:
        importlib.reload(gpu_calls)
        events = list(gpu_calls.SWEEP_ON_GPU(base, ROWS, cfg, [(2, 1)], gpu.StopFlag(), 0, (2, 1)))
        list(gpu_calls.SWEEP_ON_GPU(base, ROWS, cfg, [(2, 1)], gpu.StopFlag(), 0))
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        monkeypatch.undo()
        importlib.reload(gpu_calls)
    rows = [e for e in events if isinstance(e, WrittenResult)]
    assert [w.label for w in rows] == ["1 example", "2 examples"] and all(w.held_out_ppl_written > 1 for w in rows)
    assert isinstance(events[-1], SweepDone) and events[-1].written == rows
    assert asked[0] > asked[1]  # the call with written rows reserved the GPU for their scoring too


def test_without_carrying_the_stand_in_shows_only_the_class_name():
    """The stand-in is faithful: a call that raises across it loses the sentence (what the app used to show)."""
    import gradio as gr

    def fails():
        raise TrainingError("the loss became nan")
        yield

    with pytest.raises(gr.Error) as shown:
        next(zero_gpu_stand_in(None)(fails)())
    assert shown.value.message == "TrainingError"


def test_a_bug_inside_a_gpu_call_is_raised_again_on_the_server_not_swallowed():
    def broken():
        yield 1
        raise KeyError("a bug")

    events = gpu.reraising(gpu.carrying(broken)())
    assert next(events) == 1
    with pytest.raises(KeyError, match="a bug"):
        next(events)


def test_a_training_call_stops_itself_before_its_duration_and_keeps_what_it_learned(base, monkeypatch):
    clock = iter(range(10_000))  # each look at the clock is one "second" later
    monkeypatch.setattr(gpu.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(gpu, "stop_before", lambda seconds, base, held: 3.5)  # the deadline: 3.5 looks after the start
    events = list(gpu.train_run(base, ROWS[:-2], config(epochs=20), ROWS[-2:], gpu.StopFlag(), seconds=60))
    done = events[-1]
    steps = [e for e in events if isinstance(e, Step)]
    assert isinstance(done, Done) and done.stopped and 1 <= len(steps) < 60
    assert done.soft.meta["steps"] == len(steps) and done.soft.meta["metrics"]["held_out_loss"] is not None


def test_the_deadline_leaves_room_for_the_last_scoring(base):
    assert gpu.stop_before(100, base, []) == pytest.approx(85.0)
    assert gpu.stop_before(100, base, ROWS) < 85.0
    assert gpu.stop_before(1, base, ROWS) >= 1.0


def test_the_real_spaces_package_off_zero_gpu_leaves_the_functions_as_they_are(monkeypatch):
    need(importlib.util.find_spec("spaces") is not None, "needs the spaces package (requirements-dev.txt)")
    import spaces
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert spaces.GPU(duration=gpu.train_duration)(gpu.train_run) is gpu.train_run


def test_on_zero_gpu_the_app_refuses_a_training_over_the_cap_before_it_starts(tmp_path, monkeypatch):
    import gradio as gr

    from ui.session import Context, Session
    from ui.tabs.train import start_training
    from app_fixtures import write_assets
    from tuning.jobs import Jobs

    model, dataset = write_assets(tmp_path)
    ctx = Context(model, dataset, tmp_path / "adapters", jobs=Jobs(grace=5.0))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(gpu, "MAX_CALL_SECONDS", 16)  # the 15 s overhead alone nearly fills it
    request = types.SimpleNamespace(session_hash="tab", username=None, headers={}, cookies={})
    run = start_training(ctx, 5, 50, 0.1, 1, "random", "all training acts", [], 0, Session(), request)
    with pytest.raises(gr.Error, match=r"needs about \d+ s of GPU time; one call on this Space may use at most 16 s"):
        next(run)
    assert ctx.jobs.running(None) is None and not (tmp_path / "adapters").exists()


@pytest.mark.timeout(60)
def test_moving_the_model_to_the_gpu_turns_cudnn_attention_off(tokenizer, monkeypatch):
    """cuDNN attention made bf16 on an H200 7-9x slower (kernels.attention_kernels); a ZeroGPU worker moves the
    model itself, so the move switches it off too. No GPU here: the move is recorded, not made."""
    from conftest import make_base

    base = make_base(tokenizer)
    moves = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(base.model, "to", lambda **kw: moves.append(kw))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        gpu.on_accelerator(base)
        assert moves == [{"device": torch.device("cuda"), "dtype": torch.float32}]  # loaded as fp32: kept
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_a_training_call_yields_snapshots_only_when_it_may_be_cut_off(base):
    from tuning.events import Snapshot

    timed = list(gpu.train_run(base, ROWS[:-2], config(epochs=12, batch_size=1), ROWS[-2:], gpu.StopFlag(),
                               seconds=10_000))
    plain = list(gpu.train_run(base, ROWS[:-2], config(epochs=12, batch_size=1), ROWS[-2:], gpu.StopFlag()))
    snapshots = [e for e in timed if isinstance(e, Snapshot)]
    assert [s.step for s in snapshots] == list(range(gpu.SNAPSHOT_STEPS, timed[-1].steps + 1, gpu.SNAPSHOT_STEPS))
    assert not any(isinstance(e, Snapshot) for e in plain)
    first = snapshots[0].soft
    assert first.meta["steps"] == gpu.SNAPSHOT_STEPS and first.meta["stopped"]
    assert len(first.meta["history"]["step"]) == gpu.SNAPSHOT_STEPS  # its own history, not the run's as it grew
    assert not torch.equal(first.embeddings, timed[-1].soft.embeddings)


def test_a_zero_gpu_call_cut_off_at_its_duration_keeps_its_last_snapshot(tmp_path, monkeypatch):
    """What the visitor gets when ZeroGPU ends the call: the run ends as stopped, with the prompt of its last
    snapshot in the session (and the page says which step's prompt is kept), not an error and nothing."""
    import gradio as gr

    from ui import gpu_calls
    from ui.session import Context, Session
    from ui.tabs.train import start_training
    from app_fixtures import write_assets
    from tuning.jobs import Jobs

    def aborting(duration):  # spaces.GPU when the platform kills the worker after 25 events
        def wrap(fn):
            def call(*args, **kwargs):
                for n, value in enumerate(fn(*args, **kwargs)):
                    if n == 25:
                        raise gr.Error("GPU task aborted", title="ZeroGPU worker error")
                    yield roundtrip(value)
            return call
        return wrap

    model, dataset = write_assets(tmp_path)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=aborting))
    try:
        importlib.reload(gpu_calls)
        ctx = Context(model, dataset, tmp_path / "adapters", jobs=Jobs(grace=5.0))
        session = Session()
        request = types.SimpleNamespace(session_hash="tab", username=None, headers={}, cookies={})
        *_, (chart, progress, log) = start_training(ctx, 3, 20, 0.1, 1, "random", "all training acts", [], 0,
                                                       session, request)
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        monkeypatch.undo()
        importlib.reload(gpu_calls)
    kept = session.runs[-1].soft
    assert kept.meta["stopped"] and kept.meta["steps"] % gpu.SNAPSHOT_STEPS == 0 and kept.meta["steps"] >= 10
    assert "stopped at step" in progress and f"the prompt as it was after step {kept.meta['steps']:,} is kept" in log


def test_training_duration_counts_a_short_runs_subset_scorings_and_its_last_full_one(base, monkeypatch):
    from tuning.plan import SCORING_COST, scored_tokens

    monkeypatch.setattr(gpu, "_measured", {})
    held = [Row(f"Held {i}", f"{r.prompt} Held-out act number {i}.", f"held {i}") for i, r in enumerate(ROWS * 4)]
    lengths = [len(base.encode(r.prompt)) + 1 for r in held]
    tokens = len(base.encode(ROWS[0].prompt)) + 1
    seconds = gpu.training_seconds(base, ROWS[:1], config(epochs=5), held)
    scored = scored_tokens(tokens, lengths, config().batch_size, config().seed, 5)
    assert scored < 6 * sum(lengths)  # less than scoring everything at each epoch end and the base model once
    assert seconds == pytest.approx(gpu.CALL_OVERHEAD_S + (5 * tokens + SCORING_COST * scored) / gpu.gpu_speed())
