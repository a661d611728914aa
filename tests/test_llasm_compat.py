"""LLaSM compatibility: decoder-query audio source + converting a LinkSoul-layout checkpoint."""

import json

import torch
from transformers import AutoConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor, WhisperModel

import llasm
from llasm.builder import TINY_TOKENIZER, load_tokenizer
from llasm.io import load_yaml
from llasm.weights.llasm_checkpoint import convert_llasm
from tests.conftest import TINY_YAML, tone


def _linksoul_layout(root):
    """A tiny checkpoint laid out like LinkSoul/LLaSM-Cllama2: Llama + 3 audio rows + mm_projector (.bin)."""
    spec = load_yaml(TINY_YAML)
    torch.manual_seed(0)
    whisper = WhisperModel(WhisperConfig(**spec["audio"]["config"]))
    whisper.save_pretrained(root / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper")
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    base_vocab = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<au_patch>", "<au_start>", "<au_end>"]})
    assert tokenizer.convert_tokens_to_ids(["<au_patch>", "<au_start>", "<au_end>"]) == [base_vocab, base_vocab + 1, base_vocab + 2]
    text_config = AutoConfig.for_model(**{**spec["text"]["config"], "vocab_size": base_vocab + 3})
    llama = LlamaForCausalLM(text_config)
    state = dict(llama.state_dict())
    d_llm, d_whisper = text_config.hidden_size, whisper.config.d_model
    state["model.mm_projector.weight"] = torch.randn(d_llm, d_whisper) * 0.05
    state["model.mm_projector.bias"] = torch.randn(d_llm) * 0.05
    src = root / "LLaSM-Cllama2"
    src.mkdir()
    torch.save(state, src / "pytorch_model.bin")  # LinkSoul ships .bin; read back with weights_only=True
    config = text_config.to_dict()
    config.update(architectures=["LlaaaLlamaForCausalLM"], audio_tower="whisper", mm_hidden_size=d_whisper)
    (src / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(src)
    return src, llama, whisper, state, tokenizer


def test_convert_linksoul_layout_matches_llasm_reference_computation(tmp_path):
    src, llama, whisper, state, tokenizer = _linksoul_layout(tmp_path)
    convert_llasm(src, tmp_path / "converted", whisper=str(tmp_path / "whisper"), dtype="float32")
    model = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "converted")
    processor = model.processor
    cfg = model.config
    assert (cfg.audio_source, cfg.adaptor_type, cfg.stack_factor, cfg.pad_to_30s) == ("whisper_decoder_queries", "linear", 1, True)
    base = len(tokenizer) - 3
    assert [cfg.audio_patch_token_id, cfg.audio_start_token_id, cfg.audio_end_token_id] == [base, base + 1, base + 2]
    assert torch.equal(model.adaptor.proj.weight, state["model.mm_projector.weight"])
    assert torch.equal(model.audio_marker_embeddings.weight, state["model.embed_tokens.weight"][base + 1:base + 3])

    audio = tone(2.0)
    batch = processor.apply_chat_template([{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                                         {"type": "text", "text": "Transcribe."}]}],
                                          add_generation_prompt=True)
    ids = batch["input_ids"]
    assert int((ids == base).sum()) == 64 and batch["input_features"].shape[-1] == 3000
    with torch.no_grad():
        ours = model(**batch).logits
        # LLaSM's computation: decoder states of 64 start tokens -> mm_projector -> into <au_patch> rows
        queries = torch.full((1, 64), whisper.config.decoder_start_token_id)
        feats = whisper(batch["input_features"], decoder_input_ids=queries).last_hidden_state[0]
        projected = feats @ state["model.mm_projector.weight"].T + state["model.mm_projector.bias"]
        embeds = llama.get_input_embeddings()(ids)
        embeds[ids == base] = projected
        reference = llama(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits[..., :base]
    assert torch.allclose(ours, reference, atol=1e-4)


def test_decoder_query_source_builds_from_yaml():
    spec = load_yaml(TINY_YAML)
    spec["audio"]["source"] = "whisper_decoder_queries"
    spec["adaptor"] = {"type": "linear", "stack_factor": 1}
    model, processor = llasm.build_model(spec)
    assert model.config.pad_to_30s and processor.pad_to_30s
    batch = processor.apply_chat_template([{"role": "user", "content": [{"type": "audio", "audio": tone(45.0)}]},
                                           {"role": "assistant", "content": "ok"}])
    assert int((batch["input_ids"] == model.config.audio_patch_token_id).sum()) == 128  # two 30 s windows
    assert torch.isfinite(model(**batch).loss)
