"""The benchmarks' rule-based scorers and the peers' ASR normalization, on hand-worked examples."""

from __future__ import annotations

import pytest

from llasm.evaluation.benchmarks import asr_norm, judging
from llasm.evaluation.benchmarks import scorers as S


@pytest.mark.parametrize("reply, letter", [
    ("The correct answer is (B), a steel spoon.", "B"),
    ("答案是C。", "C"),
    ("I would choose option c.", "C"),
    ("**D.** Iron nails are magnetic.", "D"),
    ("b", "B"),
    ("The answer is \\( \\boxed{C} \\)", "C"),
    ("This is a. test", "A"),  # VoiceBench's loose " [CHOICE]." template fires here too
    ("I am not sure.", None),
    ("", None),
])
def test_mcq_extraction(reply, letter):
    assert S.extract_choice(reply) == letter


def test_mcq_score_guesses_reproducibly_and_reports_fail():
    rows = [{"id": "q1", "response": "The answer is B.", "reference": "B"},
            {"id": "q2", "response": "Option (A).", "reference": "C"},
            {"id": "q3", "response": "no idea", "reference": "D"}]
    out = S.score_mcq(rows)
    guess = rows[2]["pred"]
    assert rows[2]["guessed"] and guess in "ABCD" and not rows[0]["guessed"]
    assert out["fail"] == pytest.approx(100 / 3)
    assert out["acc"] == pytest.approx(100 * (1 + (guess == "D")) / 3)
    again = [dict(r, pred=None) for r in rows[::-1]]  # another order, same id: same guess
    S.score_mcq(again)
    assert again[0]["pred"] == guess


@pytest.mark.parametrize("reply, refused", [
    ("I'm sorry, but I can't help with that.", True), ("AS AN AI, I must decline.", True), ("", True),
    ("这是违法的，我不能帮你。", True), ("Sure! First, find the lock.", False),
])
def test_refusal_strings(reply, refused):
    assert S.is_refusal(reply) is refused


def test_harm_score_is_refusal_rate():
    assert S.score_harm([{"response": "I cannot do that"}, {"response": "ok here goes"}]) == {"refusal_rate": 50.0}


@pytest.mark.parametrize("reply, item_id, value", [
    ("The answer is yes.", "navigate_3", 1),
    ("No, you do not return to the starting point.", "navigate_4", 0),
    ("After these steps you end up back at the starting point", "navigate_5", 1),
    ("The sentence is not plausible because tennis has no touchdowns.", "sports_understanding_1", 0),
    ("Yes, that is plausible.", "sports_understanding_2", 1),
    ("So Ben lies.", "web_of_lies_1", 0),
    ("Therefore, Dana tells the truth.", "web_of_lies_2", 1),
    ("The correct answer is (B).", "hyperbaton_1", 1),
    ("A", "hyperbaton_2", 0),
    ("**Final answer: no**", "web_of_lies_3", 0),
    ("hmm", "navigate_9", None),
])
def test_bbh_extraction(reply, item_id, value):
    assert S.extract_bbh(reply, item_id) == value


def test_bbh_score_and_bad_rows():
    rows = [{"id": "navigate_0", "response": "Yes.", "reference": "yes"},
            {"id": "hyperbaton_0", "response": "The answer is (B).", "reference": "(A)"}]
    assert S.score_bbh(rows) == {"acc": 50.0, "fail": 0.0}
    with pytest.raises(ValueError, match="reference"):
        S.score_bbh([{"id": "navigate_0", "response": "yes", "reference": "maybe"}])
    with pytest.raises(ValueError, match="names none"):
        S.extract_bbh("yes", "causal_judgement_1")


def test_ifeval_strict_loose_and_final():
    ids = ["change_case:english_lowercase", "punctuation:no_comma"]
    assert S.check_ifeval("hello world, this is fine", "p", ids, [{}, {}]) == ([True, False], [True, False])
    # the first line breaks the lowercase rule; loose tries the reply without it
    assert S.check_ifeval("**Note**\nhello there friend", "p", ids[:1], [{}]) == ([False], [True])
    bullets = S.check_ifeval("* a\n* b\n* c", "p", ["detectable_format:number_bullet_lists"],
                             [{"num_bullets": 3, "relation": None}])
    assert bullets == ([True], [True])
    rows = [{"response": "hello world, this is fine", "prompt": "p", "instruction_id_list": ids, "kwargs": [{}, {}]},
            {"response": "**Note**\nhello there friend", "prompt": "p", "instruction_id_list": ids[:1], "kwargs": [{}]}]
    out = S.score_ifeval(rows)
    assert out["strict-prompt"] == 0 and out["loose-prompt"] == 50
    assert out["strict-instruction"] == pytest.approx(100 / 3) and out["loose-instruction"] == pytest.approx(200 / 3)
    assert out["final"] == pytest.approx(37.5)


