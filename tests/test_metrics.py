"""Known-answer tests for llasm.evaluation.metrics (normalizers, WER/CER, instruction following, NLL, plot)."""

import json
import math

import pytest
import torch

from llasm.evaluation import metrics as M
from llasm.evaluation.report import plot_metrics

# ------------------------------------------------------------------ normalizers


def test_spelling_table_from_openai_whisper():
    table = json.loads(M.english_spelling_path().read_text(encoding="utf-8"))
    assert len(table) > 1500
    assert table["colour"] == "color" and table["grey"] == "gray"
    info = M.normalizer_info()
    assert info["normalizer_version"] == M.NORMALIZER_VERSION == "1"
    assert len(info["en_spelling_sha256"]) == 64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith's colour is GREY!", "mister smith is color is gray"),
        ("twenty five", "25"),
        ("I have twelve apples.", "i have 12 apples"),
        ("Dr. Jones analysed the centre's behaviour", "doctor jones analyzed the center is behavior"),
        ("Uh, let's go!", "let us go"),
        ("Café   naïve", "cafe naive"),
        (None, ""),
    ],
)
def test_normalize_en(text, expected):
    assert M.normalize_en(text) == expected
    if text is not None:
        assert M.normalize(text, "en") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("這是一個測試。", "这是一个测试"),
        ("我有3个苹果，", "我有三个苹果"),
        ("他 今年 12 岁!", "他今年十二岁"),
        ("共305人", "共三百零五人"),
        ("1010和110和10和2000", "一千零一十和一百一十和十和二千"),
        ("0和1005", "零和一千零五"),
        ("2024年", "二零二四年"),
        ("二〇二四年", "二零二四年"),
        ("电话10086", "电话一零零八六"),
        ("区号0571", "区号零五七一"),
        ("1,000元", "一千元"),
        ("3.5公里", "三点五公里"),
        ("0.25", "零点二五"),
        ("增长50%", "增长百分之五十"),
        ("ＡＢＣ１２３　ｘ", "abc一百二十三x"),
        ("我用 iPhone 写 Python\t代码\n", "我用iphone写python代码"),
        ("「你好」——《世界》…", "你好世界"),
        ("", ""),
    ],
)
def test_normalize_zh(text, expected):
    assert M.normalize_zh(text) == expected
    assert M.normalize(text, "zh") == expected


def test_normalize_rejects_unknown_language():
    with pytest.raises(ValueError):
        M.normalize("hola", "es")


# ------------------------------------------------------------------ ASR metrics


def test_wer_known_values():
    assert M.wer(["the cat sat"], ["the cat sit"]) == pytest.approx(1 / 3)
    # normalization makes punctuation, case and spelling variants free
    assert M.wer(["The colour is grey."], ["the color is gray"]) == 0.0
    assert M.wer(["I have twenty five cats"], ["I have 25 cats"]) == 0.0
    # corpus-level: (1 sub + 2 del) / (3 + 2) words
    r = M.asr_error_rate(["the cat sat", "hello world"], ["the cat sit", None], "en")
    assert r["metric"] == "wer"
    assert (r["substitutions"], r["deletions"], r["insertions"], r["n_ref"]) == (1, 2, 0, 5)
    assert r["value"] == pytest.approx(3 / 5)


def test_cer_known_values():
    assert M.cer(["这是一个测试"], ["這是一個測試"]) == 0.0
    assert M.cer(["我有三个苹果"], ["我有3个苹果。"]) == 0.0
    # 我有三个 hits, 苹→梨 substitution, 果 deleted: 2 / 6
    r = M.asr_error_rate(["我有三个苹果"], ["我有3个梨"], "zh")
    assert r["metric"] == "cer"
    assert (r["substitutions"], r["deletions"], r["insertions"], r["n_ref"]) == (1, 1, 0, 6)
    assert r["value"] == pytest.approx(1 / 3)
    assert M.cer(["你好"], ["你好吗呀"]) == pytest.approx(1.0)  # two insertions over two chars


