"""``llasm train`` (``train/train.py``): the command line of one training stage. It reads the
arguments and prints the help without torch; the run itself is :func:`llasm.training.trainer.main`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from llasm.training.config import TrainConfig, load_config

DESCRIPTION = """\
Train one stage of llasm from a YAML. Stages differ only in their YAML:
  configs/stage1_asr_align.yaml      adaptor (+ <au_start>/<au_end> rows); Whisper and the LLM frozen; ASR data
  configs/stage2_instruct_lora.yaml  adaptor + LoRA on the LLM; spoken + text conversations + ASR
  configs/stage2_instruct.yaml       adaptor + the whole LLM
  configs/stage3_unit_head.yaml      the unit head (speech output); everything else frozen
Any key can be overridden on the command line as dotted.key=value (train.lr=1e-4 output_dir=runs/x
data.sources.0.path=data/mine.jsonl); an unknown key is an error naming it."""

EPILOG = """\
model
  A model YAML (configs/model/tiny.yaml, starter.yaml, llasm-7b-cllama2.yaml) or a checkpoint directory.
  Stage 2 continues stage 1 with  model=runs/stage1_asr_align/final  (or any checkpoint-N).

data.sources
  A list of {path, weight, name}. A path is our JSONL (audio paths relative to the JSONL's folder),
  or text-only instruction data as it comes: Alpaca / ShareGPT / "messages" JSON or JSONL. Sources are
  drawn by weight. Rows that cannot be used (missing audio, bad <speech> marks) are skipped and listed in
  output_dir/rejects.jsonl; when no row is usable the run stops before loading the model.

resume
  auto (default): continue from the newest output_dir/checkpoint-N when the config and the data are
  unchanged; otherwise stop and name what changed. force: continue anyway. none: start again.
  Or a checkpoint directory.

what a run writes (output_dir)
  train_config.yaml   the resolved config (llasm train output_dir/train_config.yaml repeats the run)
  checkpoint-N/       every train.save_every steps and the last: loads like final/ (from_pretrained, llasm chat/eval)
                      and holds what a resume needs; the newest train.keep_checkpoints are kept
  final/              the trained model (llasm chat --model output_dir/final)
  losses.jsonl, loss_curve.png, tensorboard/, rejects.jsonl
At the start the run prints its config, rows per source, trainable parameters per part, the number of
steps and warnings (warmup longer than the run, a learning rate of 0, a batch larger than the data);
at the end the final loss, the time and where all of this is.

launch
  llasm train configs/stage1_asr_align.yaml model=configs/model/starter.yaml       one process (CPU / 1 GPU)
  torchrun --nproc_per_node 2 train/train.py configs/stage2_instruct.yaml           DDP (gloo on CPU)
  deepspeed --num_gpus 2 train/train.py configs/stage2_instruct.yaml deepspeed=configs/deepspeed/zero2.json
  (accelerate launch --cpu --num_processes 2 silently runs one process: use torchrun.)

keys and their defaults
"""


def _keys() -> str:
    """Every config key with its default, from :class:`TrainConfig` (so the list cannot go stale)."""
    lines = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} = {value!r}")

    walk(TrainConfig(), "")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llasm train", description=DESCRIPTION, epilog=EPILOG + _keys(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="stage YAML (configs/stage*.yaml or your own)")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="config overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("--local_rank")]  # deepspeed's
    args = build_parser().parse_args(argv)
    from llasm.training.resume import latest_checkpoint
    from llasm.training.trainer import main as run  # torch, transformers: only once there is a run

    try:
        return run([args.config, *args.overrides])
    except KeyboardInterrupt:  # Ctrl-C: say where a rerun goes on, not a traceback
        out = Path(load_config(args.config, args.overrides).output_dir)
        last = latest_checkpoint(out)
        print(f"\nstopped: the same command resumes from {last}" if last else
              f"\nstopped before the first checkpoint in {out}: the same command starts again from step 0",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