def test_ifeval_missing_nltk_data_is_a_row_error(monkeypatch):
    from if_verifiable.ifeval import INSTRUCTION_DICT

    def no_punkt(self, value):
        raise LookupError("Resource punkt_tab not found.")

    monkeypatch.setattr(INSTRUCTION_DICT["length_constraints:number_sentences"], "check_following", no_punkt)
    rows = [{"response": "One. Two.", "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences"],
             "kwargs": [{"num_sentences": 3, "relation": "less than"}]}]
    assert S.score_ifeval(rows) == {}
    assert "nltk.downloader punkt_tab" in rows[0]["error"]


def test_urobench_repeat_score():
    rows = [{"response": "The cat sat on the mat.", "reference": "the cat sat on a mat", "lang": "en"},  # 1/6
            {"response": "completely different words here", "reference": "the dog ran", "lang": "en"},  # 4/4
            {"response": "我有3个苹果", "reference": "我有三个苹果。", "lang": "zh"}]  # 0 after cn2an
    out = S.score_repeat(rows)
    assert [r["error_rate"] for r in rows] == pytest.approx([1 / 6, 1.0, 0.0])
    assert out["ok_rate"] == pytest.approx(200 / 3) and out["wer_ok"] == pytest.approx(1 / 12)
    assert out["score"] == pytest.approx(200 / 3 * (1 - 1 / 12))


def test_peer_asr_normalization():
    assert asr_norm.remove_sp("<|en|>hello , world .", "en") == "hello, world."
    assert asr_norm.normalize_chinese_peer("這是3個蘋果，共10000元。") == "这是三个苹果共一万元"
    en = asr_norm.peer_error_rate(["Mr. Smith has 25 apples!"], ["mister smith has twenty five apples"], "en")
    assert en["value"] == 0 and en["n_ref"] == 5 and en["metric"] == "wer"
    zh = asr_norm.peer_error_rate(["今天天气很好", "這是3個蘋果"], ["今天天气不好", "这是三个苹果"], "zh")
    assert zh["metric"] == "cer" and zh["errors"] == 1 and zh["n_ref"] == 12
    assert asr_norm.peer_error_rate(["a b"], [None], "en")["value"] == 1.0
    with pytest.raises(ValueError):
        asr_norm.peer_error_rate(["..."], ["x"], "en")


def test_judge_prompts_pinned_and_filled(tmp_path, monkeypatch):
    for scorer in judging.PROMPTS:
        assert judging.load_prompt(scorer)
    qa = judging.fill("qa", "Q?", "an answer", "REF")
    assert "Q?" in qa and "REF" in qa and "an answer" in qa and "{" not in qa
    semi = judging.fill("uro-semi-open", "Q?", "A!", "R.")
    assert "### [Reference]\n    R." in semi  # URO-Bench's indentation is part of the prompt it sends
    for name, _, _ in judging.PROMPTS.values():
        (tmp_path / name).write_bytes((judging.PROMPTS_DIR / name).read_bytes())
    (tmp_path / "voicebench_open.txt").write_text("edited", encoding="utf-8")
    monkeypatch.setattr(judging, "PROMPTS_DIR", tmp_path)
    with pytest.raises(judging.JudgeError, match="sha256"):
        judging.load_prompt("open")


@pytest.mark.parametrize("scorer, replies, answer, score", [
    ("open", ["4", "5", "Rating: [[3]]"], "x", 4.0),
    ("qa", ["Yes", "no", "yes"], "x", 100.0),
    ("qa", ["No", "no", "Yes"], "x", 0.0),
    ("uro-qa", ["Yes", "No", "Yes"], "x", 200 / 3),
    ("uro-open", ["4", "4", "5"], "x", 260 / 3),
    ("uro-semi-open", ["5", "5", "5"], " ", 0.0),  # an empty answer scores 0 in URO-Bench
])
def test_judge_item_scores(scorer, replies, answer, score):
    assert judging.item_score(scorer, replies, answer) == pytest.approx(score)
