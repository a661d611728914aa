"""Train one stage of llasm from a YAML: ``train/train.py CONFIG [dotted.key=value ...]``.

Single process (CPU or one GPU)::

    python train/train.py configs/stage1_asr_align.yaml train.lr=1e-4 output_dir=runs/s1

Two processes with DDP (gloo on CPU, nccl on GPUs)::

    torchrun --nproc_per_node 2 train/train.py configs/stage1_asr_align.yaml

DeepSpeed ZeRO-2 / ZeRO-3 (its first CPU run JIT-compiles an op, ~90 s)::

    deepspeed --num_gpus 2 train/train.py configs/stage2_instruct.yaml deepspeed=configs/deepspeed/zero2.json

(``accelerate launch --cpu --num_processes 2`` silently runs one process: use torchrun.)
A run resumes from the newest complete ``output_dir/checkpoint-N`` (``resume: auto``) and ends
with ``output_dir/final`` (load with ``LlasmForConditionalGeneration.from_pretrained``).
"""

import logging
import sys

from llasm.training import NonFiniteLoss, load_config, train


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args[0], args[1:])
    try:
        result = train(cfg)
    except NonFiniteLoss as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 1
    print(f"done: {result['steps']} steps, final checkpoint in {result['final']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
