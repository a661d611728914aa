"""Model: forward, variable-length encoding (batch == alone), chunking, count checks, generation."""

import pytest
import torch

from tests.conftest import build_tiny, tone


def _user(audio, text=None):
    content = [{"type": "audio", "audio": audio}]
    if text:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def test_forward_loss_finite_and_shapes(tiny):
    model, processor = tiny
    messages = _user(tone(1.5), "Transcribe.") + [{"role": "assistant", "content": "hello 你好"}]
    batch = processor.apply_chat_template(messages)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)


def test_batched_clips_encode_as_alone(tiny):
    model, processor = tiny
    clips = [tone(0.37, 1), tone(3.0, 2), tone(12.5, 3), tone(0.1, 4)]
    chunks = [c for clip in clips for c in processor.audio_features(clip)]
    batch = processor.pad_features(chunks)
    with torch.no_grad():
        together = model.get_audio_embeddings(batch["input_features"], batch["feature_attention_mask"])
        alone = [model.get_audio_embeddings(**processor.pad_features([c])) for c in chunks]
    alone = torch.cat(alone)
    assert together.shape == alone.shape
    assert (together - alone).abs().max().item() <= 1e-4


def test_long_audio_is_chunked_in_order(tiny):
    model, processor = tiny
    clip = tone(35.0)
    chunks = processor.audio_features(clip)
    assert [c.shape[1] for c in chunks] == [3000, 500]
    with torch.no_grad():
        whole = model.get_audio_embeddings(**processor.pad_features(chunks))
        first = model.get_audio_embeddings(**processor.pad_features(chunks[:1]))
        second = model.get_audio_embeddings(**processor.pad_features(chunks[1:]))
    assert whole.shape[0] == processor.num_audio_tokens(len(clip)) == first.shape[0] + second.shape[0]
    assert torch.allclose(whole, torch.cat([first, second]), atol=1e-4)


