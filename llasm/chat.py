"""`model.chat`: one call from messages (or an audio/text turn) to a reply."""

from __future__ import annotations

import threading
from typing import Iterator

import torch
from transformers import TextIteratorStreamer

from llasm.configuration import audio_token_lengths
from llasm.device import to_device
from llasm.processing import COM_ANSWER, PromptTooLongError, answer_text
from llasm.unit_head import PhonemeUnitStreamer, UnitStreamer, answer_hidden_states, speak_text
from llasm.unit_head import speak as speak_units


class ReplyStream:
    """``model.chat(messages, ...)`` run in a worker thread, its reply text yielded piece by piece.

    Iterate to get the text as it is generated; afterwards :attr:`result` holds what ``model.chat``
    returned (a string, or ``(text, waveform)`` with ``speak=True``) and :attr:`error` the exception it
    raised (``None`` on success; the stream then ends early, it never hangs). ``lock`` is held around
    the generation, so one model serves one request at a time. Used by ``llasm chat`` and ``llasm serve``.
    """

    def __init__(self, model, messages: list[dict], *, max_new_tokens: int = 128, lock: threading.Lock | None = None,
                 **chat_kwargs):
        self.model, self.messages, self.max_new_tokens = model, messages, max_new_tokens
        self.lock, self.chat_kwargs = lock, chat_kwargs
        self.result = None
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        streamer = TextIteratorStreamer(self.model.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)

        def run():
            try:
                if self.lock is not None:
                    self.lock.acquire()
                try:
                    self.result = self.model.chat(self.messages, max_new_tokens=self.max_new_tokens, streamer=streamer,
                                                  **self.chat_kwargs)
                finally:
                    if self.lock is not None:
                        self.lock.release()
            except BaseException as err:  # noqa: BLE001 - handed to the caller; end the stream so it stops waiting
                self.error = err
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()


def user_turn(audio=None, text=None) -> dict:
    """A user message with an optional audio part followed by an optional text part."""
    content = []
    if audio is not None:
        content.append({"type": "audio", "audio": audio})
    if text:
        content.append({"type": "text", "text": text})
    if not content:
        raise ValueError("chat needs messages, audio or text")
    return {"role": "user", "content": content}


class PromptCache:
    """The KV cache of the last conversation :func:`chat` ran, reused for the part the next one shares.

    A multi-turn chat re-sends its history every turn; with ``chat(..., cache=PromptCache())`` only
    the tokens after the longest shared prefix (usually the reply just given and the new turn) run
    through the LLM, and earlier audio is not encoded again. Audio matches by its mel features, not
    by its placeholder ids. Bind one cache to one model and drop it if the weights change.
    """

    def __init__(self):
        self.ids: list[int] = []  # the tokens whose keys/values `past` holds
        self.chunks: list[torch.Tensor] = []  # mel of each audio chunk among them, in order
        self.past = None

    def clear(self) -> None:
        """Forget everything (the next call runs its whole prompt)."""
        self.ids, self.chunks, self.past = [], [], None

    def split(self, model, inputs: dict) -> tuple[dict, int]:
        """Crop the cache to what ``inputs`` shares with it; returns the generate inputs (audio
        chunks only for the part not cached) and the number of cached tokens."""
        ids = inputs["input_ids"][0].tolist()
        n = 0
        for a, b in zip(ids, self.ids[: len(ids) - 1]):  # at least one token left to run
            if a != b:
                break
            n += 1
        chunks = _chunks(inputs)
        frames = [c.shape[-1] for c in chunks]
        starts = [i for i, t in enumerate(ids) if t == model.config.audio_patch_token_id]
        first, kept = 0, 0  # first patch position of each chunk; chunks wholly inside the prefix
        for i, length in enumerate(audio_token_lengths(frames, model.config) if chunks else []):
            position = starts[first]
            same = i < len(self.chunks) and torch.equal(chunks[i], self.chunks[i])
            if position >= n:
                break
            if not same or starts[first + length - 1] >= n:  # a different or cut-off chunk: recompute from it
                n = position
                break
            first, kept = first + length, i + 1
        if self.past is None or n == 0:
            n = 0
            self.past = None
        elif self.past.get_seq_length() > n:
            self.past.crop(n - self.past.get_seq_length())  # a negative count: tokens to drop from the end
        run = dict(inputs)
        if chunks:
            run.pop("input_features"), run.pop("feature_attention_mask")
            if kept < len(chunks):
                run["input_features"] = inputs["input_features"][kept:]
                run["feature_attention_mask"] = inputs["feature_attention_mask"][kept:]
        if self.past is not None:
            run["past_key_values"] = self.past
        self.chunks = chunks
        return run, n

    def update(self, output) -> None:
        """Keep the cache ``generate`` returned: the prompt and every reply token but the last."""
        self.past = output.past_key_values
        self.ids = output.sequences[0, : self.past.get_seq_length()].tolist()


def _chunks(inputs: dict) -> list[torch.Tensor]:
    """Each audio chunk's mel without padding: ``(n_mels, frames)``."""
    if "input_features" not in inputs:
        return []
    frames = inputs["feature_attention_mask"].sum(-1).tolist()
    return [f[:, : int(n)] for f, n in zip(inputs["input_features"], frames)]


