"""Run by the multi-process tests under torchrun: train, then dump each rank's trainable weights
(``rank{R}.safetensors``) and what it did (``rank{R}.json``: step, epoch, position in the epoch,
losses, the batch sizes and devices of every ``generate`` call).

``LLASM_TEST_PLAN`` (a JSON file) can script a run:

* ``batches``: ``{"0": [[row, ...], ...], "1": ...}`` — each rank's batches (dataset row indices),
  in place of the sampler's, so a test decides which rank gets a text-only, an all-rejected or a
  cached batch at which step;
* ``timeout_s``: the process-group timeout, so a hang (ranks out of step) fails in seconds, not
  after torch's 30 minutes;
* ``reload``: after training, load ``output_dir/final`` again (under the same ZeRO config) and
  dump its gathered weights as ``reload{R}.safetensors``.
"""

import datetime
import json
import os
import sys

import torch
from safetensors.torch import save_file

torch.set_num_threads(1)
plan = json.loads(open(os.environ["LLASM_TEST_PLAN"]).read()) if os.environ.get("LLASM_TEST_PLAN") else {}
if plan.get("timeout_s"):  # deepspeed.init_distributed and accelerate both end in this call
    _init = torch.distributed.init_process_group

    def _init_with_timeout(*args, **kwargs):
        kwargs["timeout"] = datetime.timedelta(seconds=plan["timeout_s"])
        return _init(*args, **kwargs)

    torch.distributed.init_process_group = _init_with_timeout

from llasm.modeling import LlasmForConditionalGeneration  # noqa: E402
from llasm.training import Trainer, end_distributed, load_config  # noqa: E402

generate_calls = []
_generate = LlasmForConditionalGeneration.generate


def _recording_generate(self, *args, **kwargs):
    ids = kwargs.get("input_ids", args[0] if args else None)
    generate_calls.append({"rows": int(ids.shape[0]), "device": str(ids.device),
                           "model_device": str(next(self.parameters()).device)})
    return _generate(self, *args, **kwargs)


LlasmForConditionalGeneration.generate = _recording_generate


def gathered(model, names=None):
    """The named parameters' full values on every rank (ZeRO-3 holds a slice of each)."""
    params = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {n: p.detach().cpu().clone() for n, p in params}
    return {n: p.detach().cpu().clone() for n, p in params}


def main():
    cfg = load_config(sys.argv[1], sys.argv[2:])
    trainer = Trainer(cfg)
    rank = trainer.accelerator.process_index
    if plan.get("batches"):
        batches = plan["batches"][str(rank)]
        trainer.sampler.epoch_batches = lambda epoch: [list(b) for b in batches]
    result = trainer.fit()
    model = trainer.accelerator.unwrap_model(trainer.engine)
    state = gathered(model, {n for n, p in model.named_parameters() if p.requires_grad})
    save_file(state, os.path.join(cfg.output_dir, f"rank{rank}.safetensors"))
    report = {"step": trainer.step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
              "losses": result["losses"], "generate_calls": generate_calls,
              "skipped_batches": getattr(trainer, "skipped_batches", None)}
    with open(os.path.join(cfg.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    if plan.get("reload"):
        reloaded = LlasmForConditionalGeneration.from_pretrained(result["final"])
        save_file(gathered(reloaded), os.path.join(cfg.output_dir, f"reload{rank}.safetensors"))
    end_distributed()


if __name__ == "__main__":
    main()
