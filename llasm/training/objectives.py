"""Training objectives beyond plain cross-entropy (``objective.type`` in a stage YAML).

``self_reply`` (Fathullah et al., "Towards General-Purpose Speech Abilities for LLMs Using
Unpaired Data"): the target for a spoken prompt is the frozen LLM's own reply to its transcript,
so the model learns to treat speech like the text it stands for. The replies are made once, before
training, by :func:`precompute_self_replies`.

``kl`` (Ultravox's knowledge distillation): cross-entropy plus
``KL(p_LLM(. | transcript) || p_model(. | speech))`` over the assistant tokens, the teacher being
the frozen LLM reading the transcript as text: its rows come from :func:`llasm.data.dataset.teacher_row`, the loss is
:func:`llasm.training.losses.kl_loss`.
"""

from __future__ import annotations

import torch

from llasm.data.dataset import transcript_of


@torch.no_grad()
def precompute_self_replies(rows: list[dict], model, processor, max_new_tokens: int = 128) -> list[dict]:
    """Rows ``{<speech> -> the frozen LLM's reply to the transcript}``; rows without transcript dropped.

    Each new row keeps ``audios``, ``id``, ``lang`` and gains ``transcript`` (used by ``kl``).
    """
    was_training = model.training
    model.eval()
    out = []
    for row in rows:
        transcript = transcript_of(row)
        if not transcript or len(row.get("audios", [])) != 1:
            continue
        messages = [{"role": "user", "content": transcript}]
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": row["system"]})
        reply = model.chat(messages, max_new_tokens=max_new_tokens) or "."
        new = {k: v for k, v in row.items() if k in ("id", "lang", "audios", "system")}
        new.update(transcript=transcript,
                   conversations=[{"from": "human", "value": "<speech>"}, {"from": "gpt", "value": reply}])
        out.append(new)
    model.train(was_training)
    return out