@torch.inference_mode()
def chat(model, messages=None, *, audio=None, text=None, max_new_tokens=128, speak=False, streamer=None,
         cache: PromptCache | None = None, **generate_kwargs):
    processor = model.processor
    if processor is None:
        raise ValueError("model.chat needs model.processor (load with from_pretrained or build_model)")
    if speak and (getattr(model, "unit_head", None) is None or getattr(model, "vocoder", None) is None):
        raise ValueError("speak=True needs a model with a unit head (stage 3) and a vocoder (model.set_vocoder); "
                         "this model lacks " + ("a unit head" if getattr(model, "unit_head", None) is None else "a vocoder"))
    if messages is None:
        messages = [user_turn(audio, text)]
    elif audio is not None or text:
        messages = list(messages) + [user_turn(audio, text)]
    inputs = to_device(processor.apply_chat_template(messages, add_generation_prompt=True), model.device)
    max_new_tokens = reply_room(processor, inputs["input_ids"].shape[1], max_new_tokens)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("eos_token_id", sorted(processor.end_of_turn_ids))
    generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    reads_text = speak and model.unit_head.config.input == "phonemes"  # the head speaks the reply's text
    if speak and not reads_text:
        generate_kwargs.update(return_dict_in_generate=True, output_hidden_states=True)
    run = inputs
    if cache is not None:
        run, _ = cache.split(model, inputs)
        generate_kwargs["return_dict_in_generate"] = True
    try:
        output = model.generate(**run, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    except BaseException:
        if cache is not None:  # its keys and values may be cropped or half extended: trust none of them
            cache.clear()
        raise
    if cache is not None:
        cache.update(output)
    sequences = output.sequences if generate_kwargs.get("return_dict_in_generate") else output
    reply_ids = sequences[0, inputs["input_ids"].shape[1]:]
    text = processor.decode(reply_ids, skip_special_tokens=True).strip()
    chain = getattr(processor, "chain_of_modality", False)
    if chain:
        text = answer_text(text)
    if not speak:
        return text
    if reads_text:
        return text, speak_text(model, text, model.vocoder)
    head = model.unit_head.config
    hidden = answer_hidden_states(output, sorted(processor.end_of_turn_ids), state=head.state,  # a reply token each
                                  embed=model.language_model.get_input_embeddings() if head.text_embeddings else None)
    if chain:  # speak only the answer: the tokens after the "[ta]" marker
        hidden = hidden[_answer_start(processor, reply_ids):]
    return text, speak_units(model, hidden, model.vocoder)


def reply_room(processor, prompt_tokens: int, max_new_tokens: int) -> int:
    """``max_new_tokens`` cut to the positions the language model has left after the prompt
    (``processor.max_positions``); raises :class:`~llasm.processing.PromptTooLongError` when none are left."""
    limit = getattr(processor, "max_positions", None)
    if not limit:
        return max_new_tokens
    if prompt_tokens >= limit:
        raise PromptTooLongError(f"prompt of {prompt_tokens} tokens fills the language model's {limit} positions "
                                 "(text_config.max_position_embeddings): no room for a reply; shorten the conversation")
    return min(max_new_tokens, limit - prompt_tokens)


@torch.inference_mode()
def chat_batch(model, conversations: list[list[dict]], max_new_tokens: int | list[int] = 128, processor=None,
               **generate_kwargs) -> list[str]:
    """Replies to several conversations (HF-style messages each) in one left-padded ``generate`` call.

    Greedy by default, so each reply is the one :func:`chat` gives for its conversation alone, up
    to the floating-point effects of padding. ``max_new_tokens`` may give one limit per conversation
    (the batch runs to the largest; greedy decoding is causal, so cutting a row's reply at its own
    limit gives what a call with that limit gives). Used where many prompts wait: evaluation and the
    ``self_reply`` teachers. ``synced_gpus=True`` (ZeRO-3) keeps stepping until every rank is done.
    ``processor`` defaults to ``model.processor``.
    """
    processor = processor or model.processor
    if processor is None:
        raise ValueError("chat_batch needs model.processor (load with from_pretrained or build_model)")
    if not conversations:
        return []
    inputs = processor.apply_chat_template([list(c) for c in conversations], add_generation_prompt=True,
                                           padding_side="left")
    inputs = to_device(inputs, model.device)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("eos_token_id", sorted(processor.end_of_turn_ids))
    generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    limits = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(conversations)
    limits = [reply_room(processor, inputs["input_ids"].shape[1], n) for n in limits]
    output = model.generate(**inputs, max_new_tokens=max(limits), **generate_kwargs)  # (B, L + new)
    new = output[:, inputs["input_ids"].shape[1]:]
    replies = [processor.decode(row[:limit], skip_special_tokens=True).strip() for row, limit in zip(new, limits)]
    return [answer_text(r) for r in replies] if getattr(processor, "chain_of_modality", False) else replies


def _answer_start(processor, reply_ids) -> int:
    """Index of the first reply token after ``[ta]`` (0 when the reply has no marker)."""
    for end in range(1, len(reply_ids) + 1):
        if COM_ANSWER in processor.decode(reply_ids[:end], skip_special_tokens=True):
            return end
    return 0


def chat_stream(model, messages=None, *, audio=None, text=None, max_new_tokens=128, chunk_units=40,
                first_chunk_units=None, first_chunk_context=0):
    """Speak while generating: yields ``("text", piece)`` and ``("audio", 16 kHz float32 chunk)`` events.

    Greedy decoding with the KV cache. A token's text is yielded as soon as it is chosen; its last
    hidden state — with ``unit_head.state: input`` from the next forward pass (which chooses the next
    token), with ``output`` from the pass that chose it (one LLM step sooner) — goes to the unit head
    (:class:`llasm.unit_head.UnitStreamer`: causal, so decided units are final) — or, for a head with
    ``unit_head.input: phonemes``, the reply's text goes to it a word at a time
    (:class:`llasm.unit_head.PhonemeUnitStreamer`) — and the units go to the token2wav's streaming synthesis (``model.vocoder.streamer``: 
    :class:`llasm.speech.token2wav.MelStream` or :class:`llasm.speech.vocoder.VocoderStream`):
    a first chunk after ``first_chunk_units`` units (default 10), then every ``chunk_units``. The
    first chunk is vocoded with ``first_chunk_context`` frames of right context (default 0, for the
    earliest sound, and then a head on phonemes decodes the first chunk's units without its look-ahead
    too, so the audio can differ from ``chat``'s — a few per cent of its length with a trained head; ``None``:
    the full receptive field, so the stream equals ``chat(speak=True)`` — sample for sample with a
    convolutional vocoder; with Griffin-Lim, whose phase is global, the same length and close).
    The token2wav runs in line: a chunk costs less than an LLM step on a CPU (``bench/speech_latency.py``).
    """
    if getattr(model, "unit_head", None) is None or getattr(model, "vocoder", None) is None:
        raise ValueError("chat_stream needs a unit head (stage 3) and a vocoder (model.set_vocoder)")
    voice = model.vocoder.streamer(chunk_units=chunk_units, first_chunk_units=first_chunk_units,
                                   first_chunk_context=first_chunk_context)
    # an early first chunk: a head on phonemes decodes its units without waiting for the look-ahead too
    eager = 0 if first_chunk_context is None else getattr(voice, "first_chunk_units", 0)
    for kind, value in _decode_speaking(model, messages or [user_turn(audio, text)], max_new_tokens, eager):
        if kind == "text":
            yield "text", value
        else:
            for chunk in voice.push(value):
                yield "audio", chunk
    for chunk in voice.finish():
        yield "audio", chunk


@torch.inference_mode()
def _decode_speaking(model, messages, max_new_tokens, eager_units=0):
    """Greedy decoding that yields ``("text", new text)`` when a token is chosen and ``("units", new
    units)`` once its hidden state is known (at once for ``state: output``, one pass later for ``input``;
    a head on phonemes: :class:`PhonemeUnitStreamer`, ``eager_units`` as there)."""
    processor = model.processor
    inputs = to_device(processor.apply_chat_template(messages, add_generation_prompt=True), model.device)
    max_new_tokens = reply_room(processor, inputs["input_ids"].shape[1], max_new_tokens)
    ends = processor.end_of_turn_ids
    reads_text = model.unit_head.config.input == "phonemes"  # units from the reply's text, not its states
    producing = model.unit_head.config.state == "output" and not reads_text  # units from the state that chose the token
    out = model(**inputs, use_cache=True, output_hidden_states=producing, logits_to_keep=1)
    past, mask = out.past_key_values, inputs["attention_mask"]
    token = int(out.logits[0, -1].argmax())
    streamer = PhonemeUnitStreamer(model.unit_head, eager_units=eager_units) if reads_text else UnitStreamer(model.unit_head)
    reply, shown = [], 0
    for _ in range(max_new_tokens):
        if token in ends:
            break
        reply.append(token)
        decoded = processor.decode(reply, skip_special_tokens=True)
        if not decoded.endswith("\ufffd") and len(decoded) > shown:  # hold back a character still missing bytes
            yield "text", decoded[shown:]
            if reads_text:
                yield "units", streamer.push(decoded[shown:])
            shown = len(decoded)
        if producing:
            yield "units", streamer.push(model.unit_head_inputs(  # the state that produced `token`
                out.hidden_states[-1][0, -1:], torch.tensor([token])))
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        out = model(input_ids=torch.tensor([[token]], device=model.device), attention_mask=mask,
                    past_key_values=past, use_cache=True, output_hidden_states=not reads_text, logits_to_keep=1)
        if not producing and not reads_text:
            yield "units", streamer.push(model.unit_head_inputs(  # the state where `token` is the input
                out.hidden_states[-1][0, -1:], torch.tensor([token])))
        past, token = out.past_key_values, int(out.logits[0, -1].argmax())
    yield "units", streamer.finish()
