"""`llasm chat`: multi-turn chat with a checkpoint; audio and text turns mixed, tokens streamed.

    llasm chat --model DIR                                 # type at the "you>" prompt:
        some text                                          #   a typed turn
        /audio path.wav [text]                             #   a spoken turn (+ optional text)
        /reset                                             #   forget the conversation
        /help, /quit                                       #   (or Ctrl-D)
    llasm chat --model DIR --audio question.wav [--text "..."]   # start with this turn, then go on
    llasm chat --model DIR --audio question.wav --once           # answer it and exit (scripts)

At a terminal the "you>" prompt and "llasm>" labels go to stderr; piped input gets the replies only,
one per line on stdout. --model takes final/ or any checkpoint-N of a training run.
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
from pathlib import Path

from llasm.audio import AudioError, save_audio

# a command module: the model core (torch, transformers) is imported once the arguments are read, so
# `llasm chat --help` answers at once (tests/test_layout.py lists the command modules)
from llasm.device import add_device_arguments, describe

COMMANDS = "type text, '/audio FILE [text]', '/reset', '/help' or '/quit'"


def _reply(model, messages, max_new_tokens: int, out=None, cache=None) -> str:
    """Stream the reply to ``out`` (default: the current ``sys.stdout``) as it is generated; returns its
    text (raises what generation raised)."""
    from llasm.chat import ReplyStream

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


def _say(text: str, interactive: bool) -> None:
    """A prompt or speaker label, at a terminal only: on stderr, so stdout holds only the replies."""
    if interactive:
        sys.stderr.write(text)
        sys.stderr.flush()


def _read_line(interactive: bool) -> str | None:
    """The next line of input (``None`` at the end, or when there is no readable stdin)."""
    _say("you> ", interactive)
    try:
        line = sys.stdin.readline()
    except (OSError, ValueError):  # stdin closed or not readable (a test runner, a daemon)
        return None
    return line if line else None


def _is_terminal(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):  # a closed or replaced stream
        return False


def build_parser() -> argparse.ArgumentParser:
    summary, usage = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(prog="llasm chat", description=summary, epilog=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (final/ or checkpoint-N) or hub id")
    parser.add_argument("--audio", help="start with this spoken user turn (wav/flac/ogg/mp3)")
    parser.add_argument("--text", help="start with this typed user turn (after the audio when both are given)")
    parser.add_argument("--once", action="store_true", help="answer the --audio/--text turn and exit")
    parser.add_argument("--audio-tower", default=None, help="where the checkpoint's base Whisper is, when not where "
                        "it was trained (a copied checkpoint)")
    parser.add_argument("--language-model", default=None, help="where the checkpoint's base LLM is, likewise")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--speak", metavar="OUT.wav",
                        help="also speak the reply to --audio/--text into this file (unit head + vocoder), then exit")
    parser.add_argument("--vocoder", help="token2wav directory for --speak: train/train_token2wav.py (units -> "
                        "durations + a decoder's or selected mel -> a mel vocoder) or train/train_vocoder.py "
                        "(unit HiFi-GAN) output")
    add_device_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.speak and not (args.text or args.audio):
        parser.error("--speak speaks the reply to one turn: give it --text and/or --audio")
    if args.speak and not args.vocoder:
        parser.error("--speak needs --vocoder DIR (a token2wav directory: train/train_token2wav.py or "
                     "train/train_vocoder.py output, e.g. make speech-demo's outputs/speech-demo/token2wav)")
    if args.vocoder and not any((Path(args.vocoder) / name).is_file() for name in ("token2wav.json", "vocoder_config.json")):
        parser.error(f"--vocoder {args.vocoder}: not a token2wav directory (no token2wav.json and no vocoder_config.json)")
    from llasm.builder import load_model
    from llasm.chat import PromptCache, user_turn

    try:  # placed on --device in --dtype (default: CUDA and bf16 when present)
        model, _ = load_model(args.model, dtype=args.dtype, device=args.device, audio_tower=args.audio_tower,
                              language_model=args.language_model)
    except (OSError, ValueError) as err:  # not a checkpoint, its bases are not where it says, no such device
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"llasm chat: {describe(model.device, model.dtype)}", file=sys.stderr)
    if args.vocoder:
        model.set_vocoder(args.vocoder)
    interactive = _is_terminal(sys.stdin)
    messages: list[dict] = []
    cache = PromptCache()  # each turn runs only what is new since the last (earlier audio is not re-encoded)
    if args.audio or args.text:
        turn = user_turn(args.audio, args.text)
        _say("you> " + " ".join(p for p in (f"[audio {args.audio}]" if args.audio else "", args.text or "") if p) + "\n",
             interactive)
        try:
            if args.speak:
                text, wav = model.chat([turn], max_new_tokens=args.max_new_tokens, speak=True)
                print(text)
                save_audio(args.speak, wav)
                print(f"spoken reply: {args.speak} ({len(wav) / 16000:.1f} s)", file=sys.stderr)
                return 0
            _say("llasm> ", interactive)
            text = _reply(model, [turn], args.max_new_tokens, cache=cache)
        except (AudioError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        if args.once:
            return 0
        messages += [turn, {"role": "assistant", "content": text}]
    _say(f"llasm chat: {COMMANDS}\n", interactive)
    while (line := _read_line(interactive)) is not None:
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
            _say("llasm> ", interactive)
            text = _reply(model, messages + [turn], args.max_new_tokens, cache=cache)
        except Exception as err:  # noqa: BLE001 - one bad turn (file, command, too long) must not end the session
            print(f"error: {err}" if isinstance(err, (AudioError, ValueError)) else f"error: {type(err).__name__}: {err}",
                  file=sys.stderr)
            continue
        messages += [turn, {"role": "assistant", "content": text}]
    return 0
