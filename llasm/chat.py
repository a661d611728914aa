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
    text = processor.decode(sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    if not speak:
        return text
    from .unit_head import answer_hidden_states, speak as speak_units

    return text, speak_units(model, answer_hidden_states(output, sorted(processor.end_of_turn_ids)), model.vocoder)
