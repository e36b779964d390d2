import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omniformer.config import AudioConfig
from omniformer.data.audio import (AudioError, AudioPreprocessor, LogMel, SpecAugment, SpeedPerturbation,
                                   audio_folder_manifest, load_audio, mel_filter_bank, write_audio)

FSDD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fsdd" / "recordings"


def sine(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave, rate):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.argmax(spectrum) * rate / len(wave)


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = sine(440, 0.5, 16000), np.zeros(8000, np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(tmp_path / "st.wav")
    assert wave.ndim == 1 and wave.dtype == np.float32 and len(wave) == 8000
    np.testing.assert_allclose(wave, left / 2, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_resampling_keeps_pitch_and_scales_length(tmp_path, rate):
    write_audio(tmp_path / "s.wav", sine(440, 1.0, rate), rate)
    wave = load_audio(tmp_path / "s.wav", sample_rate=16000)
    assert abs(len(wave) - 16000) <= 1
    assert abs(peak_hz(wave, 16000) - 440) < 3
    assert 0.45 < np.abs(wave).max() <= 1.0


def test_int16_and_float_files_agree(tmp_path):
    wave = sine(300, 0.25, 16000, amplitude=0.8)
    sf.write(tmp_path / "i16.wav", wave, 16000, subtype="PCM_16")
    sf.write(tmp_path / "i32.wav", wave, 16000, subtype="PCM_32")
    sf.write(tmp_path / "f32.wav", wave, 16000, subtype="FLOAT")
    a, b, c = (load_audio(tmp_path / n) for n in ("i16.wav", "i32.wav", "f32.wav"))
    np.testing.assert_allclose(a, c, atol=1.0 / 32768)  # one 16-bit quantisation step
    np.testing.assert_allclose(b, c, atol=1e-6)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_write_and_read_formats(tmp_path, suffix):
    write_audio(tmp_path / f"x{suffix}", sine(440, 0.5, 16000), 16000)
    wave = load_audio(tmp_path / f"x{suffix}")
    assert abs(len(wave) - 8000) <= 1 and abs(peak_hz(wave, 16000) - 440) < 3


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(AudioError, match=r"\.mp3"):
        write_audio(tmp_path / "x.mp3", np.zeros(10), 16000)


def test_loud_float_file_is_scaled_into_range(tmp_path):
    sf.write(tmp_path / "loud.wav", sine(440, 0.1, 16000, amplitude=4.0), 16000, subtype="FLOAT")
    wave = load_audio(tmp_path / "loud.wav")
    assert np.abs(wave).max() == pytest.approx(1.0, abs=1e-3)


def test_silence_loads_and_gives_finite_zero_features(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    wave = load_audio(tmp_path / "silent.wav")
    assert len(wave) == 16000 and not wave.any()
    feats = AudioPreprocessor(AudioConfig())(tmp_path / "silent.wav")
    assert torch.isfinite(feats).all() and feats.abs().max() < 1e-6


def test_empty_file_raises(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0,), np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav.*empty"):
        load_audio(tmp_path / "empty.wav")


def test_nan_raises(tmp_path):
    wave = sine(440, 0.1, 16000)
    wave[100] = np.nan
    sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav.*NaN"):
        load_audio(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match="NaN"):
        AudioPreprocessor(AudioConfig())(wave)


@pytest.mark.parametrize("data", [b"definitely not audio" * 10, b"", b"RIFF\x00\x00\x00\x00WAVEjunk"])
def test_not_audio_raises_naming_file(tmp_path, data):
    (tmp_path / "junk.wav").write_bytes(data)
    with pytest.raises(AudioError, match="junk.wav"):
        load_audio(tmp_path / "junk.wav")
    with pytest.raises(AudioError, match="<bytes>"):
        load_audio(data)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="gone.wav"):
        load_audio(tmp_path / "gone.wav")


def test_bytes_input(tmp_path):
    write_audio(tmp_path / "b.flac", sine(440, 0.3, 8000), 8000)
    wave = load_audio((tmp_path / "b.flac").read_bytes(), sample_rate=16000)
    assert abs(len(wave) - 4800) <= 1


def test_max_seconds_truncates_or_rejects(tmp_path):
    write_audio(tmp_path / "long.wav", sine(440, 3.0, 8000), 8000)
    assert len(load_audio(tmp_path / "long.wav", 16000, max_seconds=1.5)) == 24000
    assert len(load_audio(tmp_path / "long.wav", 8000, max_seconds=1.5)) == 12000
    assert len(load_audio(tmp_path / "long.wav", 16000, max_seconds=5.0)) == 48000
    with pytest.raises(AudioError, match=r"long\.wav.*3\.00 s.*max_seconds=1\.5"):
        load_audio(tmp_path / "long.wav", max_seconds=1.5, truncate=False)


def test_preprocessor_truncates_to_max_frames(tmp_path):
    cfg = AudioConfig(max_seconds=1.0)
    write_audio(tmp_path / "long.wav", sine(440, 3.0, 16000), 16000)
    feats = AudioPreprocessor(cfg)(tmp_path / "long.wav")
    assert feats.shape == (80, cfg.max_frames) == (80, 101)
    odd = AudioConfig(sample_rate=22050, max_seconds=1.0)  # hop 220.5 samples rounds down: cap still holds
    assert AudioPreprocessor(odd)(sine(440, 3.0, 22050)).shape[1] <= odd.max_frames


MEL_CONFIGS = [  # sample_rate, n_fft, n_mels, fmin, fmax
    (8000, 256, 40, 0.0, None),
    (16000, 512, 80, 0.0, None),
    (16000, 400, 80, 20.0, 7600.0),
    (22050, 1024, 128, 50.0, 8000.0),
    (44100, 2048, 64, 0.0, 16000.0),
]


@pytest.mark.parametrize("rate,n_fft,n_mels,fmin,fmax", MEL_CONFIGS)
def test_mel_filter_bank_matches_librosa(rate, n_fft, n_mels, fmin, fmax):
    librosa = pytest.importorskip("librosa")
    ours = mel_filter_bank(n_fft // 2 + 1, n_mels, rate, fmin, fmax).numpy()
    ref = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney").T
    assert ours.shape == ref.shape == (n_fft // 2 + 1, n_mels)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()  # much tighter than needed, relative to scale


@pytest.mark.parametrize("rate,n_fft,n_mels,fmin,fmax", MEL_CONFIGS)
def test_mel_filter_bank_matches_transformers(rate, n_fft, n_mels, fmin, fmax):
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ours = mel_filter_bank(n_fft // 2 + 1, n_mels, rate, fmin, fmax).numpy()
    ref = audio_utils.mel_filter_bank(n_fft // 2 + 1, n_mels, fmin, fmax or rate / 2, rate,
                                      norm="slaney", mel_scale="slaney")
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_mel_filter_bank_rejects_bad_range():
    with pytest.raises(ValueError, match="max_frequency"):
        mel_filter_bank(257, 40, 8000, 0.0, 6000.0)


@pytest.mark.parametrize("rate,samples", [(16000, 16000), (16000, 12345), (8000, 999), (16000, 100)])
def test_log_mel_frame_count(rate, samples):
    mel = LogMel(sample_rate=rate)
    assert mel.n_fft == (512 if rate == 16000 else 256) and mel.hop == rate // 100
    feats = mel(torch.randn(samples, generator=torch.Generator().manual_seed(0)))
    assert feats.shape == (80, LogMel.num_frames(samples, mel.hop)) == (80, samples // mel.hop + 1)
    assert torch.isfinite(feats).all()
    assert abs(float(feats.mean())) < 1e-4 and abs(float(feats.std(unbiased=False)) - 1) < 1e-3


def test_log_mel_batch_matches_single():
    mel = LogMel()
    waves = torch.randn(3, 8000, generator=torch.Generator().manual_seed(1))
    batch = mel(waves)
    assert batch.shape == (3, 80, 51)
    assert torch.allclose(batch[1], mel(waves[1]), atol=1e-5)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_sine_energy_lands_in_its_mel_bin(freq):
    mel = LogMel(normalize=False)
    feats = mel(torch.from_numpy(sine(freq, 0.5, 16000)))
    loudest = int(feats[:, 5:-5].mean(dim=1).argmax())  # skip edge frames (zero padding)
    bank = mel.mel  # (freq bins, mels)
    expected = int(bank[round(freq / 16000 * mel.n_fft)].argmax())
    assert abs(loudest - expected) <= 1
    centres = torch.arange(bank.shape[0]).float() @ bank / bank.sum(0) * 16000 / mel.n_fft
    assert abs(float(centres[loudest]) - freq) / freq < 0.15


def test_spec_augment_masks_are_bounded_and_rest_untouched():
    feats = torch.randn(80, 400, generator=torch.Generator().manual_seed(0)) + 5  # no zeros by chance
    saw_masks = 0
    for seed in range(20):
        aug = SpecAugment(freq_masks=2, freq_width=12, time_masks=2, time_width_ratio=0.05, seed=seed)
        out = aug(feats)
        assert out is not feats and not torch.equal(feats, torch.zeros_like(feats))  # input left alone
        zero = out == 0
        rows, cols = zero.all(dim=1), zero.all(dim=0)
        assert rows.sum() <= 2 * 12 and cols.sum() <= 2 * int(0.05 * 400)
        masked = rows[:, None] | cols[None, :]
        assert torch.equal(zero, masked)  # only whole rows/columns are zeroed
        assert torch.equal(out[~masked], feats[~masked])  # everything else is untouched
        saw_masks += int(rows.any()) + int(cols.any())
    assert saw_masks > 20  # masks are actually applied


def test_spec_augment_is_reproducible():
    feats = torch.randn(40, 100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(SpecAugment(seed=3)(feats), SpecAugment(seed=3)(feats))


def test_preprocessor_array_and_augment_flag():
    cfg = AudioConfig()
    wave = sine(440, 0.5, 16000)
    plain = AudioPreprocessor(cfg)
    assert not plain.augment
    a = plain(wave)
    assert a.shape == (80, 51) and a.dtype == torch.float32 and torch.equal(a, plain(wave))
    augmented = AudioPreprocessor(cfg, augment=True, seed=0)
    assert augmented.augment
    assert any(not torch.equal(augmented(wave), a) for _ in range(5))
    with pytest.raises(AudioError, match="mono"):
        plain(np.zeros((2, 100), np.float32))


def test_audio_folder_manifest(tmp_path):
    folder = tmp_path / "recordings"
    (folder / "extra").mkdir(parents=True)
    for name in ("3_alice_0.wav", "3_alice_7.wav", "9_bob_12.wav", "extra/noise.wav"):
        write_audio(folder / name, np.zeros(80, np.float32), 8000)
    (folder / "readme.txt").write_text("not audio")
    out = tmp_path / "manifests" / "digits.jsonl"
    assert audio_folder_manifest(folder, out).recordings == 4
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {s["id"]: s for s in lines}
    assert by_id["3_alice_0"] == {"id": "3_alice_0", "audio": "../recordings/3_alice_0.wav", "label": "3",
                                  "split": "test", "meta": {"speaker": "alice"}}
    assert by_id["3_alice_7"]["split"] == "train" and by_id["9_bob_12"]["label"] == "9"
    assert "label" not in by_id["extra/noise"] and by_id["extra/noise"]["split"] == "train"
    for sample in lines:
        assert (out.parent / sample["audio"]).is_file()
    first = out.read_text()
    audio_folder_manifest(folder, out)
    assert out.read_text() == first  # deterministic


def _fsdd_or_skip():
    if not FSDD.is_dir():
        pytest.skip(f"Free Spoken Digit Dataset not found at {FSDD.resolve()} (place it under shared/data/fsdd)")
    return FSDD


def test_fsdd_recordings_through_preprocessor():
    folder = _fsdd_or_skip()
    files = sorted(folder.glob("*.wav"))[::97][:10]
    assert len(files) == 10
    pre = AudioPreprocessor(AudioConfig())
    for path in files:
        assert sf.info(str(path)).samplerate == 8000
        feats = pre(path)
        assert feats.shape[0] == 80 and torch.isfinite(feats).all()
        assert 21 <= feats.shape[1] <= 201, f"{path.name}: {feats.shape[1]} frames is not 0.2-2 s"


def test_fsdd_manifest(tmp_path):
    folder = _fsdd_or_skip()
    names = sorted(p.stem for p in folder.glob("*.wav"))
    parsed = [re.fullmatch(r"(\d)_(\w+?)_(\d+)", n).groups() for n in names]
    expected_test = sum(int(index) < 5 for _, _, index in parsed)
    out = tmp_path / "fsdd.jsonl"
    assert audio_folder_manifest(folder, out).recordings == len(names)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["id"] for s in lines] == names
    splits = Counter(s["split"] for s in lines)
    assert splits["test"] == expected_test and splits["train"] == len(names) - expected_test
    assert Counter(s["label"] for s in lines) == Counter(d for d, _, _ in parsed)
    speakers = {speaker for _, speaker, _ in parsed}
    assert Counter(s["meta"]["speaker"] for s in lines) == Counter(speaker for _, speaker, _ in parsed)
    if len(names) == 2000:  # this copy: 4 speakers x 10 digits x 50 takes, takes 0-4 are test
        assert len(speakers) == 4 and splits["test"] == 200 and splits["train"] == 1800
    assert all((out.parent / s["audio"]).is_file() for s in lines[:20])


def test_speed_perturbation_changes_length_within_its_range_and_keeps_pitch_order():
    cfg = AudioConfig(max_seconds=6.0)
    wave = sine(1000, 2.0, 16000)
    plain = AudioPreprocessor(cfg)(wave).shape[1]
    perturbed = AudioPreprocessor(cfg, augment=True, seed=3, speed=(0.8, 1.25), spec_augment=False)
    frames = [perturbed(wave).shape[1] for _ in range(30)]
    assert min(frames) >= plain / 1.25 - 2 and max(frames) <= plain / 0.8 + 2
    assert max(frames) - min(frames) > 0.2 * plain     # the factor really varies
    slow = AudioPreprocessor(cfg, augment=True, seed=0, speed=(0.8, 0.8), spec_augment=False)
    # Slower is lower: the tone's strongest mel bin moves down.
    assert slow(wave).mean(1).argmax() < AudioPreprocessor(cfg)(wave).mean(1).argmax()
    limited = AudioPreprocessor(AudioConfig(max_seconds=1.0), augment=True, seed=0, speed=(0.5, 0.5))
    assert limited(wave).shape[1] <= AudioConfig(max_seconds=1.0).max_frames


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_speed_perturbation_on_features_approximates_resampling_the_waveform(factor):
    """The features warped by a factor are close to the features of the waveform resampled by it:
    a tone's band lands where resampling puts it, a chord's profile follows, the length matches."""
    import soxr
    rate, logmel = 16000, LogMel(16000, 40)

    def both(wave):
        features = logmel(torch.from_numpy(wave))
        resampled = logmel(torch.from_numpy(soxr.resample(wave, rate, rate / factor).astype(np.float32)))
        return features, resampled, SpeedPerturbation(40, rate, (factor, factor), seed=0)(features)

    features, resampled, warped = both(sine(3100, 1.5, rate))
    assert abs(warped.shape[1] - resampled.shape[1]) <= 1
    band = lambda f: int(f.mean(1).argmax())  # noqa: E731
    assert abs(band(warped) - band(resampled)) <= 1 and abs(band(features) - band(resampled)) >= 2
    features, resampled, warped = both(sine(440, 1.5, rate) + sine(1300, 1.5, rate) + sine(3100, 1.5, rate))
    n = min(warped.shape[1], resampled.shape[1], features.shape[1])
    error = (warped[:, :n] - resampled[:, :n]).abs().mean()
    assert error < 0.5 * (features[:, :n] - resampled[:, :n]).abs().mean()


def test_speed_perturbation_range_is_checked():
    with pytest.raises(ValueError, match="speed"):
        SpeedPerturbation(40, 16000, (1.2, 0.9))
    plain = AudioPreprocessor(AudioConfig(), augment=True, speed=None, spec_augment=False)
    features = torch.randn(80, 50)
    assert plain.perturb(features) is features          # augmentation switched off piece by piece

def test_a_wav_cut_short_is_refused_naming_the_sizes(tmp_path):
    """libsndfile reads what is there, so an interrupted upload passed for a shorter recording."""
    import io

    import numpy as np
    import soundfile as sf

    from omniformer.data.audio import AudioError, load_audio
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    whole = buf.getvalue()
    assert load_audio(whole).shape == (16000,)
    with pytest.raises(AudioError, match=rf"cut short: its header declares {len(whole)} bytes, it holds 1000"):
        load_audio(whole[:1000])
    (tmp_path / "cut.wav").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(AudioError, match="cut.wav: the WAV file is cut short"):
        load_audio(tmp_path / "cut.wav")
    streamed = whole[:4] + b"\xff\xff\xff\xff" + whole[8:]  # a recorder that did not know the length
    assert load_audio(streamed[:1000]).shape[0] > 0
