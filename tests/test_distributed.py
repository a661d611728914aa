"""Two ranks on the CPU (gloo) reproduce what breaks on a GPU cluster: ranks whose batches differ
(an all-rejected batch, a text-only batch, a fully cached batch) must still run the same
collectives every step; ZeRO-3 started from a model YAML must not read its partitioned (empty)
embedding; ``self_reply`` teacher replies are made by every rank, batched, on its device.

Each run gets a short process-group timeout (``LLASM_TEST_PLAN``'s ``timeout_s``, see
``tests/dist_train.py``), so ranks out of step fail in seconds instead of hanging the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file
from test_training import config, env, make_data, write_config

HARNESS = ROOT / "tests" / "dist_train.py"
TIMEOUT_S = 180  # a collective waiting this long means the ranks are out of step (a step takes seconds;
# the margin is for a loaded machine, where one rank may start a minute after the other)
TEXT, REJECTED = 8, 10  # make_data's text-only row; the row added by data_with_rejected


def data_with_rejected(root: Path) -> Path:
    """make_data's rows plus one (index 10) whose audio file is not audio: rejected when its batch is made."""
    path = make_data(root)
    (root / "wavs" / "broken.wav").write_bytes(b"RIFF....not audio")
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "broken-audio", "audios": ["wavs/broken.wav"],
                            "conversations": [{"from": "human", "value": "<speech>"},
                                              {"from": "gpt", "value": "x"}]}) + "\n")
    return path


def run_ranks(tmp_path: Path, cfg: dict, plan: dict, port: int, timeout: float = 900) -> list[dict]:
    """``cfg`` on two gloo ranks through tests/dist_train.py with ``plan``; each rank's report."""
    plan = {"timeout_s": TIMEOUT_S, **plan}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    path = write_config(tmp_path, cfg)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), str(HARNESS), str(path)],
                          env={**env(), "LLASM_TEST_PLAN": str(tmp_path / "plan.json")},
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(cfg["output_dir"])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def assert_ranks_identical(out: Path, prefix: str = "rank") -> dict:
    states = [load_file(str(out / f"{prefix}{r}.safetensors")) for r in range(2)]
    assert states[0].keys() == states[1].keys() and states[0]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    return states[0]


# rank 0's first batch is wholly rejected, its second mixes a text-only row with speech
IN_STEP_PLAN = {"0": [[REJECTED], [TEXT, 0], [1, 2]], "1": [[3, 4], [5, 6], [7, TEXT]]}


@pytest.mark.slow
def test_a_rejected_batch_is_skipped_on_every_rank(tmp_path):
    """DDP: rank 0's all-rejected batch used to be skipped by rank 0 alone, so from then on the ranks
    trained different batch positions in one step (and a resume restored rank 0's position for both);
    now the batch is skipped by all ranks together and they stay at the same place."""
    data = data_with_rejected(tmp_path / "data")
    cfg = config(tmp_path, data, **{"train.max_steps": 2})
    reports = run_ranks(tmp_path, cfg, {"batches": IN_STEP_PLAN}, 29541)
    assert [(r["step"], r["batch_in_epoch"]) for r in reports] == [(2, 3), (2, 3)]
    assert all(np.isfinite(loss) for _, loss in reports[0]["losses"])
    assert_ranks_identical(Path(cfg["output_dir"]))


# step 1: rank 0 text only, rank 1 speech (the tower and the adaptor run on rank 1 only);
# step 2: rank 1's clip is cached, rank 0's is not (the tower runs on rank 0 only);
# step 3: rank 0's batch is all rejected (skipped by both); step 4: speech on both
MIXED_PLAN = {"0": [[TEXT], [0, 1], [REJECTED], [2]], "1": [[3, 4], [3], [5], [6]]}


