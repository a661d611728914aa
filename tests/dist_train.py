"""Run by the multi-process tests under torchrun: train, then dump each rank's trainable weights."""

import os
import sys

import torch
from safetensors.torch import save_file

from llasm.training import Trainer, end_distributed, load_config

torch.set_num_threads(1)
cfg = load_config(sys.argv[1], sys.argv[2:])
trainer = Trainer(cfg)
trainer.fit()
model = trainer.accelerator.unwrap_model(trainer.engine)
trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
if trainer._zero_stage() == 3:  # each rank holds a slice of every weight: gather them to compare
    import deepspeed

    with deepspeed.zero.GatheredParameters([p for _, p in trained]):
        state = {n: p.detach().cpu().clone() for n, p in trained}
else:
    state = {n: p.detach().cpu().clone() for n, p in trained}
save_file(state, os.path.join(cfg.output_dir, f"rank{trainer.accelerator.process_index}.safetensors"))
end_distributed()
