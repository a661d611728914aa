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
