"""`llasm chat`: multi-turn chat with a checkpoint; audio and text turns mixed, tokens streamed.

    llasm chat --model DIR --audio question.wav            # one spoken question, then exit
    llasm chat --model DIR                                 # interactive; type text, or
        /audio path.wav [text]                             #   a spoken turn (+ optional text)
        /reset                                             #   forget the conversation
        /quit
"""

from __future__ import annotations

import argparse
import shlex
import sys

from llasm.audio import AudioError, save_audio
from llasm.chat import PromptCache, ReplyStream, user_turn
from llasm.modeling import LlasmForConditionalGeneration


def _reply(model, messages, max_new_tokens: int, out=sys.stdout, cache=None) -> str:
    """Stream the reply to ``out`` as it is generated; returns its text (raises what generation raised)."""
    stream = ReplyStream(model, messages, max_new_tokens=max_new_tokens, cache=cache)
    for piece in stream:
        out.write(piece)
        out.flush()
    if stream.error is not None:
        raise stream.error
    out.write("\n")
    return stream.result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--audio", help="a spoken user turn (wav/flac/ogg/mp3)")
    parser.add_argument("--text", help="a typed user turn (after the audio when both are given)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--speak", metavar="OUT.wav", help="also speak the reply into this file (unit head + vocoder)")
    parser.add_argument("--vocoder", help="unit HiFi-GAN directory for --speak (train/train_vocoder.py output)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)


    model = LlasmForConditionalGeneration.from_pretrained(args.model, dtype=args.dtype)
    if args.vocoder:
        model.set_vocoder(args.vocoder)
    messages: list[dict] = []
    if args.audio or args.text:
        messages.append(user_turn(args.audio, args.text))
        try:
            if args.speak:
                text, wav = model.chat(messages, max_new_tokens=args.max_new_tokens, speak=True)
                print(text)
                save_audio(args.speak, wav)
                print(f"spoken reply: {args.speak} ({len(wav) / 16000:.1f} s)", file=sys.stderr)
            else:
                _reply(model, messages, args.max_new_tokens)
        except (AudioError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    print("llasm chat — type text, '/audio FILE [text]', '/reset' or '/quit'", file=sys.stderr)
    cache = PromptCache()  # each turn runs only what is new since the last (earlier audio is not re-encoded)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            messages = []
            continue
        if line.startswith("/audio"):
            parts = shlex.split(line)[1:]
            if not parts:
                print("usage: /audio FILE [text]", file=sys.stderr)
                continue
            turn = user_turn(parts[0], " ".join(parts[1:]) or None)
        else:
            turn = user_turn(None, line)
        try:
            text = _reply(model, messages + [turn], args.max_new_tokens, cache=cache)
        except AudioError as err:  # unusable audio: say why, keep the conversation
            print(f"error: {err}", file=sys.stderr)
            continue
        messages += [turn, {"role": "assistant", "content": text}]
    return 0
