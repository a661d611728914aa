"""The `llasm` command: dispatch, chat (one-shot and interactive), export."""

import io
import json
import sys

import pytest
import soundfile as sf

from llasm import cli
from tests.conftest import tone


def test_help_lists_commands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in ("chat", "serve", "eval", "export", "convert-llasm", "starter-models", "prepare-asr", "synthesize"):
        assert name in out
    assert cli.main(["no-such-command"]) == 2


def test_python_dash_m_llasm_is_the_command():
    import subprocess

    run = subprocess.run([sys.executable, "-m", "llasm", "no-such-command"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "commands:" in run.stdout and "chat" in run.stdout


def test_every_help_is_complete_and_quick():
    """`llasm COMMAND --help` for every command, in a fresh process: each answers (train with its keys,
    what a run writes and how to resume), and none imports torch, transformers or other heavy packages."""
    import subprocess

    script = (
        "import contextlib, io, json, sys, time\n"
        "from llasm import cli\n"
        "out = {}\n"
        "for name in cli.COMMANDS:\n"
        "    buf, t = io.StringIO(), time.time()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            rc = cli.main([name, '--help'])\n"
        "        except SystemExit as e:\n"
        "            rc = e.code\n"
        "    out[name] = [rc, buf.getvalue(), time.time() - t]\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'matplotlib', 'gradio', 'accelerate') if m in sys.modules]\n"
        "print(json.dumps({'help': out, 'heavy': heavy}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    for name, (rc, text, seconds) in report["help"].items():
        assert rc == 0 and text.startswith(f"usage: llasm {name}"), (name, text[:200])
        assert seconds < 3, (name, seconds)  # loose: the point is that nothing heavy loads
    train = report["help"]["train"][1]
    for words in ("train.warmup_steps = 0", "data.sources", "resume", "checkpoint-N/", "final/", "torchrun",
                  "model=runs/stage1_asr_align/final", "Alpaca"):
        assert words in train, words
    assert "see train/train.py" not in train


def test_chat_starts_with_a_turn_and_goes_on(tiny, tmp_path, capsys, monkeypatch):
    """--audio/--text start the conversation; stdin continues it; labels go to stderr, replies to stdout."""
    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    wav = tmp_path / "q.wav"
    sf.write(wav, tone(1.0), 16000)
    class Terminal(io.StringIO):  # a person typing: prompts and labels are shown
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("never read\n"))
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--text", "hi", "--once", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err.count("llasm> ") == 1
    monkeypatch.setattr(sys, "stdin", Terminal("and why?\n"))
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--audio", str(wav), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2  # the spoken question's reply, then the typed one's
    assert captured.err.count("llasm> ") == 2 and f"you> [audio {wav}]" in captured.err
    assert captured.err.count("you> ") == 3  # the first turn, the typed one, and the prompt that met the end
    monkeypatch.setattr(sys, "stdin", io.StringIO("and why?\n"))  # piped: the replies only
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--text", "hi", "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2 and "llasm> " not in captured.err


def test_chat_one_shot_and_interactive(tiny, tmp_path, capsys, monkeypatch):
    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    wav = tmp_path / "q.wav"
    sf.write(wav, tone(1.0), 16000)
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--audio", str(wav), "--text", "hi",
                     "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--audio", str(tmp_path / "gone.wav")]) == 1
    assert "gone.wav: file not found" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"hello\n/audio {wav} what is this\n/audio {tmp_path}/x.wav\n/quit\n"))
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2  # two replies; the bad file only printed an error
    assert "x.wav: file not found" in captured.err


def test_export_writes_full_checkpoint(tiny_bases, tmp_path):
    import llasm

    model, _ = llasm.build_model(tiny_bases)
    model.save_pretrained(tmp_path / "parts")
    assert cli.main(["export", str(tmp_path / "parts"), str(tmp_path / "full")]) == 0
    assert json.loads((tmp_path / "full" / "config.json").read_text())["checkpoint_format"] == "full"


