"""The training losses, one function per ``objective.type``; :meth:`Trainer.loss` picks one.

``ce``: cross-entropy on the answer tokens, with the LM head run only where an answer token is
predicted, the unused tail cut, and a frozen LLM's shared prompt prefix computed once (all exact:
``train.fast_loss: false`` gives the plain HF loss and the same number).
``kl``: cross-entropy plus ``KL(p_LLM(. | transcript) || p_model(. | speech))`` (Ultravox).
``units``: CTC of the unit head on the LLM's answer states (LLaMA-Omni), optionally from a cache.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import DynamicCache

from llasm.processing import IGNORE_INDEX


def audio_ids(config, device) -> torch.Tensor:
    """The ``<au_start>``, ``<au_patch>`` and ``<au_end>`` ids as a tensor on ``device``."""
    return torch.tensor([config.audio_start_token_id, config.audio_patch_token_id, config.audio_end_token_id],
                        device=device)


def drop_unused_tail(inputs: dict, keep: int, config) -> None:
    """Positions after the last one that predicts a label (the final end token as input, padding)
    cannot change the loss under causal attention: cut them, unless audio sits there. Exact."""
    ids = inputs["input_ids"]
    if keep >= ids.shape[1] or torch.isin(ids[:, keep:], audio_ids(config, ids.device)).any():
        return
    for key in ("input_ids", "attention_mask", "position_ids"):  # packed rows: position_ids, no mask
        if inputs.get(key) is not None:
            inputs[key] = inputs[key][:, :keep]


class SharedPrefix:
    """A frozen LLM's keys and values for the tokens every row of a batch starts with (system prompt,
    template) before any audio: the same at every step, so computed once and reused as the KV cache."""

    MIN_TOKENS = 8  # shorter prefixes are not worth a cache

    def __init__(self):
        self.key: tuple | None = None  # the prefix token ids the cached keys/values belong to
        self.kv = None

    @torch.no_grad()
    def apply(self, model, inputs: dict, limit: int) -> int:
        """Move the shared prefix (at most ``limit`` tokens) of ``inputs["input_ids"]`` into
        ``inputs["past_key_values"]``; returns its length (0: nothing shared, ``inputs`` unchanged)."""
        ids = inputs["input_ids"]  # (B, L), right padded
        same = (ids == ids[:1]).all(0) & ~torch.isin(ids[0], audio_ids(model.config, ids.device))
        n = min(int(same.long().cumprod(0).sum()), limit)
        if n < self.MIN_TOKENS:
            return 0
        key = tuple(ids[0, :n].tolist())
        if self.key != key:  # one prefix per run in practice
            self.key, self.kv = key, model.language_model(input_ids=ids[:1, :n], use_cache=True).past_key_values
        cache = DynamicCache()
        for index, layer in enumerate(self.kv.layers):  # (1, H, n, d) -> (B, H, n, d), views
            cache.update(layer.keys.expand(len(ids), -1, -1, -1), layer.values.expand(len(ids), -1, -1, -1), index)
        inputs["input_ids"] = ids[:, n:]
        inputs["past_key_values"] = cache  # attention_mask keeps its full length: prefix + rest
        return n


def answer_ce(engine, model, inputs: dict, prefix: SharedPrefix | None, ids: list[str]) -> torch.Tensor:
    """Cross-entropy over the answer tokens, the LM head (a vocabulary-sized matmul) run only at the
    positions ``p`` whose next label is supervised, in any row of the batch. ``engine`` is the
    (possibly wrapped) model the gradients flow through; ``ids`` name the batch's items in errors."""
    labels = model.loss_labels(inputs.pop("labels"), inputs["input_ids"], inputs.get("attention_mask"))  # checked ids
    targets = labels[:, 1:]
    positions = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)  # (P,)
    if positions.numel() == 0:
        raise ValueError(f"batch {ids} has no supervised answer token (all labels are {IGNORE_INDEX})")
    drop_unused_tail(inputs, int(positions.max()) + 1, model.config)
    start = prefix.apply(model, inputs, int(positions.min())) if prefix is not None else 0
    logits = engine(**inputs, logits_to_keep=positions - start).logits  # (B, P, V)
    return F.cross_entropy(logits.float().flatten(0, 1), targets[:, positions].flatten(), ignore_index=IGNORE_INDEX)


