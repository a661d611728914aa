"""CTC unit head (LLaMA-Omni): shapes, loss, -100 padding, causality, streaming, speak()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llasm.unit_head import CtcUnitHead, UnitHeadConfig, ctc_decode, speak, stream_units
from tests.conftest import TOKEN2WAV_KINDS, tiny_token2wav

D_LLM = 16


def make_head(seed: int = 0, **kw) -> CtcUnitHead:
    torch.manual_seed(seed)
    cfg = dict(num_units=20, upsample_factor=4, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    cfg.update(kw)
    return CtcUnitHead(UnitHeadConfig(**cfg), input_size=D_LLM).eval()


def test_shapes_and_config():
    head = make_head()
    hidden = torch.randn(2, 5, D_LLM)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    out = head(hidden, mask)
    assert out["log_probs"].shape == (2, 20, 21)
    assert out["lengths"].tolist() == [20, 12]
    assert torch.allclose(out["log_probs"].exp().sum(-1), torch.ones(2, 20), atol=1e-5)
    assert head.blank == 20
    assert UnitHeadConfig.from_dict(head.config.to_dict()) == head.config
    with pytest.raises(ValueError, match="unknown"):
        UnitHeadConfig.from_dict({"num_unit": 3})


def test_padding_does_not_change_outputs():
    head = make_head()
    hidden = torch.randn(2, 5, D_LLM)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    batch = head(hidden, mask)["log_probs"]
    alone = head(hidden[1:, :3])["log_probs"]
    torch.testing.assert_close(batch[1, :12], alone[0], atol=1e-5, rtol=1e-5)


def test_minus_100_padding_is_ignored():
    head = make_head()
    hidden = torch.randn(2, 5, D_LLM)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2])
    units = torch.tensor([[1, 2, 3, -100], [4, 5, -100, -100]])
    loss = head(hidden, mask, units)["loss"]
    assert torch.isfinite(loss)
    # same as the per-sample losses computed with unpadded targets
    singles = [head(hidden[i : i + 1, : int(mask[i].sum())], None, units[i : i + 1, : n])["loss"]
               for i, n in ((0, 3), (1, 2))]
    torch.testing.assert_close(loss, torch.stack(singles).mean(), atol=1e-5, rtol=1e-5)
    # padding with 0 (the LLaMA-Omni bug) would be unit 0 and give a different loss
    explicit = head(hidden, mask, units, unit_lengths=torch.tensor([3, 2]))["loss"]
    torch.testing.assert_close(loss, explicit)
    assert not torch.allclose(loss, head(hidden, mask, units.clamp(min=0))["loss"])
    with pytest.raises(ValueError, match="unit targets"):
        head(hidden, mask, torch.tensor([[1, 20], [1, 2]]))


def test_overfit_fixed_sequence():
    head = make_head().train()
    torch.manual_seed(1)
    hidden = torch.randn(1, 6, D_LLM)
    target = [3, 7, 7, 1, 12, 5, 9, 0, 4]  # includes a repeat: CTC needs a blank between
    units = torch.tensor([target + [-100, -100]])
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = head(hidden, None, units)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.2 * losses[0]
    head.eval()
    out = head(hidden)
    assert ctc_decode(out["log_probs"], out["lengths"]) == [target]


def test_text_embeddings_gate_fusion():
    """LLaMA-Omni 2's input: the state then the token's embedding; a wrong width is named; the
    token embedding changes the units (it is read); padding and causality still hold."""
    head = make_head(text_embeddings=True)
    states, embeds = torch.randn(2, 5, D_LLM), torch.randn(2, 5, D_LLM)
    out = head(torch.cat([states, embeds], -1), torch.tensor([[1] * 5, [1] * 3 + [0] * 2]))
    assert out["log_probs"].shape == (2, 20, 21)
    other = head(torch.cat([states, embeds.flip(0)], -1))["log_probs"]
    assert not torch.allclose(other, head(torch.cat([states, embeds], -1))["log_probs"])
    single = head(torch.cat([states, embeds], -1)[1:, :3])["log_probs"]
    torch.testing.assert_close(single[0], out["log_probs"][1, :12], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected 32 .*unit_head_inputs"):
        head(states)
    with pytest.raises(ValueError, match="expected 16"):
        make_head()(torch.cat([states, embeds], -1))
    loss = head(torch.cat([states, embeds], -1), units=torch.tensor([[1, 2, 3], [4, 5, -100]]))["loss"]
    loss.backward()
    assert head.text_proj.weight.grad.abs().sum() > 0 and head.gate.weight.grad.abs().sum() > 0


def test_causal():
    head = make_head()
    hidden = torch.randn(1, 6, D_LLM)
    changed = hidden.clone()
    changed[:, 4:] = torch.randn(1, 2, D_LLM)
    a, b = head(hidden)["log_probs"], head(changed)["log_probs"]
    lam = head.config.upsample_factor
    torch.testing.assert_close(a[:, : 4 * lam], b[:, : 4 * lam], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 4 * lam :], b[:, 4 * lam :])


def test_ctc_decode_rules():
    frames = torch.tensor([[0, 0, 3, 0, 1, 1, 3, 3, 2, 2]])  # 3 = the blank (the last class)
    log_probs = torch.nn.functional.one_hot(frames, 4).float().log()
    assert ctc_decode(log_probs) == [[0, 0, 1, 2]]
    assert ctc_decode(log_probs, [5]) == [[0, 0, 1]]
    assert ctc_decode(log_probs, [0]) == [[]]


@pytest.mark.parametrize("sizes", [[1] * 12, [3, 1, 5, 3], [12]])
def test_streaming_equals_full(sizes):
    head = make_head(seed=2, num_units=6, upsample_factor=3)  # few units -> long runs cross token boundaries
    hidden = torch.randn(12, D_LLM)
    full = ctc_decode(head(hidden[None])["log_probs"])[0]
    chunks = list(torch.split(hidden, sizes))
    streamed = list(stream_units(head, chunks))
    assert len(streamed) == len(chunks)
    assert [u for part in streamed for u in part] == full


def test_speak_with_vocoder():
    from llasm.speech.vocoder import UnitHifiGan
    from llasm.speech.vocoder_config import UnitVocoderConfig

    torch.manual_seed(0)
    vocoder = UnitHifiGan(UnitVocoderConfig(num_units=20, **_tiny_vocoder_kwargs()))
    head = make_head()
    audio = speak(head, torch.randn(5, D_LLM), vocoder)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size % 320 == 0 and audio.size > 0

    class Holder:
        unit_head = head

    np.testing.assert_array_equal(speak(Holder(), torch.randn(1, 5, D_LLM), vocoder).shape[0] % 320, 0)


def _tiny_vocoder_kwargs() -> dict:
    return {"embedding_dim": 8, "upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1]]}


def test_answer_hidden_states_match_teacher_forcing():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llasm.unit_head import answer_hidden_states

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=D_LLM, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2)).eval()
    prompt = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        out = lm.generate(prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                          output_hidden_states=True, pad_token_id=0)
        seq = out.sequences
        gen = seq[0, 4:].tolist()
        end = gen[-1]  # pretend the last generated token is the end of turn
        got = answer_hidden_states(out, end_ids=[end])
        full = lm(seq, output_hidden_states=True).hidden_states[-1][0]
    expected = torch.stack([full[4 + i] for i, t in enumerate(gen[:-1]) if t != end])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # state="output": the state that produced each token, one position earlier; every token has one
    produced = answer_hidden_states(out, end_ids=[end], state="output")
    expected = torch.stack([full[3 + i] for i, t in enumerate(gen) if t != end])
    torch.testing.assert_close(produced, expected, atol=1e-4, rtol=1e-4)
    # with the token embeddings (unit_head.text_embeddings): each state, then its own token's embedding
    embed = lm.get_input_embeddings()
    fused = answer_hidden_states(out, end_ids=[end], state="output", embed=embed)
    torch.testing.assert_close(fused[:, :D_LLM], expected)
    torch.testing.assert_close(fused[:, D_LLM:], embed(torch.tensor([t for t in gen if t != end])))
    with pytest.raises(ValueError, match="state must be"):
        UnitHeadConfig(state="middle")


@pytest.mark.parametrize("state", ["input", "output"])
def test_training_states_with_text_embeddings_match_inference(state):
    """``answer_states`` (training) gives each answer token its state, then its own token embedding,
    the same as ``unit_head_inputs`` on the states of a full forward pass (inference's convention)."""
    import llasm
    from llasm.io import load_yaml
    from tests.conftest import TINY_YAML

    model, _ = llasm.build_model(load_yaml(TINY_YAML))
    model.config.unit_head = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1,
                              "num_heads": 2, "intermediate_size": 64, "state": state, "text_embeddings": True}
    spoken = llasm.LlasmForConditionalGeneration(model.config).eval()
    ids = torch.randint(5, 100, (2, 9))
    unit_mask = torch.zeros(2, 9, dtype=torch.bool)
    unit_mask[0, 4:8], unit_mask[1, 3:6] = True, True
    with torch.no_grad():
        embeds = spoken.embed_inputs(ids)
        rows, keep = spoken.answer_states(embeds, torch.ones(2, 9, dtype=torch.long), unit_mask)
        hidden = spoken.language_model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1]
    shift = 1 if state == "output" else 0
    for b in range(2):
        positions = unit_mask[b].nonzero().flatten()
        expected = spoken.unit_head_inputs(hidden[b, positions - shift], ids[b, positions])
        torch.testing.assert_close(rows[b, keep[b]], expected, atol=1e-5, rtol=1e-5)
    assert keep.sum(-1).tolist() == [4, 3] and rows.shape[-1] == 2 * hidden.shape[-1]


