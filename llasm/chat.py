"""`model.chat`: one call from messages (or an audio/text turn) to a reply."""

from __future__ import annotations

import torch


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


@torch.inference_mode()
def chat(model, messages=None, *, audio=None, text=None, max_new_tokens=128, speak=False, streamer=None, **generate_kwargs):
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
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("eos_token_id", sorted(processor.end_of_turn_ids))
    generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    if speak:
        generate_kwargs.update(return_dict_in_generate=True, output_hidden_states=True)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    sequences = output.sequences if speak else output
    reply_ids = sequences[0, inputs["input_ids"].shape[1]:]
    text = processor.decode(reply_ids, skip_special_tokens=True).strip()
    chain = getattr(processor, "chain_of_modality", False)
    if chain:
        from .processing import answer_text

        text = answer_text(text)
    if not speak:
        return text
    from .unit_head import answer_hidden_states, speak as speak_units

    hidden = answer_hidden_states(output, sorted(processor.end_of_turn_ids))  # (n, D), one per reply token
    if chain:  # speak only the answer: the tokens after the "[ta]" marker
        hidden = hidden[_answer_start(processor, reply_ids):]
    return text, speak_units(model, hidden, model.vocoder)


def _answer_start(processor, reply_ids) -> int:
    """Index of the first reply token after ``[ta]`` (0 when the reply has no marker)."""
    from .processing import COM_ANSWER

    for end in range(1, len(reply_ids) + 1):
        if COM_ANSWER in processor.decode(reply_ids[:end], skip_special_tokens=True):
            return end
    return 0
