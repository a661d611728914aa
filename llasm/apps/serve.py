"""`llasm serve`: a local web page to talk to a checkpoint (Gradio).

    llasm serve --model DIR [--vocoder VOC_DIR] [--host 127.0.0.1] [--port 7860] [--max-upload-mb 20]

Upload or record a spoken question, type text (or both), and the reply streams into a multi-turn
chat; a model with a unit head (stage 3) and a ``--vocoder`` also speaks its reply. The page binds to 127.0.0.1 unless told
otherwise (it has no authentication), uploads are capped, and unusable audio is answered with the
reason (``file: reason``) in the chat instead of a stack trace. Each turn runs only what the
conversation adds: earlier turns' keys and values are kept in a :class:`llasm.chat.PromptCache`.

The page logic lives in plain functions (:func:`respond`, :func:`to_chatbot`,
:func:`model_messages`) so it is tested without a browser; :func:`build_app` only wires them.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from llasm.audio import AudioError

# a command module: the model core (torch, transformers) is imported where it is used, so
# `llasm serve --help` answers at once (tests/test_layout.py lists the command modules)
from llasm.device import add_device_arguments, describe

# The conversation ("history") is a list of llasm/HF-style messages, the model's own view:
#   {"role": "user", "content": [{"type": "audio", "audio": path}, {"type": "text", "text": "..."}]}
#   {"role": "assistant", "content": "...", ["speech": (16000, wav)], ["error": True]}
# Display-only keys: "error" marks a turn that failed (it and its user turn are not sent to the
# model again); "speech" holds a spoken reply. Both are stripped by model_messages().
ERROR_PREFIX = "⚠️ "
SPEECH_RATE = 16_000


def user_message(audio: Any = None, text: str | None = None) -> dict | None:
    """The user turn for an audio part and/or a text part; None when both are empty."""
    text = (text or "").strip()
    content = []
    if audio is not None and not (isinstance(audio, str) and not audio):
        content.append({"type": "audio", "audio": audio})
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content} if content else None


def model_messages(history: list[dict]) -> list[dict]:
    """The messages sent to the model: failed exchanges dropped, display-only keys removed."""
    out: list[dict] = []
    for msg in history:
        if msg.get("error"):
            if out and out[-1]["role"] == "user":
                out.pop()  # the turn that failed is not part of the conversation
            continue
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def to_chatbot(history: list[dict]) -> list[dict]:
    """The history as ``gr.Chatbot`` messages (audio parts shown as players, text as markdown)."""
    shown = []
    for msg in history:
        content = msg["content"]
        if isinstance(content, str):
            shown.append({"role": msg["role"], "content": content})
            continue
        parts: list[Any] = []
        for part in content:
            if part.get("type") == "audio":
                audio = part["audio"]
                parts.append({"path": str(audio)} if isinstance(audio, (str, os.PathLike)) else "🎤 (audio)")
            elif part.get("type") == "text":
                parts.append({"type": "text", "text": part["text"]})
        shown.append({"role": msg["role"], "content": parts})
    return shown


def last_speech(history: list[dict]):
    """The (rate, waveform) of the last assistant turn when it was spoken, else None."""
    for msg in reversed(history):
        if msg["role"] == "assistant":
            return msg.get("speech")
    return None


def _split_spoken(result) -> tuple[str, np.ndarray | None]:
    """``model.chat(speak=True)`` result -> (text, 16 kHz waveform or None); tolerant of its form."""
    if isinstance(result, str):
        return result, None
    if isinstance(result, dict):
        wav = next((result[k] for k in ("audio", "waveform", "speech", "wav") if result.get(k) is not None), None)
        return str(result.get("text", "")), wav
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return str(result[0]), result[1]
    text = getattr(result, "text", None)
    wav = getattr(result, "audio", None)
    if wav is None:
        wav = getattr(result, "waveform", None)
    return str(text if text is not None else result), wav


def _as_waveform(wav) -> np.ndarray | None:
    if wav is None:
        return None
    if hasattr(wav, "detach"):
        wav = wav.detach().cpu().float().numpy()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    return wav if wav.size else None


def can_speak(model) -> bool:
    return getattr(model, "unit_head", None) is not None and getattr(model, "vocoder", None) is not None


def respond(history: list[dict] | None, audio: Any, text: str | None, *, model, max_new_tokens: int = 256,
            speak: bool | None = None, lock: threading.Lock | None = None, cache=None) -> Iterator[list[dict]]:
    """Add the user turn and stream the reply: yields the updated history after every new piece.

    ``cache`` (a :class:`llasm.chat.PromptCache`) lets the model skip the part of the conversation
    it ran in the previous call; it is matched by content, so one cache can serve every visitor as
    long as ``lock`` keeps the calls apart (a different conversation just finds nothing to reuse).

    The last history holds the finished reply (with ``"speech": (16000, wav)`` when the model
    spoke). Unusable audio (``AudioError``) or any other model failure ends the exchange with an
    ``"error"`` assistant turn whose text says why; that exchange is not sent to the model again.
    """
    history = list(history or [])
    turn = user_message(audio, text)
    if turn is None:
        yield history
        return
    history.append(turn)
    reply: dict = {"role": "assistant", "content": ""}
    history.append(reply)
    yield list(history)  # a fresh list per update: earlier updates stay as they were

    speak = can_speak(model) if speak is None else speak
    kwargs = {"speak": True} if speak else {}
    if cache is not None:
        kwargs["cache"] = cache
    from llasm.chat import ReplyStream

    stream = ReplyStream(model, model_messages(history[:-1]), max_new_tokens=max_new_tokens, lock=lock, **kwargs)
    streamed = ""
    for piece in stream:
        streamed += piece
        history[-1] = {"role": "assistant", "content": streamed.lstrip()}
        yield list(history)

    if stream.error is not None:
        history[-1] = {"role": "assistant", "content": ERROR_PREFIX + describe_error(stream.error), "error": True}
        yield list(history)
        return
    text_out, wav = _split_spoken(stream.result)
    final: dict = {"role": "assistant", "content": text_out.strip() or streamed.strip()}
    wav = _as_waveform(wav)
    if wav is not None:
        final["speech"] = (SPEECH_RATE, wav)
    history[-1] = final
    yield list(history)


def describe_error(err: BaseException) -> str:
    """A one-line, user-facing reason (no stack trace)."""
    if isinstance(err, AudioError):
        return f"Unusable audio: {_short_paths(str(err))}"
    name = type(err).__name__
    return f"The model failed ({name}): {err}" if str(err) else f"The model failed ({name})"


def _short_paths(message: str) -> str:
    """Gradio stores uploads under long temporary paths; show only the file name."""
    head, sep, _ = message.partition(": ")
    if sep and os.sep in head:
        return message.replace(head, os.path.basename(head))
    return message


# -- the page -------------------------------------------------------------------------------
TITLE = "llasm — speech chat"
INTRO = ("Record or upload a spoken question (zh/en), and/or type text, then press **Send**. "
         "The conversation is remembered until **Clear**.")


def build_app(model, *, max_new_tokens: int = 256, title: str = TITLE):
    """The Gradio Blocks page for ``model`` (which has ``model.processor``)."""
    import gradio as gr

    from llasm.chat import PromptCache

    lock = threading.Lock()  # one generation at a time on the shared model
    cache = PromptCache()  # the last conversation's keys and values: the next turn of it runs only what is new
    speaks = can_speak(model)

    def submit(history, audio, text):
        for updated in respond(history, audio, text, model=model, max_new_tokens=max_new_tokens, lock=lock,
                               cache=cache):
            speech = last_speech(updated) if speaks else None
            yield updated, to_chatbot(updated), speech
        # inputs are cleared by the .then() below once the reply is complete

    def clear():
        return [], [], None, None, ""

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\n{INTRO}")
        history = gr.State([])
        chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="llasm-chat", buttons=["copy"],
                             feedback_options=None, placeholder="Ask something by voice or text.")
        speech = gr.Audio(label="Spoken reply", type="numpy", interactive=False, autoplay=True,
                          visible=speaks, elem_id="llasm-speech")
        with gr.Row():
            audio = gr.Audio(label="Spoken question", sources=["upload", "microphone"], type="filepath",
                             elem_id="llasm-audio", scale=1)
            with gr.Column(scale=1):
                text = gr.Textbox(label="Text (optional)", placeholder="Type a message…", lines=3,
                                  elem_id="llasm-text")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="llasm-send")
                    reset = gr.Button("Clear", elem_id="llasm-clear")
        status = "speaks its replies" if speaks else "text replies (no unit head + vocoder)"
        gr.Markdown(f"<small>Model: `{getattr(model, 'name_or_path', '') or type(model).__name__}` — "
                    f"{status}; up to {max_new_tokens} new tokens.</small>")

        for trigger in (send.click, text.submit):
            trigger(submit, [history, audio, text], [history, chatbot, speech]).then(
                lambda: (None, ""), None, [audio, text])
        reset.click(clear, None, [history, chatbot, speech, audio, text])
        chatbot.clear(lambda: ([], None), None, [history, speech])  # the chat's own trash button
    return app


def launch(app, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 20, **kwargs):
    """Start the server (blocking unless ``prevent_thread_lock=True``)."""
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024),
        show_error=False, footer_links=[], **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llasm serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (final/ or checkpoint-N) or hub id")
    parser.add_argument("--audio-tower", default=None, help="where the checkpoint's base Whisper is, when not where "
                        "it was trained (a copied checkpoint)")
    parser.add_argument("--language-model", default=None, help="where the checkpoint's base LLM is, likewise")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; the page has no login, bind wider with care)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted upload (MB)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    add_device_arguments(parser)
    parser.add_argument("--vocoder", default=None,
                        help="token2wav dir (train/train_token2wav.py or train/train_vocoder.py output): a model with a unit head speaks")
    args = parser.parse_args(argv)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from llasm.builder import load_model

    model, _ = load_model(args.model, dtype=args.dtype, device=args.device, audio_tower=args.audio_tower,
                          language_model=args.language_model)  # placed on --device, in eval mode
    print(f"llasm serve: {describe(model.device, model.dtype)}")
    if args.vocoder:
        model.set_vocoder(args.vocoder)
    elif getattr(model, "unit_head", None) is not None:
        print("note: the model has a unit head but no --vocoder was given: text replies only")
    app = build_app(model, max_new_tokens=args.max_new_tokens)
    launch(app, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