@pytest.mark.parametrize("kind", TOKEN2WAV_KINDS)
def test_model_with_unit_head_speaks_and_checkpoints(tmp_path, kind):
    """Wiring: config.unit_head builds model.unit_head; chat(speak=True) returns text + 16 kHz audio
    through either token2wav (set as an object or as a saved directory)."""
    import numpy as np

    import llasm
    from llasm.io import load_yaml
    from tests.conftest import TINY_YAML

    model, _ = llasm.build_model(load_yaml(TINY_YAML))
    with pytest.raises(ValueError, match="lacks a unit head"):
        model.chat(text="hi", speak=True, max_new_tokens=3)
    with pytest.raises(ValueError, match="unit_targets given but the model has no unit head"):
        model(input_ids=torch.tensor([[1, 2]]), unit_targets=torch.tensor([[3]]), unit_mask=torch.ones(1, 2))
    config = model.config
    config.unit_head = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                        "intermediate_size": 64}
    spoken = llasm.LlasmForConditionalGeneration(config)
    spoken.load_state_dict(model.state_dict(), strict=False)
    spoken.processor = model.processor
    spoken.eval()
    assert spoken.unit_head is not None
    tiny_token2wav(kind).save_pretrained(tmp_path / "voice")
    assert spoken.set_vocoder(tmp_path / "voice") is None  # a directory of either kind; a REPL prints nothing
    assert type(spoken.vocoder).__name__ == type(tiny_token2wav(kind)).__name__
    torch.manual_seed(0)
    with torch.no_grad():
        for p in spoken.unit_head.parameters():  # make some unit win over the blank
            p.add_(torch.randn_like(p) * 0.5)
    text, audio = spoken.chat(text="hi", speak=True, max_new_tokens=4, min_new_tokens=4)
    assert isinstance(text, str) and isinstance(audio, np.ndarray) and audio.dtype == np.float32
    assert len(audio) > 0 and len(audio) % (320 if kind == "unit_hifigan" else 200) == 0  # 50 Hz units | 80 Hz mels
    from llasm.chat import PromptCache, user_turn

    cache = PromptCache()  # a second turn speaks the same with the first turn's keys and values reused
    first, _ = spoken.chat(text="hi", speak=True, max_new_tokens=4, min_new_tokens=4, cache=cache)
    history = [user_turn(None, "hi"), {"role": "assistant", "content": first}, user_turn(None, "more")]
    fresh = spoken.chat(history, speak=True, max_new_tokens=4, min_new_tokens=4)
    reused = spoken.chat(history, speak=True, max_new_tokens=4, min_new_tokens=4, cache=cache)
    assert reused[0] == fresh[0] and np.allclose(reused[1], fresh[1], atol=1e-5)
    spoken.save_pretrained(tmp_path / "s")
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "s")
    saved, original = loaded.unit_head.state_dict(), spoken.unit_head.state_dict()
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)


