"""CTC embedding alignment (the adaptor's warm start) learns on cached encoder states."""

import pytest
import torch

from llasm.training.align import (
    AlignConfig,
    EmbeddingCTC,
    ctc_align_adaptor,
    ctc_targets,
    rescale_adaptor_output,
    time_mask,
)
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


def test_greedy_decoding_collapses_repeats_and_drops_blanks():
    table = torch.randn(5, 8)
    scorer = EmbeddingCTC(table)
    blank = scorer.center + torch.nn.functional.normalize(scorer.blank.detach(), dim=0)  # scores the blank highest
    tokens = torch.stack([table[3], table[3], blank, table[3], table[1], table[1], table[2]])[None]
    assert scorer.greedy(tokens, [7]) == [[3, 3, 1, 2]]  # a blank separates a repeated token
    assert scorer.greedy(tokens.repeat(2, 1, 1), [7, 2]) == [[3, 3, 1, 2], [3]]  # only the first 2 of row 2


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


def test_time_mask_masks_spans_up_to_the_fraction():
    generator = torch.Generator().manual_seed(0)
    mask = time_mask(200, 0.2, 10, generator)
    assert mask.dtype == torch.bool and mask.shape == (200,)
    assert 10 <= int(mask.sum()) <= 40  # 4 spans of 10, which may overlap
    # a union of whole spans: every masked frame lies in 10 masked frames in a row
    assert all(any(mask[s : s + 10].all() for s in range(max(0, i - 9), min(i, 190) + 1)) for i in mask.nonzero().flatten().tolist())
    assert not time_mask(200, 0.0, 10, generator).any()
    assert time_mask(5, 0.5, 10, generator).shape == (5,)  # a clip shorter than a span


def _byte_level_tokenizer():
    """A Qwen-like byte-level BPE, trained here so that Chinese words become single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["今天天气很好。", "公园里的树。", "我用Python写了3个程序。", "the quick brown fox"] * 50
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level"])
def test_ctc_targets_spell_chinese_words_one_character_at_a_time(kind):
    tok = build_tiny()[1].tokenizer if kind == "sentencepiece" else _byte_level_tokenizer()
    plain = lambda t: tok(t, add_special_tokens=False).input_ids  # noqa: E731
    def chinese_word(i):  # a token of several Chinese characters
        piece = tok.decode([i]).strip()
        return len(piece) > 1 and all("\u4e00" <= c <= "\u9fff" for c in piece)

    merged = 0
    for text in ["今天天气很好。", "公园里的树。", "我用Python写了3个程序。", "the quick brown fox"]:
        ids = ctc_targets(text, tok)
        assert tok.decode(ids) == tok.decode(plain(text))
        assert ctc_targets(text, tok, cjk_chars=False) == plain(text)
        merged += sum(map(chinese_word, plain(text)))
        # the only Chinese words left start a word (sentencepiece's dummy prefix)
        assert not [i for i in ids if chinese_word(i) and not tok.convert_ids_to_tokens(i).startswith("\u2581")]
    assert merged > 0  # the plain tokenization did merge Chinese words
    assert ctc_targets("the quick brown fox", tok) == plain("the quick brown fox")  # no Chinese: unchanged


def _tiny_states(texts):
    model, processor = build_tiny()
    states, frames = [], []
    with torch.no_grad():
        for i, _ in enumerate(texts):
            hidden, f = model.encode_audio(**processor.pad_features(processor.audio_features(tone(3.0, seed=i, freq=150 + 80 * i))))
            states.append(hidden[0])
            frames.append(f[0])
    return model, processor, states, frames


def test_ctc_alignment_with_augmentation_and_bf16_learns():
    texts = ["hello world", "你好世界", "the quick brown fox", "今天天气很好"]
    model, processor, states, frames = _tiny_states(texts)
    losses, scorer, vocab = ctc_align_adaptor(model, states, frames, texts, processor.tokenizer,
                                              AlignConfig(steps=60, batch_size=4, lr=5e-3, log_every=0, time_mask=0.2,
                                                          mask_span=4, channel_dropout=0.1, mixed_precision="bf16"),
                                              return_scorer=True)
    assert vocab == sorted({i for t in texts for i in ctc_targets(t, processor.tokenizer)})
    with torch.no_grad():
        decoded = scorer.greedy(model.adaptor(states[0][None]), [model.project_audio(states[0][None], [frames[0]]).shape[0]])
    assert len(decoded) == 1 and all(0 <= i < len(vocab) for i in decoded[0])
    assert len(losses) == 60 and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert next(model.adaptor.parameters()).dtype == torch.float32  # autocast only; the weights stay fp32
    with pytest.raises(ValueError, match="AlignConfig.mixed_precision must be 'no' or 'bf16', got 'fp8'"):
        ctc_align_adaptor(model, states, frames, texts, processor.tokenizer, AlignConfig(steps=1, mixed_precision="fp8"))


def test_ctc_alignment_lowers_the_loss_and_only_moves_the_adaptor():
    texts = ["hello world", "你好世界", "the quick brown fox", "今天天气很好"]
    model, processor, states, frames = _tiny_states(texts)
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
