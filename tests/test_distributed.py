"""`python -m tuning train` under `accelerate launch`: two processes learn what one process learns.

Two real processes on CPUs (gloo), started two ways: `accelerate launch --cpu --num_processes 2`
with an MPI hostfile (accelerate starts them through `mpirun`; Open MPI from Debian's
`openmpi-bin`), and the way it starts them on GPUs (`--multi_gpu`, i.e. torchrun) with the GPUs
hidden. Without a hostfile, `accelerate launch --cpu --num_processes 2` starts a single process
(accelerate 1.15); that must still run unchanged and give the one-process result. The MPI test
skips without `mpirun` and fails under CI (conftest.need).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuning import adapters

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
RUN_S = 240  # the longest one training process may take; each takes about 20 s on 2 shared cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(model, csv, adapters_dir, name):
    # 6 training rows in batches of 5: a 3 + 2 split, then a 1-row batch that leaves one process idle
    return ["--adapters-dir", str(adapters_dir), "train", "--model", str(model), "--dataset", str(csv),
            "--num-virtual-tokens", "4", "--epochs", "2", "--batch-size", "5", "--learning-rate", "0.1",
            "--precision", "fp32", "--held-out-fraction", "0.25", "--name", name]


def launch(*launcher_args, tuning_args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           # CI runs as root, which Open MPI refuses unless told so
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args, "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "tuning", *tuning_args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="session")
def mpirun(slow_setup) -> str:
    """Open MPI's launcher: accelerate starts the processes of a hostfile launch through it."""
    path = shutil.which("mpirun")
    need(path is not None, "needs Open MPI's mpirun (Debian: openmpi-bin)")
    return path


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tiny_csv, tmp_path_factory, slow_setup):
    folder = tmp_path_factory.mktemp("one")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tuning", *train_args(tiny_model_dir, tiny_csv, folder, "run")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return adapters.load("run", folder)


def test_two_processes_learn_the_same_prompt_as_one(one_process, tiny_model_dir, tiny_csv, tmp_path):
    done = launch("--multi_gpu", "--num_processes", "2",
                  tuning_args=train_args(tiny_model_dir, tiny_csv, tmp_path, "run"))
    two = adapters.load("run", tmp_path)
    assert (one_process.meta["processes"], two.meta["processes"]) == (1, 2)
    assert torch.allclose(two.embeddings, one_process.embeddings, atol=1e-4)
    assert two.meta["history"]["train_loss"] == pytest.approx(one_process.meta["history"]["train_loss"], rel=1e-5)
    assert two.meta["metrics"]["held_out_loss"] == pytest.approx(one_process.meta["metrics"]["held_out_loss"], rel=1e-5)
    # only the main process saves and reports
    assert done.stdout.count("saved adapter") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_accelerate_cpu_launch_runs_unchanged(one_process, tiny_model_dir, tiny_csv, tmp_path):
    launch("--cpu", "--num_processes", "2", tuning_args=train_args(tiny_model_dir, tiny_csv, tmp_path, "run"))
    alone = adapters.load("run", tmp_path)
    assert alone.meta["processes"] == 1  # no hostfile: accelerate starts one process
    assert torch.allclose(alone.embeddings, one_process.embeddings, atol=1e-4)


def test_accelerate_cpu_launch_with_a_hostfile_is_data_parallel(mpirun, one_process, tiny_model_dir, tiny_csv,
                                                                tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")
    out = tmp_path / "adapters"
    done = launch("--cpu", "--num_processes", "2", "--mpirun_hostfile", str(hosts),
                  tuning_args=train_args(tiny_model_dir, tiny_csv, out, "run"))
    two = adapters.load("run", out)
    assert two.meta["processes"] == 2
    assert "data parallel: 2 processes" in done.stderr
    assert torch.allclose(two.embeddings, one_process.embeddings, atol=1e-4)
    assert two.meta["history"]["train_loss"] == pytest.approx(one_process.meta["history"]["train_loss"], rel=1e-5)
    assert done.stdout.count("saved adapter") == 1
