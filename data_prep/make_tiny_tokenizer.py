"""Regenerate the bundled tiny sentencepiece tokenizer used by `configs/model/tiny.yaml` and tests.

It is a Llama-style BPE model (unk=0, bos=1, eos=2, byte fallback), so every Chinese or English
string tokenizes, exactly as Chinese-LLaMA-2's tokenizer path does, at a 512-piece vocabulary.

    python data_prep/make_tiny_tokenizer.py   # writes llasm/assets/tiny-llama-tokenizer/tokenizer.model
"""

import io
from pathlib import Path

import sentencepiece as spm

TEXT = """[INST] <<SYS>> You are a helpful language and speech assistant. <</SYS>> [/INST]
Transcribe the audio. What is the capital of France? The capital of France is Paris.
What is seven plus five? Seven plus five is twelve. How do you say apple in Chinese?
the quick brown fox jumps over the lazy dog. hello world, how are you today?
请把这段语音转写成文字。中国的首都是哪里？中国的首都是北京。今天天气很好。
你好，世界！七加五等于多少？七加五等于十二。苹果用英文怎么说？猫的英文是什么？
"""


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "llasm" / "assets" / "tiny-llama-tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines() * 10), model_writer=model, vocab_size=512, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        add_dummy_prefix=True, hard_vocab_limit=False, normalization_rule_name="identity", minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(model.getvalue())
    print(f"wrote {out / 'tokenizer.model'} ({len(model.getvalue())} bytes)")


if __name__ == "__main__":
    main()
