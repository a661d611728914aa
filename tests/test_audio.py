"""load_audio: formats, mixing, resampling, and a clear AudioError for every kind of bad input."""

import numpy as np
import pytest
import soundfile as sf

from llasm import AudioError, load_audio
from llasm.audio import save_audio
from tests.conftest import tone


@pytest.mark.parametrize("ext,fmt,subtype", [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"),
                                            ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")])
def test_decodes_common_formats_to_16k_mono(tmp_path, ext, fmt, subtype):
    sr = 44_100
    t = np.arange(sr) / sr
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 440 * t)], axis=1)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, stereo, sr, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16_000) <= 1200  # mp3/ogg encoders add a little padding
    # the resampled tone keeps its pitch: the spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(audio[:16000] if len(audio) >= 16000 else audio, n=16000))
    assert abs(np.argmax(spectrum) - 440) <= 2


def test_array_inputs_and_mixing():
    mono = tone(1.0)
    assert np.array_equal(load_audio(mono), mono)
    stereo = np.stack([mono, mono], axis=1)
    np.testing.assert_allclose(load_audio(stereo), mono, atol=1e-7)
    assert len(load_audio((tone(1.0), 8000))) == 2 * 16000  # (array, rate) is resampled
    assert len(load_audio({"array": mono, "sampling_rate": 16000})) == 16000
    pcm = (mono * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm), mono, atol=1e-3)