def test_chat_speak_needs_a_vocoder_and_a_unit_head(tiny, tmp_path, capsys):
    from tests.conftest import tiny_token2wav

    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    speak = ["chat", "--model", str(tmp_path / "m"), "--text", "hi", "--speak", str(tmp_path / "r.wav")]
    with pytest.raises(SystemExit) as stop:  # said before the model loads
        cli.main(speak)
    assert stop.value.code == 2 and "--speak needs --vocoder DIR" in capsys.readouterr().err
    for argv, said in ((["chat", "--model", str(tmp_path / "m"), "--speak", "r.wav", "--vocoder", str(tmp_path)],
                        "--speak speaks the reply to one turn: give it --text"),
                       ([*speak, "--vocoder", str(tmp_path / "nowhere")], "nowhere: not a token2wav directory")):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err
    tiny_token2wav("unit_mel").save_pretrained(tmp_path / "voc")
    assert cli.main([*speak, "--vocoder", str(tmp_path / "voc")]) == 1
    assert "unit head" in capsys.readouterr().err


@pytest.mark.parametrize("kind,head", [("unit_hifigan", "states"), ("unit_mel", "states"), ("unit_mel", "phonemes")])
def test_chat_speak_writes_a_wav(tmp_path, capsys, kind, head):
    """`llasm chat --vocoder DIR --speak out.wav` with either token2wav directory and either unit head."""
    import soundfile
    import torch

    import llasm
    from llasm.io import load_yaml
    from tests.conftest import TINY_YAML, tiny_token2wav

    spec = load_yaml(TINY_YAML)
    model, processor = llasm.build_model(spec)
    model.config.unit_head = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1,
                              "num_heads": 2, "intermediate_size": 64, "input": head}
    spoken = llasm.LlasmForConditionalGeneration(model.config)
    spoken.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in spoken.unit_head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    spoken.processor = processor
    spoken.save_pretrained(tmp_path / "m")
    tiny_token2wav(kind).save_pretrained(tmp_path / "voc")
    out = tmp_path / "reply.wav"
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--vocoder", str(tmp_path / "voc"), "--text", "hi",
                     "--max-new-tokens", "4", "--speak", str(out)]) == 0
    assert "spoken reply" in capsys.readouterr().err
    frames = soundfile.info(out).frames  # load_audio would refuse a one-unit reply (< 25 ms) as input audio
    assert frames > 0 and frames % (320 if kind == "unit_hifigan" else 200) == 0  # 50 Hz units | 80 Hz mels


def test_audio_command_takes_the_first_word_as_path_and_the_rest_verbatim(tmp_path, monkeypatch):
    import pytest

    from llasm.apps.chat_cli import parse_audio_command

    assert parse_audio_command("/audio clip.wav what's in this recording?") == ("clip.wav", "what's in this recording?")
    assert parse_audio_command("/audio Bob's_question.wav") == ("Bob's_question.wav", None)
    assert parse_audio_command('/audio "my clip.wav"  say  "hi"  ') == ("my clip.wav", 'say  "hi"')
    assert parse_audio_command("/audio 'my clip.wav' it's") == ("my clip.wav", "it's")
    assert parse_audio_command(r"/audio my\ clip.wav it's") == ("my clip.wav", "it's")
    assert parse_audio_command("/audio 'tis.wav hi") == ("'tis.wav", "hi")  # an unclosed quote is part of the name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my clip.wav").write_bytes(b"")
    assert parse_audio_command("/audio my clip.wav what's this") == ("my clip.wav", "what's this")
    with pytest.raises(ValueError, match="usage: /audio FILE"):
        parse_audio_command("/audio   ")


def test_interactive_chat_survives_bad_lines(tiny, tmp_path, capsys, monkeypatch):
    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    wav = tmp_path / "Bob's_question.wav"
    sf.write(wav, tone(1.0), 16000)
    lines = [f"/audio {wav} what's in this recording?", "/audio", "/frobnicate", f"/audio {tmp_path}/it's gone.wav ok",
             '/audio "unclosed.wav', "/reset", "and now text", "/quit", "never read"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    assert cli.main(["chat", "--model", str(tmp_path / "m"), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2  # the spoken turn and the text turn were answered
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: usage: /audio FILE [text]",
                      "error: unknown command /frobnicate; type text, '/audio FILE [text]', '/reset', '/help' or '/quit'",
                      f"error: {tmp_path}/it's: file not found", 'error: "unclosed.wav: file not found']
