"""Two nodes on localhost: two torchrun launchers (``--nnodes 2 --node_rank 0|1``, one process
each, gloo) training from shard folders. The ranks agree on the weights, each epoch reads every row
once across the two ranks, the checkpoints load, and a run whose second node is killed resumes
with the same losses and the same rows."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_scale import shard_data
from test_training import config, env, losses_of, write_config

from llasm.modeling import LlasmForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "dist_two_nodes.py"
ROWS = sorted([f"asr-{i}" for i in range(6)] + ["text-0", "multi-0"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg_path: Path, port: int, log: Path, step_sleep: float = 0.0) -> list[subprocess.Popen]:
    """One torchrun per 'node', each in its own process group (so a node can be killed whole)."""
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), str(SCRIPT),
               str(cfg_path)]
        out = open(log.with_suffix(f".node{node}.log"), "w")
        procs.append(subprocess.Popen(cmd, env=env() | {"LLASM_TEST_STEP_SLEEP": str(step_sleep)}, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def wait(procs, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    for node, proc in enumerate(procs):
        rc = proc.wait(timeout=max(1.0, deadline - time.time()))
        assert rc == 0, log.with_suffix(f".node{node}.log").read_text()[-3000:]


def steps_read(out: Path) -> dict[int, list[str]]:
    """step -> the row ids both ranks read for it (the last record of a step wins: a resumed run rewrites)."""
    steps: dict[int, dict[int, list]] = {}
    for rank in range(2):
        for line in (out / f"ids-rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], {})[rank] = record["ids"]
    return {step: by_rank[0] + by_rank[1] for step, by_rank in steps.items()}


@pytest.mark.slow
def test_two_nodes_agree_cover_each_epoch_and_resume_after_a_node_is_killed(tmp_path):
    shard_data(tmp_path)  # 8 rows in 4 shards of 2: each rank reads 2 shards (4 rows, 2 batches) per epoch
    over = {"data.sources": [{"path": str(tmp_path / "shards")}], "data.group_size": 2, "encoder_cache.enabled": False,
            "train.max_steps": 6, "train.save_every": 2, "train.keep_checkpoints": 10, "train.scheduler": "cosine",
            "trainable.language_model": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    straight = config(tmp_path / "a", tmp_path / "unused.jsonl", **over)
    path_a = write_config(tmp_path / "a", straight)
    wait(launch(path_a, free_port(), tmp_path / "a" / "run"), tmp_path / "a" / "run")
    out_a = Path(straight["output_dir"])

    ranks = [load_file(str(out_a / f"rank{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and any("lora_" in k for k in ranks[0])
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    read = steps_read(out_a)
    assert sorted(read) == list(range(1, 7))
    for epoch in range(3):  # 2 steps per epoch: both ranks together read every row once
        assert sorted(read[2 * epoch + 1] + read[2 * epoch + 2]) == ROWS
    assert read[1] + read[2] != read[3] + read[4]  # each epoch its own order
    # final/ loads (a random base has no hub id to point at, so LoRA comes merged): the adaptor is rank 0's
    final = dict(LlasmForConditionalGeneration.from_pretrained(out_a / "final").named_parameters())
    adaptor = [name for name in ranks[0] if name.startswith("adaptor.")]
    assert adaptor and all(torch.equal(final[name], ranks[0][name]) for name in adaptor)

    # run B: node 1 killed after the step-2 checkpoint, node 0 stopped as a scheduler would, then both restarted
    killed = config(tmp_path / "b", tmp_path / "unused.jsonl", **over)
    path_b = write_config(tmp_path / "b", killed)
    out_b = Path(killed["output_dir"])
    procs = launch(path_b, free_port(), tmp_path / "b" / "first", step_sleep=1.0)
    deadline = time.time() + 240
    while not (out_b / "checkpoint-2").exists() and time.time() < deadline and procs[1].poll() is None:
        time.sleep(0.05)
    os.kill(int((out_b / "pid-rank1").read_text()), signal.SIGKILL)  # node 1's training process
    for node in (1, 0):  # node 1's launcher sees its worker die; node 0's worker sees the peer gone (gloo)
        try:
            procs[node].wait(timeout=60)
        except subprocess.TimeoutExpired:  # stop it as a scheduler would end the job
            os.killpg(procs[node].pid, signal.SIGKILL)
            os.kill(int((out_b / f"pid-rank{node}").read_text()), signal.SIGKILL)
            procs[node].wait()
    assert (out_b / "checkpoint-2").exists() and not (out_b / "final").exists(), "killed too late or too early"
    wait(launch(path_b, free_port(), tmp_path / "b" / "resumed"), tmp_path / "b" / "resumed")

    a, b = losses_of(out_a), losses_of(out_b)
    assert sorted(b) == list(range(1, 7))
    for step in range(1, 7):
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])
    assert steps_read(out_b) == read  # the resumed run read the same rows at the same steps
