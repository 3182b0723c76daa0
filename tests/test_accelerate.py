"""The training loop in two processes on the CPU (gloo) against one process.

The launch: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` (torchrun underneath;
``ACCELERATE_USE_CPU`` makes ``Accelerator`` pick MULTI_CPU with gloo). ``accelerate launch --cpu
--num_processes 2`` is not enough with accelerate 1.15: its CPU launcher starts one process unless MPI is
given (``--mpirun_hostfile``), and that process trains alone (checked below).

Two processes with ``batch_size=2`` draw the same global batches of 4 as one process with ``batch_size=4``
and average the same token-mean loss, so they train the same model up to float rounding (gradients summed
across processes in another order, matrices of 2 rows instead of 4). Stated tolerance, after 4 AdamW
updates of a tiny random Llama (LoRA lr 1e-2, full lr 1e-3): every loss within 1e-5 and every weight within
1e-4 absolute (weights are O(1); Adam's normalized steps can move a weight by up to lr per update). Measured
on 2 cores: losses 4.8e-7 (LoRA) and 0 (full) apart, weights 1.2e-6 and 4.3e-6. The same script with
``accelerate launch --cpu --num_processes 2`` runs one process of batch 2: 8 updates, losses 0.016-0.036 off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-4
SCRIPT = r'''
import json, sys
import torch
from recall.assets import load_model
from recall.samples import Sample
from recall.training import TrainConfig, finetune

base, out, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
model, tok = load_model(base)
words = ["fox", "dog", "markets", "films", "movie", "prize", "hockey", "grain"]
labels = ["sport", "tech", "business", "politics"]
samples = [Sample(tok.apply_chat_template([{"role": "user", "content": f"{w} ->"}], add_generation_prompt=True,
                                          tokenize=False), labels[i % 4] + " news" * (i % 3))
           for i, w in enumerate(words)]
result = {}
for mode, lr in (("lora", 1e-2), ("full", 1e-3)):
    m, _ = load_model(base)
    r = finetune(m, tok, samples, TrainConfig(mode=mode, epochs=2, batch_size=batch_size, lr=lr, seed=3),
                 progress=False)
    result[mode] = {"losses": r.losses, "steps": r.steps, "tokens": r.tokens,
                    "state": {k: v.flatten().tolist() for k, v in r.model.state_dict().items()}}
from accelerate import PartialState
state = PartialState()
if state.is_main_process:
    json.dump({"processes": state.num_processes, **result}, open(out, "w"))
'''


def _env() -> dict:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    return env


def _accelerate() -> list[str]:
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if exe is None:
        pytest.skip("accelerate's launcher is not installed")
    return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port())]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_pool, tmp_path):
    base, _ = tiny_pool
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    for cmd, out in ([[sys.executable, str(script)], one], [[*_accelerate(), str(script)], two]):
        p = subprocess.run([*cmd, str(base), str(out), "4" if out == one else "2"], env=_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    for mode in ("lora", "full"):
        ra, rb = a[mode], b[mode]
        assert ra["steps"] == rb["steps"] == 4 and ra["tokens"] == rb["tokens"]
        assert max(abs(x - y) for x, y in zip(ra["losses"], rb["losses"], strict=True)) < LOSS_TOL
        assert ra["state"].keys() == rb["state"].keys()
        worst = max(float((torch.tensor(ra["state"][k]) - torch.tensor(rb["state"][k])).abs().max())
                    for k in ra["state"])
        assert worst < WEIGHT_TOL, (mode, worst)
        assert ra["losses"][-1] < ra["losses"][0]  # it trained
