"""``llasm units`` (``data_prep/units.py``): fit k-means speech units, annotate spoken answers with
units, or write a vocoder manifest. The command line only; the work is :mod:`llasm.speech.units`,
imported once the arguments are read (so ``--help`` needs no torch).

    llasm units fit       --encoder openai/whisper-small --num-units 500 --input a.jsonl [dir ...] --output km/
    llasm units annotate  --kmeans km/ --input conv.jsonl --output conv.units.jsonl   # gpt turns with "audio"
    llasm units manifest  --kmeans km/ --input a.jsonl [dir ...] --output vocoder.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from llasm import sharding
from llasm.device import add_device_arguments
from llasm.io import write_jsonl

logger = logging.getLogger("llasm.speech.units")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llasm units", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit k-means on encoder-layer features")
    fit.add_argument("--encoder", required=True, help="Whisper (or HuBERT) hub id or dir")
    fit.add_argument("--encoder-type", choices=["whisper", "hubert"], default="whisper")
    fit.add_argument("--layer", type=int, default=None, help="hidden-state index (default: Whisper two-thirds deep, 4 of whisper-base's 6; HuBERT the middle)")
    fit.add_argument("--num-units", type=int, default=500, help="K (500 or 1000 in the references)")
    fit.add_argument("--input", nargs="+", required=True, help="JSONL files, audio dirs or audio files")
    fit.add_argument("--output", required=True, help="directory for kmeans.safetensors + kmeans.json")
    fit.add_argument("--max-frames", type=int, default=None, help="encode clips in a seeded random order until this many frames (a sample of all of them)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the clip sample and of k-means")
    add_device_arguments(fit, dtype=False)
    for name, help_ in (("annotate", "add units/durations to gpt turns with audio"),
                        ("manifest", "vocoder training manifest {id, audio, units, durations}")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--kmeans", required=True, help="directory written by `fit`")
        p.add_argument("--encoder", default=None, help="override the encoder id/path stored in kmeans.json")
        p.add_argument("--input", nargs="+" if name == "manifest" else None, required=True)
        p.add_argument("--output", required=True)
        add_device_arguments(p, dtype=False)
        sharding.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from llasm.speech.units import (
        UnitExtractor,
        annotate_conversations,
        build_manifest,
        collect_audio,
        fit_unit_extractor,
        load_feature_encoder,
    )

    try:
        if args.command == "fit":
            features = load_feature_encoder(args.encoder, args.encoder_type, args.layer, args.device)
            rejects: list[dict] = []
            audios = (path for _, path in collect_audio(args.input))
            extractor = fit_unit_extractor(features, audios, args.num_units, seed=args.seed,
                                           max_frames=args.max_frames, rejects=rejects)
            extractor.save(args.output)
            write_jsonl(Path(args.output) / "rejects.jsonl", rejects)
            logger.info("%s: K=%d on layer %d of %s (%d frames, %d rejected)", args.output, extractor.num_units,
                        extractor.meta["layer"], args.encoder, extractor.meta["num_frames"], len(rejects))
            return 0
        shard = sharding.from_args(args)
        if shard.is_done(args.output):
            logger.info("%s: already done", shard.path(args.output))
            return 0
        extractor = UnitExtractor.load(args.kmeans, device=args.device, encoder=args.encoder)
        if args.command == "annotate":
            records = annotate_conversations(extractor, args.input, args.output, shard)
        else:
            records = build_manifest(extractor, args.input, args.output, shard)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rejected = sharding.write(args.output, shard, records)
    logger.info("%s: %d rows, %d rejected (%s)", shard.path(args.output), len(records.items), len(records.rejects),
                rejected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
