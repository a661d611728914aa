"""``llasm shards``: the command line of :func:`llasm.data.shards.write_shards` (imported once the
arguments are read, so ``--help`` needs no torch)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("llasm.data.shards")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llasm shards", description="Write a JSONL source as Parquet shards with the audio inside, for "
                                         "streamed, rank-sharded training (data.sources: [{path: FOLDER}]).")
    parser.add_argument("--input", required=True, help="a training JSONL (audio paths relative to it)")
    parser.add_argument("--output", required=True, help="the shard folder to write")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="how many shards (a multiple of the GPUs you train on); default: rows / --rows-per-shard")
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the shuffle before splitting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from llasm.data.shards import write_shards

    try:
        index = write_shards(args.input, args.output, args.num_shards, args.rows_per_shard, args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("%s: %d rows in %d shards, %d rejected (%s)", args.output, sum(index["num_rows"]), len(index["files"]),
             index["rejected"], Path(args.output) / "rejects.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
