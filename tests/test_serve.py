"""`llasm serve`: the page logic (respond/history) with the tiny model, and the page end to end in
headless Chromium (slow)."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llasm.apps.serve import describe_error, last_speech, model_messages, respond, to_chatbot, user_message
from tests.conftest import ROOT, tone

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _run(history, audio, text, model, **kw):
    states = list(respond(history, audio, text, model=model, max_new_tokens=kw.pop("max_new_tokens", 6), **kw))
    return states


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "q.wav"
    sf.write(path, tone(1.0), 16000)
    return path


@pytest.fixture
def recorded(tiny, monkeypatch):
    """The tiny model with model.chat spied on: the messages of every call are recorded."""
    model, _ = tiny
    calls = []
    real = model.chat

    def spy(messages=None, **kwargs):
        calls.append({"messages": messages, **kwargs})
        return real(messages, **kwargs)

    monkeypatch.setattr(model, "chat", spy)
    return model, calls


def test_audio_and_text_turn_streams_a_reply(recorded, wav):
    model, calls = recorded
    states = _run([], str(wav), "  what is this?  ", model)
    first, final = states[0], states[-1]
    # the user turn shows at once, with an empty reply placeholder
    assert first[0] == {"role": "user", "content": [{"type": "audio", "audio": str(wav)},
                                                    {"type": "text", "text": "what is this?"}]}
    assert first[1] == {"role": "assistant", "content": ""}
    assert len(final) == 2 and final[1]["role"] == "assistant" and "error" not in final[1]
    assert calls[0]["messages"] == [first[0]] and calls[0]["streamer"] is not None
    assert "speak" not in calls[0]  # the tiny model has no unit head
    # streamed pieces only grow, and the final reply is what model.chat returned (greedy)
    texts = [s[1]["content"] for s in states[1:]]
    assert all(b.startswith(a.strip()) or not a for a, b in zip(texts, texts[1:]))
    assert final[1]["content"] == model.chat([first[0]], max_new_tokens=6)
    assert last_speech(final) is None


def test_multi_turn_history_is_sent_back(recorded, wav):
    model, calls = recorded
    h1 = _run([], str(wav), None, model)[-1]
    h2 = _run(h1, None, "and in Chinese?", model)[-1]
    h3 = _run(h2, str(wav), "once more", model)[-1]
    assert [m["role"] for m in h3] == ["user", "assistant"] * 3
    assert calls[1]["messages"] == h1 + [{"role": "user", "content": [{"type": "text", "text": "and in Chinese?"}]}]
    assert calls[2]["messages"] == h2 + [h3[4]]
    assert h1 == h3[:2]  # earlier turns are not rewritten
    # nothing to send: history unchanged, model untouched
    assert _run(h3, None, "   ", model) == [h3] and len(calls) == 3


def test_a_prompt_cache_gives_the_same_replies_with_fewer_tokens(tiny, wav):
    """The page's shared PromptCache: the same streamed replies, later turns run only what is new,
    and a second conversation in between (another visitor) is answered as if alone."""
    from llasm.chat import PromptCache

    model, _ = tiny
    lengths = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    cache, plain, cached = PromptCache(), [], []
    try:
        for text in ("first", "second", "third"):
            plain = _run(plain, str(wav), text, model)[-1]
            lengths.clear()
            cached = _run(cached, str(wav), text, model, cache=cache)[-1]
            assert cached == plain
            full = model.processor.apply_chat_template(model_messages(cached[:-1]), add_generation_prompt=True)
            full = full["input_ids"].shape[1]
            assert lengths[0] == full if text == "first" else lengths[0] < full  # prompt tokens run
        other = _run([], None, "someone else", model, cache=cache)[-1]
        assert other == _run([], None, "someone else", model)[-1]
    finally:
        hook.remove()


def test_bad_audio_gives_a_message_and_is_left_out_of_the_conversation(recorded, tmp_path, wav):
    model, calls = recorded
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"this is not audio")
    h1 = _run([], str(wav), "hi", model)[-1]
    h2 = _run(h1, str(bad), "and this?", model)[-1]
    reply = h2[-1]
    assert reply["error"] is True and reply["content"].startswith("⚠️ Unusable audio: broken.wav: cannot decode audio")
    assert str(tmp_path) not in reply["content"]  # the temporary upload path is not shown
    assert "Traceback" not in reply["content"]
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(100, np.float32), 16000)
    h3 = _run(h2, str(short), None, model)[-1]
    assert h3[-1]["error"] and "short.wav" in h3[-1]["content"]
    # the failed exchanges stay visible but are not sent to the model again
    h4 = _run(h3, None, "go on", model)[-1]
    assert calls[-1]["messages"] == h1 + [h4[-2]]
    assert model_messages(h4) == h1 + [h4[-2], {"role": "assistant", "content": h4[-1]["content"]}]
    shown = to_chatbot(h4)
    assert shown[3]["content"].startswith("⚠️ Unusable audio: broken.wav")
    assert shown[2]["content"][0] == {"path": str(bad)}


def test_other_failures_are_reported_not_raised(tiny):
    model, _ = tiny

    class Broken:
        processor = model.processor

        def chat(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    final = list(respond([], None, "hi", model=Broken()))[-1]
    assert final[-1] == {"role": "assistant", "content": "⚠️ The model failed (RuntimeError): out of memory",
                         "error": True}
    assert describe_error(ValueError()) == "The model failed (ValueError)"


class _Speaker:
    """A stand-in for a model with a unit head: streams two tokens, returns (text, waveform)."""

    unit_head = object()
    vocoder = object()

    def __init__(self, processor):
        self.processor = processor
        self.calls = []

    def chat(self, messages, *, max_new_tokens, streamer, **kwargs):
        import torch

        self.calls.append(kwargs)
        ids = self.processor.tokenizer("hello there world", add_special_tokens=False)["input_ids"]
        streamer.put(torch.tensor([[0]]))  # the prompt (skipped)
        for i in ids:
            streamer.put(torch.tensor([i]))
        streamer.end()
        return "hello there world", np.ones(1600, np.float32)


def test_speech_reply_is_kept_for_the_player(tiny):
    model, _ = tiny
    speaker = _Speaker(model.processor)
    states = list(respond([], None, "say hi", model=speaker))
    assert speaker.calls == [{"speak": True}]
    assert len(states) >= 3  # user turn, streamed piece(s), final
    rate, wav = last_speech(states[-1])
    assert rate == 16000 and wav.shape == (1600,) and wav.dtype == np.float32
    assert states[-1][-1]["content"] == "hello there world"
    assert "speech" not in model_messages(states[-1])[-1]
    assert to_chatbot(states[-1])[-1] == {"role": "assistant", "content": "hello there world"}


def test_a_unit_head_without_vocoder_replies_in_text(tiny):
    from llasm.apps.serve import can_speak

    model, _ = tiny
    speaker = _Speaker(model.processor)
    speaker.vocoder = None
    assert not can_speak(speaker)
    list(respond([], None, "say hi", model=speaker))
    assert speaker.calls == [{}]


def test_user_message_and_app_builds(tiny):
    model, _ = tiny
    assert user_message(None, "  ") is None and user_message("", None) is None
    assert user_message(None, "x") == {"role": "user", "content": [{"type": "text", "text": "x"}]}
    from llasm.apps.serve import build_app

    app = build_app(model, max_new_tokens=4)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"llasm-chat", "llasm-audio", "llasm-text", "llasm-send", "llasm-clear", "llasm-speech"} <= ids


def test_cli_arguments(monkeypatch, tmp_path, tiny):
    """main() parses its flags and binds to 127.0.0.1 with the upload cap by default."""
    import llasm.apps.serve as serve

    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    seen = {}
    monkeypatch.setattr(serve, "launch", lambda app, **kw: seen.update(kw))
    assert serve.main(["--model", str(tmp_path / "m"), "--max-new-tokens", "5"]) == 0
    assert seen == {"host": "127.0.0.1", "port": 7860, "max_upload_mb": 20}


# -- end to end -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"llasm serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"llasm serve did not answer at {url} within {timeout}s")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium "
                                                    "(apt-get install chromium chromium-driver)")
def test_page_end_to_end_in_chromium(tiny, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    wav = tmp_path / "question.wav"
    sf.write(wav, tone(1.5), 16000)
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llasm.apps.serve", "--model", str(tmp_path / "m"), "--port", str(port),
         "--max-upload-mb", "1", "--max-new-tokens", "12"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    driver = None
    try:
        _wait_http(url, proc)
        # the upload cap is enforced by the server (2 MB > --max-upload-mb 1)
        big = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.wav\"\r\n\r\n" + \
            b"0" * (2 << 20) + b"\r\n--x--\r\n"
        request = urllib.request.Request(url + "gradio_api/upload", data=big,
                                         headers={"Content-Type": "multipart/form-data; boundary=x"})
        with pytest.raises(urllib.error.HTTPError) as too_big:
            urllib.request.urlopen(request, timeout=30)
        assert too_big.value.code == 413

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                     "--window-size=1280,1000"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#llasm-audio input[type=file]")))
        upload.send_keys(str(wav))
        # the uploaded file shows as a player before we send
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#llasm-audio audio, #llasm-audio .waveform-container,"
                                                                    " #llasm-audio [data-testid='waveform-Spoken question']")))
        driver.find_element(By.CSS_SELECTOR, "#llasm-text textarea").send_keys("What is this?")
        driver.find_element(By.CSS_SELECTOR, "#llasm-send").click()

        def reply_text(d):
            bots = d.find_elements(By.CSS_SELECTOR, "#llasm-chat [data-testid='bot']")
            text = bots[-1].text.strip() if bots else ""
            return text or False

        wait.until(reply_text)
        # the reply is finished when the input is cleared again (the .then() after the stream)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#llasm-text textarea").get_attribute("value") == "")
        users = driver.find_elements(By.CSS_SELECTOR, "#llasm-chat [data-testid='user']")
        assert any("What is this?" in u.text for u in users)
        assert "Error" not in driver.find_element(By.CSS_SELECTOR, "#llasm-chat").text
        out = ROOT / "test-artifacts"
        out.mkdir(exist_ok=True)
        driver.save_screenshot(str(out / "serve.png"))
        assert (out / "serve.png").stat().st_size > 10_000
        # Clear empties the conversation
        driver.find_element(By.CSS_SELECTOR, "#llasm-clear").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#llasm-chat [data-testid='bot']"))
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _speaking_model(tiny, kind: str):
    """The tiny model with a random unit head (units win over the blank) and a tiny token2wav of ``kind``."""
    import torch

    import llasm
    from tests.conftest import tiny_token2wav

    model, processor = tiny
    config = copy.deepcopy(model.config)  # the shared tiny model keeps its own config
    config.unit_head = {"num_units": 20, "upsample_factor": 3, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                        "intermediate_size": 64}
    spoken = llasm.LlasmForConditionalGeneration(config)
    spoken.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in spoken.unit_head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    spoken.processor = processor
    spoken.set_vocoder(tiny_token2wav(kind))
    return spoken.eval()


@pytest.mark.parametrize("kind", ["unit_hifigan", "unit_mel"])
def test_a_real_spoken_reply_reaches_the_player(tiny, kind):
    """The page logic with a real unit head and either token2wav: the last state holds 16 kHz speech."""
    spoken = _speaking_model(tiny, kind)
    states = list(respond([], None, "hi", model=spoken, max_new_tokens=6))
    rate, wav = last_speech(states[-1])
    assert rate == 16000 and wav.dtype == np.float32 and len(wav) > 0


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium "
                                                    "(apt-get install chromium chromium-driver)")
def test_page_plays_a_spoken_reply_in_chromium(tiny, tmp_path):
    """`llasm serve --vocoder DIR` with a unit_mel token2wav: a typed question gets a spoken reply; the wav
    the page's player holds is served and plays in the browser (its clock advances)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import tiny_token2wav

    spoken = _speaking_model(tiny, "unit_mel")
    spoken.save_pretrained(tmp_path / "m")
    tiny_token2wav("unit_mel").save_pretrained(tmp_path / "voice")
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llasm.apps.serve", "--model", str(tmp_path / "m"), "--vocoder", str(tmp_path / "voice"),
         "--port", str(port), "--max-new-tokens", "8"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    driver = None
    try:
        _wait_http(url, proc)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
                     "--autoplay-policy=no-user-gesture-required", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1000"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#llasm-text textarea"))
        driver.find_element(By.CSS_SELECTOR, "#llasm-text textarea").send_keys("hi")
        driver.find_element(By.CSS_SELECTOR, "#llasm-send").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#llasm-text textarea").get_attribute("value") == "")
        # the player's file (Gradio's waveform player loads it; its download link names it)
        link = "#llasm-speech a[data-testid='download-link'][href$='.wav']"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, link))
        href = driver.find_element(By.CSS_SELECTOR, link).get_attribute("href")
        with urllib.request.urlopen(href, timeout=30) as response:
            assert response.read(4) == b"RIFF"
        driver.set_script_timeout(60)
        played = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const audio = new Audio(arguments[0]);
            audio.muted = true;
            audio.play().then(() => setTimeout(() => done({duration: audio.duration, time: audio.currentTime,
                                                           error: audio.error && audio.error.code}), 300))
                 .catch(e => done({failed: String(e)}));
        """, href)
        assert "failed" not in played, played
        assert played["error"] is None and played["duration"] > 0 and played["time"] > 0, played
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
