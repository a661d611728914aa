"""`llasm chat`: multi-turn chat with a checkpoint; audio and text turns mixed, tokens streamed.

    llasm chat --model DIR --audio question.wav            # one spoken question, then exit
    llasm chat --model DIR                                 # interactive; type text, or
        /audio path.wav [text]                             #   a spoken turn (+ optional text)
        /reset                                             #   forget the conversation
        /help, /quit

In ``/audio`` the first word is the file and the rest of the line is the text, verbatim
(``/audio Bob's_question.wav what's in this recording?``). A path with spaces is quoted
(``"my clip.wav"`` or ``'my clip.wav'``), backslash-escaped (``my\\ clip.wav``) or typed as is when
that file exists. A bad line or an unusable file prints an error; the conversation goes on.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from llasm.audio import AudioError, save_audio
from llasm.chat import PromptCache, ReplyStream, user_turn
from llasm.modeling import LlasmForConditionalGeneration

COMMANDS = "type text, '/audio FILE [text]', '/reset', '/help' or '/quit'"


def _reply(model, messages, max_new_tokens: int, out=None, cache=None) -> str:
    """Stream the reply to ``out`` (default: the current ``sys.stdout``) as it is generated; returns its
    text (raises what generation raised)."""
    out = out or sys.stdout
    stream = ReplyStream(model, messages, max_new_tokens=max_new_tokens, cache=cache)
    for piece in stream:
        out.write(piece)
        out.flush()
    if stream.error is not None:
        raise stream.error
    out.write("\n")
    return stream.result


def parse_audio_command(line: str) -> tuple[str, str | None]:
    """``/audio FILE [text]`` -> ``(path, text or None)``: the first word is the path, the rest of the line
    the text, verbatim. Raises ``ValueError`` (with the usage) when no path is given."""
    rest = line[len("/audio"):].strip()
    if not rest:
        raise ValueError("usage: /audio FILE [text]")
    end = rest.find(rest[0], 1) if rest[0] in "\"'" else -1
    if end > 0:  # a quoted name (an unclosed quote is part of the name: 'tis.wav)
        path, text = rest[1:end], rest[end + 1:]
    else:
        words = list(re.finditer(r"(?:\\\s|\S)+", rest))  # words; a backslash-escaped space stays inside one
        path, cut = words[0].group(0).replace("\\ ", " "), words[0].end()
        for word in words[1:]:  # an unquoted name with spaces, when that file exists
            if os.path.isfile(rest[: word.end()]):
                path, cut = rest[: word.end()], word.end()
        text = rest[cut:]
    return path, text.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--audio", help="a spoken user turn (wav/flac/ogg/mp3)")
    parser.add_argument("--text", help="a typed user turn (after the audio when both are given)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--speak", metavar="OUT.wav", help="also speak the reply into this file (unit head + vocoder)")
    parser.add_argument("--vocoder", help="token2wav directory for --speak: train/train_token2wav.py (units -> mel -> MB-MelGAN) or train/train_vocoder.py (unit HiFi-GAN) output")
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
    print(f"llasm chat — {COMMANDS}", file=sys.stderr)
    cache = PromptCache()  # each turn runs only what is new since the last (earlier audio is not re-encoded)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        command = line.split(maxsplit=1)[0]
        if command in ("/quit", "/exit"):
            break
        if command == "/reset":
            messages = []
            continue
        if command in ("/help", "/?"):
            print(COMMANDS, file=sys.stderr)
            continue
        try:
            if command == "/audio":
                turn = user_turn(*parse_audio_command(line))
            elif command.startswith("/") and len(command) > 1 and command[1:].isalpha():
                raise ValueError(f"unknown command {command}; {COMMANDS}")
            else:
                turn = user_turn(None, line)
            text = _reply(model, messages + [turn], args.max_new_tokens, cache=cache)
        except Exception as err:  # noqa: BLE001 - one bad turn (file, command, too long) must not end the session
            print(f"error: {err}" if isinstance(err, (AudioError, ValueError)) else f"error: {type(err).__name__}: {err}",
                  file=sys.stderr)
            continue
        messages += [turn, {"role": "assistant", "content": text}]
    return 0