def test_pad_to_30s_reproduces_llasm_windows():
    model, processor = build_tiny(**{"audio.pad_to_30s": True})
    batch = processor.apply_chat_template(_user(tone(2.0)), add_generation_prompt=True)
    assert batch["input_features"].shape[-1] == 3000
    n = int((batch["input_ids"] == model.config.audio_patch_token_id).sum())
    assert n == processor.num_audio_tokens(32000) == 375  # 1500 frames / 4
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_count_mismatch_raises_clear_error(tiny):
    model, processor = tiny
    batch = processor.apply_chat_template(_user(tone(1.0)), add_generation_prompt=True)
    patch = model.config.audio_patch_token_id
    ids = batch["input_ids"].clone()
    first = (ids[0] == patch).nonzero()[0, 0]
    ids[0, first] = 5  # one slot fewer than the audio gives
    with pytest.raises(ValueError, match=r"audio gives 13 tokens but input_ids have 12 <au_patch> slots"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(ValueError, match="no audio was given"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_labels_from_input_ids_ignore_audio_and_padding(tiny):
    """The common fine-tuning pattern labels=input_ids.clone(): audio ids lie outside the LLM's vocabulary."""
    model, processor = tiny
    cfg = model.config
    convs = [_user(tone(1.0), "Transcribe.") + [{"role": "assistant", "content": "hello"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    batch = processor.apply_chat_template(convs, padding_side="right")
    labels = batch["input_ids"].clone()
    out = model(**{**batch, "labels": labels})
    audio = torch.isin(labels, torch.tensor([cfg.audio_patch_token_id, cfg.audio_start_token_id, cfg.audio_end_token_id]))
    target = labels.masked_fill(audio | (batch["attention_mask"] == 0), -100)[:, 1:]
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                                                 ignore_index=-100)
    assert audio.sum() == 13 + 2 and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, expected)
    from llasm.training.losses import answer_ce

    for bad in (600, -5):
        wrong = labels.clone()
        wrong[1, 2] = bad
        message = rf"labels\[1, 2\] = {bad} is outside the language model's vocabulary \(ids 0\.\.511"
        with pytest.raises(ValueError, match=message):
            model(**{**batch, "labels": wrong})
        with pytest.raises(ValueError, match=message):  # the trainer's answer-only loss checks them alike
            answer_ce(model, model, {**batch, "labels": wrong}, None, ["a", "b"])


@pytest.mark.parametrize("adaptor,stack", [("linear", 1), ("linear", 4), ("mlp", 8)])
def test_adaptor_types(adaptor, stack):
    model, processor = build_tiny(**{"adaptor.type": adaptor, "adaptor.stack_factor": stack})
    frames = torch.randn(2, 13, model.config.audio_config.d_model)  # (N, T_enc, D)
    out = model.adaptor(frames)
    assert out.shape == (2, -(-13 // stack), model.config.text_config.hidden_size)
    batch = processor.apply_chat_template(_user(tone(1.0)) + [{"role": "assistant", "content": "ok"}])
    assert torch.isfinite(model(**batch).loss)


def test_only_adaptor_and_markers_train_by_default(tiny):
    model, _ = tiny
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adaptor", "audio_marker_embeddings"}


def test_generate_encodes_audio_once_and_uses_cache(tiny):
    model, processor = tiny
    calls = []
    handle = model.audio_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        batch = processor.apply_chat_template(_user(tone(1.0), "hi"), add_generation_prompt=True)
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True,
                             return_dict_in_generate=True)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert out.past_key_values is not None and out.past_key_values.get_seq_length() >= batch["input_ids"].shape[1]
    # the cached result equals a full recomputation without cache
    nocache = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(out.sequences, nocache)


def test_batched_greedy_equals_one_by_one(tiny):
    model, processor = tiny
    convs = [_user(tone(0.8, 1), "first"), [{"role": "user", "content": "只有文字"}], _user(tone(2.6, 2))]
    batch = processor.apply_chat_template(convs, add_generation_prompt=True)
    together = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    width = batch["input_ids"].shape[1]
    for i, conv in enumerate(convs):
        single = processor.apply_chat_template(conv, add_generation_prompt=True)
        alone = model.generate(**single, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert together[i, width:].tolist() == alone[0, single["input_ids"].shape[1]:].tolist()


def test_chat_returns_text(tiny):
    model, _ = tiny
    reply = model.chat(audio=tone(1.0), text="Say something.", max_new_tokens=4)
    assert isinstance(reply, str)
    with pytest.raises(ValueError, match="unit head"):
        model.chat(text="hi", speak=True)


def test_cached_encoder_outputs_give_the_same_logits(tiny):
    """Stage 1's encoder cache path: tower states stored once (fp16), adaptor still applied live."""
    model, processor = tiny
    batch = processor.apply_chat_template([_user(tone(0.6, 1)), _user(tone(2.2, 2))], add_generation_prompt=True)
    with torch.no_grad():
        hidden, frames = model.encode_audio(batch["input_features"], batch["feature_attention_mask"])
        live = model(**batch).logits
        cached = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       feature_attention_mask=batch["feature_attention_mask"],
                       audio_encoder_outputs=hidden.half().float()).logits
    assert frames == [60, 220]
    assert torch.allclose(live, cached, atol=1e-2)


def test_prompt_cache_reuses_the_shared_prefix_and_matches_a_fresh_run(tiny):
    """chat(cache=PromptCache()) over a multi-turn conversation: the same replies as without it,
    fewer tokens through the LLM, and an edited earlier audio is encoded and run again."""
    from llasm.chat import PromptCache, user_turn

    model, _ = tiny
    lengths = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    cache, history = PromptCache(), []
    turns = [user_turn(tone(1.0, 1), "Say something."), user_turn(None, "And more?"),
             user_turn(tone(31.0, 2), "This one is long.")]  # two 30 s chunks
    try:
        for turn in turns:
            history.append(turn)
            lengths.clear()
            fresh = model.chat(history, max_new_tokens=4, min_new_tokens=4)
            full = lengths[0]
            lengths.clear()
            reused = model.chat(history, max_new_tokens=4, min_new_tokens=4, cache=cache)
            assert reused == fresh
            assert lengths[0] < full or len(history) == 1  # the first turn has nothing to reuse
            history.append({"role": "assistant", "content": reused})
        # the first audio replaced: everything from its first audio token on runs again
        edited = [user_turn(tone(1.0, 9), "Say something.")] + history[1:]
        lengths.clear()
        fresh = model.chat(edited, max_new_tokens=4, min_new_tokens=4)
        full = lengths[0]
        lengths.clear()
        assert model.chat(edited, max_new_tokens=4, min_new_tokens=4, cache=cache) == fresh
        patch = model.config.audio_patch_token_id
        ids = model.processor.apply_chat_template(edited, add_generation_prompt=True)["input_ids"][0].tolist()
        assert lengths[0] == full - ids.index(patch)
    finally:
        hook.remove()


def test_prompt_cache_is_cleared_when_generation_fails(tiny, monkeypatch):
    """A failure inside generate (here: the streamer) may leave the keys and values cropped or half
    extended, so the cache forgets everything and the next call runs the whole prompt correctly."""
    from llasm.chat import PromptCache, user_turn

    model, _ = tiny
    cache, history = PromptCache(), [user_turn(tone(1.0, 1), "Say something.")]
    history.append({"role": "assistant", "content": model.chat(history, max_new_tokens=4, cache=cache)})
    history.append(user_turn(None, "More?"))
    assert cache.ids

    class Broken:
        def put(self, value):
            raise RuntimeError("client went away")

        def end(self):
            pass

    with pytest.raises(RuntimeError, match="client went away"):
        model.chat(history, max_new_tokens=4, cache=cache, streamer=Broken())
    assert cache.past is None and cache.ids == [] and cache.chunks == []
    assert model.chat(history, max_new_tokens=4, cache=cache) == model.chat(history, max_new_tokens=4)
