"""Train one stage of llasm from a YAML: ``train/train.py CONFIG [dotted.key=value ...]``.

Single process (CPU or one GPU)::

    python train/train.py configs/stage1_asr_align.yaml train.lr=1e-4 output_dir=runs/s1

Two processes with DDP (gloo on CPU, nccl on GPUs)::

    torchrun --nproc_per_node 2 train/train.py configs/stage1_asr_align.yaml

DeepSpeed ZeRO-2 / ZeRO-3 (its first CPU run JIT-compiles an op, ~90 s)::

    deepspeed --num_gpus 2 train/train.py configs/stage2_instruct.yaml deepspeed=configs/deepspeed/zero2.json

Several nodes: ``torchrun --nnodes N --rdzv_backend c10d --rdzv_endpoint node0:29500 ...`` on every
node, or ``deepspeed --hostfile hostfile ...`` once; docs/training.md says what must be on a shared
filesystem. ``device: auto`` and ``train.mixed_precision: auto`` mean CUDA and bf16 when present.
(``accelerate launch --cpu --num_processes 2`` silently runs one process: use torchrun.)
A run resumes from the newest complete ``output_dir/checkpoint-N`` (``resume: auto``) and ends
with ``output_dir/final`` (load with ``LlasmForConditionalGeneration.from_pretrained``).
"""

import sys

from llasm.training.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))  # --help: every key, what a run writes, how to resume and chain stages
