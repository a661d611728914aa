"""CTC embedding alignment (the adaptor's warm start) learns on cached encoder states."""

import torch

from llasm.align import AlignConfig, EmbeddingCTC, ctc_align_adaptor, rescale_adaptor_output
from tests.conftest import build_tiny, tone


def test_embedding_ctc_scores_nearest_embedding_highest():
    table = torch.randn(5, 8)
    scorer = EmbeddingCTC(table)
    log_probs = scorer(table[None, [3, 1]])  # tokens equal to embeddings 3 and 1
    assert log_probs.shape == (1, 2, 6)  # 5 embeddings + blank
    assert log_probs[0, :, :5].argmax(-1).tolist() == [3, 1]
    # cosines around the centre: a token far out along an embedding's direction still scores it highest
    center = table.mean(0)
    assert scorer(center + 50 * (table[None, [3, 1]] - center))[0, :, :5].argmax(-1).tolist() == [3, 1]


def test_rescale_adaptor_output_is_exact_and_keeps_the_scores_order():
    model, _ = build_tiny()
    frames = torch.randn(2, 12, model.config.audio_config.d_model)
    center = torch.randn(model.config.text_config.hidden_size)
    with torch.no_grad():
        before = model.adaptor(frames)
        rescale_adaptor_output(model.adaptor, 0.25, center)
        after = model.adaptor(frames)
    torch.testing.assert_close(after, center + 0.25 * (before - center), rtol=1e-5, atol=1e-5)
    scorer = EmbeddingCTC(torch.randn(7, center.shape[0]), center)
    assert torch.equal(scorer(before).argmax(-1), scorer(after).argmax(-1))


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
    # afterwards the audio tokens sit as far from the centre of the LLM's embeddings as its words do
    embeddings = model.get_input_embeddings().weight.detach()
    center = embeddings.mean(0)
    words = embeddings[sorted({i for t in texts for i in processor.tokenizer(t, add_special_tokens=False).input_ids})]
    with torch.no_grad():
        tokens = torch.cat([model.project_audio(s[None], [f]) for s, f in zip(states, frames)])
    spread = (tokens - center).norm(dim=-1).mean()
    torch.testing.assert_close(spread, (words - center).norm(dim=-1).mean(), rtol=0.02, atol=0)