def _bases_yaml(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_zero3_from_a_model_yaml_with_mixed_batches(tmp_path, tiny_bases):
    """ZeRO-3 started from a model YAML whose bases are saved HF dirs, the LLM trained in full:

    * ``<au_start>``/``<au_end>`` start at the mean of the LLM's (gathered) embedding, not at the NaN
      mean of its empty partition, so step 1 is finite;
    * ranks whose batch skips the tower or the adaptor (text only, all cached) still gather their
      weights with the others (a zero-weighted pass), and a rejected batch is skipped by both;
    * the final trained-parts checkpoint loads again under ZeRO-3 with the trained LLM weights.
    """
    pytest.importorskip("deepspeed")
    from transformers import LlamaForCausalLM

    data = data_with_rejected(tmp_path / "data")
    spec = {**tiny_bases, "seed": 0}
    cfg = config(tmp_path, data, **{"model": str(_bases_yaml(tmp_path, spec)), "train.max_steps": 3,
                                    "trainable.language_model": "full",
                                    "deepspeed": str(ROOT / "configs/deepspeed/zero3.json")})
    reports = run_ranks(tmp_path, cfg, {"batches": MIXED_PLAN, "reload": True}, 29542)
    losses = [loss for _, loss in reports[0]["losses"]]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses
    assert [r["batch_in_epoch"] for r in reports] == [4, 4]
    out = Path(cfg["output_dir"])
    trained = assert_ranks_identical(out)
    reloaded = assert_ranks_identical(out, "reload")
    embedding = LlamaForCausalLM.from_pretrained(tiny_bases["text"]["name_or_path"]).get_input_embeddings().weight
    # the marker rows trained 3 steps from the embedding's mean: close to it, and finite
    markers = reloaded["audio_marker_embeddings.weight"]
    assert torch.isfinite(markers).all()
    assert (markers - embedding.mean(0)).abs().max() < 0.05
    for name, value in trained.items():  # the trained LLM (and adaptor) come back from the checkpoint
        torch.testing.assert_close(reloaded[name], value, msg=name)


@pytest.mark.slow
def test_zero2_with_mixed_batches(tmp_path, tiny_bases):
    """ZeRO-2 reduces gradients in buckets: a rank whose batch skipped the adaptor (text only) must
    still reduce its (zero) gradients with the others', and a rejected batch is skipped by both."""
    pytest.importorskip("deepspeed")
    data = data_with_rejected(tmp_path / "data")
    cfg = config(tmp_path, data, **{"model": str(_bases_yaml(tmp_path, {**tiny_bases, "seed": 0})),
                                    "train.max_steps": 3, "deepspeed": str(ROOT / "configs/deepspeed/zero2.json")})
    reports = run_ranks(tmp_path, cfg, {"batches": MIXED_PLAN}, 29544)
    assert [r["batch_in_epoch"] for r in reports] == [4, 4] and reports[0]["skipped_batches"] == 1
    assert all(np.isfinite(loss) for _, loss in reports[0]["losses"])
    assert_ranks_identical(Path(cfg["output_dir"]))


@pytest.mark.slow
def test_self_reply_teachers_are_made_by_every_rank_in_batches(tmp_path):
    """``objective: self_reply`` used to generate every reply on rank 0, one row at a time, before
    the model was placed, while rank 1 waited at a barrier; now each rank generates its share of the
    rows in batches on its own device, and the merged file keeps the source order."""
    from llasm.io import read_jsonl

    data = make_data(tmp_path / "data")
    cfg = config(tmp_path, data, **{"objective.type": "self_reply", "objective.max_new_tokens": 3,
                                    "objective.generate_batch_size": 4, "train.max_steps": 1})
    reports = run_ranks(tmp_path, cfg, {}, 29543)
    for r in reports:
        calls = r["generate_calls"]
        assert calls and max(c["rows"] for c in calls) > 1, calls  # batched, on both ranks
        assert all(c["device"] == c["model_device"] for c in calls)
    rows = read_jsonl(next(Path(cfg["output_dir"]).glob("self_replies-*.jsonl")))
    assert [r["id"] for r in rows] == [f"asr-{i}" for i in range(8)]  # source order; one transcript each
    assert sum(c["rows"] for r in reports for c in r["generate_calls"]) >= 8
