"""CTC embedding alignment (the adaptor's warm start) learns on cached encoder states."""

import torch

from llasm.align import AlignConfig, EmbeddingCTC, ctc_align_adaptor
from tests.conftest import build_tiny, tone


def test_embedding_ctc_scores_nearest_embedding_highest():
    table = torch.randn(5, 8)
    scorer = EmbeddingCTC(table)
    log_probs = scorer(table[None, [3, 1]])  # tokens equal to embeddings 3 and 1
    assert log_probs.shape == (1, 2, 6)  # 5 embeddings + blank
    assert log_probs[0, :, :5].argmax(-1).tolist() == [3, 1]


def test_ctc_alignment_lowers_the_loss_and_only_moves_the_adaptor():
    model, processor = build_tiny()
    texts = ["hello world", "你好世界", "the quick brown fox", "今天天气很好"]
    states, frames = [], []
    with torch.no_grad():
        for i, _ in enumerate(texts):
            hidden, f = model.encode_audio(**processor.pad_features(processor.audio_features(tone(3.0, seed=i, freq=150 + 80 * i))))
            states.append(hidden[0])
            frames.append(f[0])
    before = {n: p.clone() for n, p in model.language_model.named_parameters()}
    losses = ctc_align_adaptor(model, states, frames, texts, processor.tokenizer,
                               AlignConfig(steps=60, batch_size=4, lr=5e-3, log_every=0))
    assert len(losses) == 60 and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert all(torch.equal(p, before[n]) for n, p in model.language_model.named_parameters())
