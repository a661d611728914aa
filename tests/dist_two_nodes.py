"""Run by test_multinode.py under torchrun, once per node: train, record which rows each step
read on this rank (ids-rank<R>.jsonl), then dump this rank's trainable weights.

``LLASM_TEST_STEP_SLEEP`` (seconds) slows every step, so that the test can kill a node mid-run."""

import json
import os
import sys
import time

import torch
from safetensors.torch import save_file

from llasm.training import Trainer, end_distributed, load_config

torch.set_num_threads(1)
cfg = load_config(sys.argv[1], sys.argv[2:])
trainer = Trainer(cfg)
rank = trainer.accelerator.process_index
os.makedirs(cfg.output_dir, exist_ok=True)
with open(os.path.join(cfg.output_dir, f"pid-rank{rank}"), "w") as f:  # torchrun starts workers in their own session
    f.write(str(os.getpid()))
pause = float(os.environ.get("LLASM_TEST_STEP_SLEEP", "0"))
loss = trainer.loss


def recorded_loss(batch, needs=None):
    with open(os.path.join(cfg.output_dir, f"ids-rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps({"step": trainer.step + 1, "epoch": trainer.epoch, "ids": batch["ids"]}) + "\n")
    time.sleep(pause)
    return loss(batch, needs)


trainer.loss = recorded_loss
trainer.fit()
state = {n: p.detach().cpu().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
save_file(state, os.path.join(cfg.output_dir, f"rank{rank}.safetensors"))
end_distributed()