def speaking_model(kind: str, **unit_head):
    """The tiny model with a small random unit head (these settings) whose units win over the blank, and a
    tiny token2wav of ``kind``."""
    import llasm
    from llasm.io import load_yaml
    from tests.conftest import TINY_YAML

    model, processor = llasm.build_model(load_yaml(TINY_YAML))
    model.config.unit_head = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1,
                              "num_heads": 2, "intermediate_size": 64, **unit_head}
    spoken = llasm.LlasmForConditionalGeneration(model.config)
    spoken.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in spoken.unit_head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    spoken.processor = processor
    spoken.eval()
    spoken.set_vocoder(tiny_token2wav(kind))
    return spoken


@pytest.mark.parametrize("state,kind,fused", [("input", "unit_hifigan", False), ("output", "unit_hifigan", False),
                                              ("output", "unit_mel", False), ("input", "unit_hifigan", True),
                                              ("output", "unit_hifigan", True)])
def test_chat_stream_speaks_as_it_generates(state, kind, fused):
    """Streaming speech: text and audio events; together they equal chat(speak=True) (the unit HiFi-GAN
    exactly; Griffin-Lim, global, in length)."""
    import numpy as np

    spoken = speaking_model(kind, state=state, text_embeddings=fused)
    events = list(spoken.chat_stream(text="hi", max_new_tokens=6, chunk_units=4, first_chunk_context=None))
    kinds = [k for k, _ in events]
    assert "text" in kinds and "audio" in kinds and kinds.index("text") < kinds.index("audio")
    streamed_text = "".join(v for k, v in events if k == "text").strip()
    streamed_audio = np.concatenate([v for k, v in events if k == "audio"])
    # with state "input", generate() gives no hidden state for a last token cut by max_new_tokens; the
    # stream speaks all 6 tokens, so compare with a 7-token chat whose first 6 tokens have states
    text, audio = spoken.chat(text="hi", speak=True, max_new_tokens=7 if state == "input" else 6)
    assert streamed_text  # (byte-fallback pieces may render differently one by one than all at once)
    assert streamed_audio.shape == audio.shape
    if kind == "unit_hifigan":
        assert np.abs(streamed_audio - audio).max() <= 1e-4 * max(1e-6, np.abs(audio).max())
    # the default (first chunk without right context) gives the same amount of audio
    fast = [v for k, v in spoken.chat_stream(text="hi", max_new_tokens=6, chunk_units=4) if k == "audio"]
    assert sum(len(c) for c in fast) == len(audio)


