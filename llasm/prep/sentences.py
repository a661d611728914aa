"""Everyday training sentences written by the starter LLM: `data/seed/generated_sentences.jsonl`.

    pip install wordfreq==3.1.1 && python data_prep/generate_sentences.py   # ~14 min on 2 CPU cores

`make demo` speaks these sentences beside the seed corpus so that stage 1 hears many common words
(the held-out seed items are scored on words the training clips never had otherwise). One prompt per
word of wordfreq's frequency lists (English words 150+ in rank, Chinese words 100+ of two or more
characters), greedy decoding with Qwen2.5-0.5B-Instruct, so the file is reproducible. Kept: 5-20
English words or 6-40 Chinese characters, no digits (TTS reads them differently from the text), no
other script, no repeats, nothing equal to a seed sentence, question or answer.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from llasm.io import REPO, read_jsonl, write_jsonl
from llasm.lang import CJK

SEED = REPO / "data" / "seed"
PROMPTS = {
    "en": 'Write one simple everyday English sentence (8 to 14 words) that uses the word "{}". Reply with the sentence only.',
    "zh": "请用“{}”写一个简单的日常中文句子（10到20个字）。只回答这个句子。",
}
_LATIN = re.compile("[A-Za-z]")


def topic_words(per_language: int) -> dict[str, list[str]]:
    try:
        from wordfreq import top_n_list
    except ImportError:
        raise SystemExit("generating sentences needs wordfreq's word lists: pip install wordfreq==3.1.1") from None
    return {"en": [w for w in top_n_list("en", 6000)[150:] if w.isalpha() and len(w) >= 3][:per_language],
            "zh": [w for w in top_n_list("zh", 6000)[100:] if len(w) >= 2 and all(CJK.match(c) for c in w)][:per_language]}


def keep(text: str, lang: str) -> bool:
    if re.search("[0-9]", text):
        return False
    if lang == "en":
        return not CJK.search(text) and 5 <= len(text.split()) <= 20
    return not _LATIN.search(text) and 6 <= len(CJK.findall(text)) <= 40


def key(text: str) -> str:
    return re.sub(r"\W", "", text).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path("~/.cache/llasm/qwen2.5-0.5b-instruct").expanduser()))
    parser.add_argument("--words", type=int, default=1500, help="prompts per language")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=SEED / "generated_sentences.jsonl")
    args = parser.parse_args(argv)



    prompts = [(lang, word) for lang, words in topic_words(args.words).items() for word in words]  # fails fast
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16).eval()
    seed = read_jsonl(SEED / "asr_sentences.jsonl")
    seen = {key(r["text"]) for r in seed} | {key(r[f]) for r in read_jsonl(SEED / "instructions.jsonl")
                                             for f in ("question", "answer")}
    rows = []
    for start in tqdm(range(0, len(prompts), args.batch_size), desc="sentences", unit="batch"):
        group = prompts[start : start + args.batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[lang].format(word)}],
                                               tokenize=False, add_generation_prompt=True) for lang, word in group]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=36, do_sample=False)
        for (lang, word), ids in zip(group, out[:, batch.input_ids.shape[1] :]):
            text = tokenizer.decode(ids, skip_special_tokens=True).strip().split("\n")[0].strip().strip('"“”')
            if keep(text, lang) and key(text) not in seen:
                seen.add(key(text))
                rows.append({"id": f"gen-{lang}-{len(rows):05d}", "lang": lang, "text": text, "word": word, "split": "train"})
    write_jsonl(args.output, rows)
    print(json.dumps({lang: sum(r["lang"] == lang for r in rows) for lang in PROMPTS}), "->", args.output)
    return 0