def test_empty_references_are_skipped_or_rejected():
    r = M.asr_error_rate(["", "。", "你好"], ["嗯", "啊", "你好"], "zh")
    assert r["n_skipped"] == 2 and r["n_utts"] == 1 and r["value"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        M.wer(["", "  !?"], ["a", "b"])
    with pytest.raises(ValueError, match="references"):
        M.cer(["a"], [])


# ------------------------------------------------------------------ instruction following


def test_keyword_match_zh():
    assert M.keyword_match("我今年12岁。", ["十二"], "zh")
    assert M.keyword_match("我今年十二岁。", "12", "zh")
    assert M.keyword_match("答案是三點五", ["3.5"], "zh")
    assert M.keyword_match("我有两个苹果", ["2个"], "zh")
    assert M.keyword_match("Python很好", ["python"], "zh")
    assert not M.keyword_match("我今年十三岁", ["12", "十二"], "zh")
    assert not M.keyword_match("", ["12"], "zh")


def test_keyword_match_en():
    assert M.keyword_match("I am twelve years old.", ["12"], "en")
    assert M.keyword_match("I am 12 years old.", "twelve", "en")
    assert M.keyword_match("It costs twenty dollars", ["$20"], "en")
    assert M.keyword_match("It costs $20.", ["20"], "en")
    assert M.keyword_match("There is one apple", ["1"], "en")
    assert M.keyword_match("The COLOUR of the sky", ["color"], "en")
    assert M.keyword_match("New York City is big", ["new york"], "en")
    assert not M.keyword_match("A category of things", ["cat"], "en")  # whole words only
    assert not M.keyword_match("I am 13", ["twelve", "12"], "en")
    assert not M.keyword_match("anything", ["", "  "], "en")


def test_chrf():
    assert M.chrf(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert M.chrf(["我有三个苹果"], ["我有三个苹果"]) == pytest.approx(100.0)
    assert M.chrf(["xyz"], ["abc"]) == pytest.approx(0.0)
    partial = M.chrf(["我有三个梨"], ["我有三个苹果"])
    assert 0.0 < partial < 100.0
    # multi-reference: the matching reference wins
    assert M.chrf(["hello there"], [["good bye", "hello there"]]) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        M.chrf(["a", "b"], ["a"])


@pytest.mark.parametrize(
    "text, lang",
    [
        ("今天天气很好。", "zh"),
        ("今天天氣很好", "zh"),
        ("The weather is nice today.", "en"),
        ("我今天用了Python写代码", "zh"),
        ("这个 API 的 latency 很高", "zh"),
        ("好的 OK", "zh"),
        ("The word for hello in Chinese is 你好.", "en"),
        ("I love 北京", "en"),
        ("Привет, как дела?", "other"),
        ("こんにちは、元気ですか", "other"),
        ("12345 !!! 😀", "other"),
        ("", "other"),
    ],
)
def test_detect_language(text, lang):
    assert M.detect_language(text) == lang


def test_language_consistent():
    assert M.language_consistent("这个 API 的 latency 很高", "zh")
    assert not M.language_consistent("这个 API 的 latency 很高", "en")
    assert M.language_consistent("Sure! 你好 means hello in English.", "en")
    assert not M.language_consistent("", "en")


# ------------------------------------------------------------------ perplexity


def test_sequence_nll_hand_computed():
    # position 0 predicts labels[1] = 0 from uniform logits: ln 2
    # position 1 predicts labels[2] = 1 with p = 3/4: ln(4/3)
    # position 2 has no next label; labels[0] is never a target.
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])
    labels = torch.tensor([[7, 0, 1]])
    total, n = M.sequence_nll(logits, labels)
    assert n == 2
    assert total == pytest.approx(math.log(2) + math.log(4 / 3), abs=1e-6)
    assert M.perplexity(total, n) == pytest.approx(math.sqrt(8 / 3), rel=1e-6)
    # -100 labels are ignored; 2-D inputs are accepted
    total2, n2 = M.sequence_nll(logits[0], torch.tensor([0, -100, 1]))
    assert n2 == 1 and total2 == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert M.sequence_nll(logits, torch.full((1, 3), -100)) == (0.0, 0)


def test_sequence_nll_matches_hf_loss_convention():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.bfloat16)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 3:] = -100
    total, n = M.sequence_nll(logits, labels)
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert n == 6
    assert total / n == pytest.approx(float(ref), rel=1e-5)


# ------------------------------------------------------------------ plot


def test_plot_metrics_writes_png(tmp_path):
    results = {
        "llasm": {"zh": {"cer": 0.12, "chrf": 55.0}, "en": {"wer": {"value": 0.08}, "chrf": 60.2}},
        "cascade": {"zh": {"cer": 0.10, "chrf": 50.1}, "en": {"wer": 0.07, "chrf": 58.0}},
    }
    out = plot_metrics(results, tmp_path / "sub" / "metrics.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.png"]  # no temp files left