@pytest.mark.parametrize("kind", ["unit_hifigan", "unit_mel"])
def test_phoneme_head_speaks_streams_and_checkpoints(tmp_path, kind):
    """``unit_head.input: phonemes``: chat(speak=True) speaks the reply's text; chat_stream feeds the text
    as it comes and gives the same audio (the unit HiFi-GAN exactly); the inventory survives a checkpoint."""
    import llasm
    from llasm.unit_head import text_units

    spoken = speaking_model(kind, input="phonemes")
    assert spoken.config.unit_head["phonemes"][:4] == ["<pad>", "<unk>", "<en>", "<zh>"]
    text, audio = spoken.chat(text="hi", speak=True, max_new_tokens=8, min_new_tokens=8)
    units = text_units(spoken, text)
    assert units and len(audio) == len(spoken.vocoder.synthesize(units))
    events = list(spoken.chat_stream(text="hi", max_new_tokens=8, chunk_units=4, first_chunk_context=None))
    streamed = np.concatenate([v for k, v in events if k == "audio"])
    # (the tiny LLM's byte-fallback pieces may render differently one by one: speak what was streamed)
    whole = spoken.vocoder.synthesize(text_units(spoken, "".join(v for k, v in events if k == "text")))
    assert streamed.shape == whole.shape
    if kind == "unit_hifigan":
        assert np.abs(streamed - whole).max() <= 1e-4 * max(1e-6, np.abs(whole).max())
    spoken.save_pretrained(tmp_path / "s")
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "s")
    assert loaded.config.unit_head["phonemes"] == spoken.config.unit_head["phonemes"]
    assert text_units(loaded, text) == units


def test_a_loaded_unit_head_computes_what_was_saved(tmp_path):
    """The head's rotary table is a buffer no checkpoint holds: from_pretrained must rebuild it (it once
    came back as uninitialized memory, so a loaded head spoke without positions)."""
    import llasm
    from llasm.io import load_yaml
    from tests.conftest import TINY_YAML

    model, _ = llasm.build_model(load_yaml(TINY_YAML))
    model.config.unit_head = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1,
                              "num_heads": 2, "intermediate_size": 64}
    spoken = llasm.LlasmForConditionalGeneration(model.config).eval()
    spoken.save_pretrained(tmp_path / "s")
    loaded = llasm.LlasmForConditionalGeneration.from_pretrained(tmp_path / "s").eval()
    torch.testing.assert_close(loaded.unit_head.rotary_emb.inv_freq, spoken.unit_head.rotary_emb.inv_freq)
    states = torch.randn(1, 5, model.config.text_config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.unit_head(states)["log_probs"], spoken.unit_head(states)["log_probs"])
