"""Training objectives beyond plain cross-entropy (``objective.type`` in a stage YAML).

``self_reply`` (Fathullah et al., "Towards General-Purpose Speech Abilities for LLMs Using
Unpaired Data"): the target for a spoken prompt is the frozen LLM's own reply to its transcript,
so the model learns to treat speech like the text it stands for. The replies are made once, before
training, by :func:`precompute_self_replies`.

``kl`` (Ultravox's knowledge distillation): cross-entropy plus
``KL(p_LLM(. | transcript) || p_model(. | speech))`` over the assistant tokens, the teacher being
the frozen LLM reading the transcript as text.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE_INDEX = -100


def transcript_of(row: dict) -> str | None:
    """A row's transcript: its ``transcript`` field, or the answer of a one-audio ASR row."""
    if row.get("transcript"):
        return row["transcript"]
    answers = [t["value"] for t in row.get("conversations", []) if t["from"] in ("gpt", "assistant")]
    if len(row.get("audios", [])) == 1 and len(answers) == 1:
        return answers[0]
    return None


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


def teacher_row(row: dict) -> dict | None:
    """The row with its (single) ``<speech>`` replaced by the transcript, for the text-only teacher."""
    transcript = transcript_of(row)
    if not transcript or len(row.get("audios", [])) != 1:
        return None
    turns = [{"from": t["from"], "value": t["value"].replace("<speech>", transcript)} for t in row["conversations"]]
    return {k: v for k, v in row.items() if k in ("id", "system")} | {"audios": [], "conversations": turns}


def answer_positions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits that predict supervised tokens: ``(B, L, V) -> (N_answer, V)``."""
    keep = labels[:, 1:] != IGNORE_INDEX  # (B, L-1): position t predicts token t+1
    return logits[:, :-1][keep]


def kl_loss(student_logits, labels, teacher_logits, teacher_labels, temperature: float = 1.0) -> torch.Tensor:
    """Mean over answer tokens of ``KL(teacher || student)`` at ``temperature`` (scaled by T²)."""
    student = answer_positions(student_logits, labels).float() / temperature  # (N, V)
    teacher = answer_positions(teacher_logits, teacher_labels).float() / temperature
    if student.shape != teacher.shape:
        raise ValueError(f"kl objective: {student.shape[0]} answer tokens with speech but {teacher.shape[0]} "
                         "with the transcript; the assistant turns must be identical")
    log_teacher = F.log_softmax(teacher, -1)
    log_student = F.log_softmax(student, -1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)  # (N,)
    return kl.mean() * temperature**2