# -- kl ---------------------------------------------------------------------------------------
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


@torch.no_grad()
def teacher_logits(language_model, batch: dict, device) -> torch.Tensor:
    """The frozen LLM reading the transcript (LoRA switched off when present): ``(B, L_t, V)``."""
    lora = hasattr(language_model, "disable_adapter_layers")
    if lora:
        language_model.disable_adapter_layers()
    try:
        return language_model(input_ids=batch["teacher_input_ids"].to(device),
                              attention_mask=batch["teacher_attention_mask"].to(device)).logits
    finally:
        if lora:
            language_model.enable_adapter_layers()


def ce_plus_kl(engine, model, inputs: dict, batch: dict, weight: float, temperature: float) -> torch.Tensor:
    """``objective.type: kl``: the model's own cross-entropy + ``weight`` x the KL to the text teacher."""
    output = engine(**inputs)
    teacher = teacher_logits(model.language_model, batch, inputs["input_ids"].device)
    return output.loss + weight * kl_loss(output.logits, inputs["labels"], teacher,
                                          batch["teacher_labels"].to(teacher.device), temperature)


# -- units ------------------------------------------------------------------------------------
class AnswerStateCache(dict):
    """``objective.cache_states``: the frozen LLM's answer states per conversation, ``(id, token hash)
    -> (n_answer, D)``, computed at its first batch and reused in later epochs."""

    @torch.no_grad()
    def states(self, model, ids: list[str], inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows (B, L_ans, D), keep (B, L_ans))`` for the batch, running the LLM only for new rows."""
        keys = [(i, hash(tuple(row[mask.bool()].tolist())))  # the id and the tokens: ids may repeat across files
                for i, row, mask in zip(ids, inputs["input_ids"], inputs["attention_mask"])]
        if any(k not in self for k in keys):
            embeds = model.embed_inputs(inputs["input_ids"], inputs.get("input_features"),
                                        inputs.get("feature_attention_mask"), None, inputs.get("audio_encoder_outputs"))
            rows, keep = model.answer_states(embeds, inputs["attention_mask"], inputs["unit_mask"])
            for key, row, mask in zip(keys, rows, keep):
                self[key] = row[mask].clone()
        states = [self[k] for k in keys]
        lengths = torch.tensor([len(s) for s in states], device=states[0].device)
        rows = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        return rows, torch.arange(rows.shape[1], device=rows.device)[None] < lengths[:, None]


def unit_ctc(engine, model, inputs: dict, batch: dict, end_ids: list[int],
             cache: AnswerStateCache | None) -> torch.Tensor:
    """``objective.type: units``: CTC of the unit head against ``batch["unit_targets"]`` on the answer
    tokens' states (end-of-turn tokens excluded; from ``cache`` when given), or on the answers'
    phonemes for a head with ``unit_head.input: phonemes`` (the LLM does not run)."""
    head = model.unit_head
    if head.config.input == "phonemes":
        ids, keep = head.phoneme_batch(batch["unit_texts"], batch["unit_langs"])
        return engine(answer_states=ids, answer_mask=keep, unit_targets=batch["unit_targets"].to(ids.device)).loss
    labels = inputs.pop("labels")
    ends = torch.tensor(sorted(end_ids), device=labels.device)
    inputs["unit_mask"] = (labels != IGNORE_INDEX) & ~torch.isin(labels, ends)
    inputs["unit_targets"] = batch["unit_targets"].to(labels.device)
    if cache is not None:
        rows, keep = cache.states(model, batch["ids"], inputs)
        return engine(answer_states=rows, answer_mask=keep, unit_targets=inputs["unit_targets"]).loss
    return engine(**inputs).loss
