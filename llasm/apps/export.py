"""`llasm export SRC DST`: load a checkpoint (either format) and write it whole, LoRA merged."""

from __future__ import annotations

import argparse

from llasm.modeling import LlasmForConditionalGeneration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm export", description=__doc__)
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)

    model = LlasmForConditionalGeneration.from_pretrained(args.source, dtype=args.dtype)
    model.save_pretrained(args.output, merge=True)
    print(f"wrote {args.output} (full checkpoint)")
    return 0