def test_save_audio_is_atomic_roundtrip(tmp_path):
    path = save_audio(tmp_path / "x.flac", tone(0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.flac"]
    assert len(load_audio(path)) == 8000


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_audio(tmp_path / "nope.wav")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: file is empty \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav")


def test_non_audio_content(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio at all")
    with pytest.raises(AudioError, match=r"notes\.wav: cannot decode audio"):
        load_audio(tmp_path / "notes.wav")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, tone(2.0), 16000, format="FLAC")
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(AudioError, match=r"cut\.flac: "):
        load_audio(path)


def test_zero_samples(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0,), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav: 0 samples after decoding"):
        load_audio(path)


def test_nan_and_inf_samples(tmp_path):
    bad = tone(1.0)
    bad[100] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(bad)
    path = tmp_path / "inf.wav"
    bad[100] = np.inf
    sf.write(path, bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"inf\.wav: contains NaN or infinite samples"):
        load_audio(path)


def test_too_short_to_encode(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, tone(0.01), 16000)
    with pytest.raises(AudioError, match=r"blip\.wav: too short to encode \(160 samples"):
        load_audio(path)


def test_audio_error_is_value_error():
    assert issubclass(AudioError, ValueError)


# -- every form the Python audio ecosystem hands over ----------------------------------------------
@pytest.mark.parametrize("dtype,samples,expected", [
    (np.int16, [-32768, 0, 16384, 32767], [-1.0, 0.0, 0.5, 32767 / 32768]),
    (np.int32, [-2**31, 0, 2**30, 2**31 - 1], [-1.0, 0.0, 0.5, (2**31 - 1) / 2**31]),
    (np.int8, [-128, 0, 64, 127], [-1.0, 0.0, 0.5, 127 / 128]),
    (np.uint8, [0, 128, 192, 255], [-1.0, 0.0, 0.5, 127 / 128]),  # 8-bit WAV: unsigned, centred at 128
    (np.uint16, [0, 32768, 49152, 65535], [-1.0, 0.0, 0.5, 32767 / 32768]),
    (np.uint32, [0, 2**31, 3 * 2**30, 2**32 - 1], [-1.0, 0.0, 0.5, (2**31 - 1) / 2**31]),
    (np.float16, [-1.0, 0.0, 0.5, 0.25], [-1.0, 0.0, 0.5, 0.25]),
    (np.float32, [-1.0, 0.0, 0.5, 0.25], [-1.0, 0.0, 0.5, 0.25]),
    (np.float64, [-1.0, 0.0, 0.5, 0.25], [-1.0, 0.0, 0.5, 0.25]),
])
def test_every_dtype_decodes_to_its_values(dtype, samples, expected):
    import torch

    pcm = np.tile(np.asarray(samples, dtype=dtype), 200)  # 800 samples at 16 kHz
    decoded = load_audio(pcm)
    assert decoded.dtype == np.float32 and decoded.shape == (800,)
    np.testing.assert_allclose(decoded[:4], expected, rtol=0, atol=1e-7)
    if dtype not in (np.uint16, np.uint32):  # torch has no such tensors
        np.testing.assert_allclose(load_audio(torch.from_numpy(pcm))[:4], expected, rtol=0, atol=1e-7)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(load_audio(torch.from_numpy(pcm.astype(np.float32)).bfloat16())[:4], expected,
                                   atol=1e-2)


def test_rate_array_pairs_as_scipy_and_gradio_give_them(tmp_path):
    from scipy.io import wavfile

    sr = 48_000
    t = np.arange(sr) / sr
    pcm = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    wavfile.write(tmp_path / "a.wav", sr, pcm)
    rate, data = wavfile.read(tmp_path / "a.wav")  # what gr.Audio(type="numpy") hands over too
    from_pair = load_audio((rate, data))
    assert len(from_pair) == 16_000
    np.testing.assert_allclose(from_pair, load_audio(tmp_path / "a.wav"), atol=1e-6)  # same as soundfile's decode
    np.testing.assert_allclose(load_audio((data, rate)), from_pair)
    np.testing.assert_allclose(load_audio([rate, data]), from_pair)
    stereo = np.stack([data, data], axis=1)  # (samples, channels), as scipy reads a stereo file
    np.testing.assert_allclose(load_audio((rate, stereo)), from_pair, atol=1e-6)
    assert abs(np.abs(from_pair).max() - 0.5) < 0.01  # scaled to [-1, 1], not left at 16000


def test_dicts_bytes_urls_base64_and_message_parts(tmp_path):
    import base64
    import http.server
    import threading
    from functools import partial

    from llasm.audio import audio_part_source

    clip = tone(0.5)
    path = tmp_path / "c.wav"
    sf.write(path, clip, 16000, subtype="FLOAT")
    raw = path.read_bytes()
    b64 = base64.b64encode(raw).decode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler,
                                                                       directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/c.wav"
    try:
        forms = [
            {"array": clip, "sampling_rate": 16000}, {"path": str(path)}, {"bytes": raw, "path": None}, raw,
            open(path, "rb"), path.as_uri(), url, f"data:audio/wav;base64,{b64}", b64,
            {"type": "audio", "audio": clip}, {"type": "audio", "path": str(path)}, {"type": "audio", "url": url},
            {"type": "audio", "base64": b64}, {"type": "audio_url", "audio_url": {"url": path.as_uri()}},
            {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
        ]
        for form in forms:
            np.testing.assert_allclose(load_audio(form), clip, atol=1e-7, err_msg=repr(form)[:80])
    finally:
        server.shutdown()
    import types

    import torch

    decoder = types.SimpleNamespace(get_all_samples=lambda: types.SimpleNamespace(  # torchcodec's AudioDecoder API
        data=torch.from_numpy(np.stack([clip, clip])), sample_rate=16000))  # (channels, samples), as it gives them
    np.testing.assert_allclose(load_audio(decoder), clip, atol=1e-7)
    with pytest.raises(AudioError, match=r"has no audio: give one of the keys audio, url, path, base64"):
        audio_part_source({"type": "audio", "file": "x.wav"})


def test_unusable_forms_say_what_is_accepted():
    with pytest.raises(AudioError, match=r"unsupported audio input type int; accepted: a path .*\(rate, array\) pair"):
        load_audio(48000)
    with pytest.raises(AudioError, match=r"int64 samples have no PCM scale; cast them"):
        load_audio(np.arange(1000))
    with pytest.raises(AudioError, match="dtype bool, expected int or float samples"):
        load_audio(np.ones(1000, dtype=bool))
    with pytest.raises(AudioError, match="file not found"):
        load_audio("Bob's_question.wav")
    with pytest.raises(AudioError, match=r"file not found \(nor base64-encoded audio\)"):
        load_audio("A" * 100)
