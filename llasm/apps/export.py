"""`llasm export SRC DST`: load a checkpoint (either format) and write it whole, LoRA merged."""

from __future__ import annotations

import argparse

# a command module: the model core is imported once the arguments are read (`--help` at once)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm export", description=__doc__)
    parser.add_argument("source", help="checkpoint directory (final/ or checkpoint-N of a run)")
    parser.add_argument("output", help="directory for the full checkpoint (every weight, LoRA merged)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--audio-tower", default=None, help="where the source's base Whisper is, when not where "
                        "it was trained (a copied checkpoint)")
    parser.add_argument("--language-model", default=None, help="where the source's base LLM is, likewise")
    args = parser.parse_args(argv)
    from llasm.modeling import LlasmForConditionalGeneration

    model = LlasmForConditionalGeneration.from_pretrained(args.source, dtype=args.dtype, audio_tower=args.audio_tower,
                                                          language_model=args.language_model)
    model.save_pretrained(args.output, merge=True)
    print(f"wrote {args.output} (full checkpoint)")
    return 0
