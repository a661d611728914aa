"""``llasm encoder-cache``: the command line of :mod:`llasm.training.cache_builder` (which it imports
once the arguments are read, so ``--help`` needs no torch).

Reads a stage YAML (the same one training uses, so the model, its feature settings, the data
sources and ``encoder_cache.dir`` agree), and runs the frozen Whisper tower once over every audio
chunk of its rows, through :class:`~llasm.training.encoder_cache.EncoderCache` (keys are content
hashes, written as atomic safetensors shards with unique names, so any number of processes may add
to one directory at once). ``--num-shards N --shard-index i`` makes rows ``i, i+N, ...`` (see
:mod:`llasm.sharding`); a rerun skips chunks already cached; each shard leaves
``<cache>/built.shard-*-of-*.jsonl`` + its done marker, and ``llasm merge-shards --output
<cache>/built.jsonl --num-shards N`` checks the shards covered every row exactly once. Training
then reads the directory with ``encoder_cache.read_only: true`` (a shared, read-only mount)::

    sbatch --array=0-63 --wrap "llasm encoder-cache configs/stage1_asr_align.yaml \\
        --num-shards 64 --shard-index \\$SLURM_ARRAY_TASK_ID"
    llasm merge-shards --output $CACHE/built.jsonl --num-shards 64
"""

from __future__ import annotations

import argparse
import logging
import sys

from llasm import sharding
from llasm.device import add_device_arguments

log = logging.getLogger("llasm.training.cache_builder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm encoder-cache", description="Build the encoder cache before training, on many machines (a Slurm array of shards).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("config", help="the stage YAML training will use (configs/stage1_asr_align.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, as for llasm train")
    parser.add_argument("--batch-size", type=int, default=8)
    add_device_arguments(parser, dtype=False)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    sharding.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from llasm.training.cache_builder import build_cache, cache_dir
    from llasm.training.config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
        shard = sharding.from_args(args)
        output = cache_dir(cfg) / "built.jsonl"
        if shard.is_done(output):
            log.info("%s: already done", shard.path(output))
            return 0
        records = build_cache(cfg, shard, args.batch_size, args.device, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sharding.write(output, shard, records)
    log.info("%s: %d rows cached, %d rejected", shard.path(output), len(records.items), len(records.rejects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
