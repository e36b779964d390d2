"""Audio in: decode, mix to mono, resample, then log-mel features and SpecAugment.

Decoding is soundfile (WAV, FLAC, OGG), resampling is soxr. The mel filter bank is the
Slaney one that librosa and transformers use by default, implemented here so the package needs
neither; the tests check it against both.
"""
from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from ..config import AudioConfig
from .manifest import write_manifest


class AudioError(ValueError):
    """Audio cannot be used; the message names the file (or ``<bytes>``) and the problem."""


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def wav_cut_short(source: str | Path | bytes) -> str | None:
    """Why a WAV file is cut short (its RIFF header declares more bytes than it holds), or None.

    libsndfile reads what is there without a word, so an interrupted download or upload would
    pass for a shorter recording. A size of 0 or 0xFFFFFFFF (written by streaming recorders
    that do not know the length) is not checked."""
    if isinstance(source, (bytes, bytearray)):
        header, size = bytes(source[:12]), len(source)
    else:
        try:
            with open(source, "rb") as f:
                header, size = f.read(12), os.fstat(f.fileno()).st_size
        except OSError:
            return None  # the decoder says what is wrong with it
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    declared = int.from_bytes(header[4:8], "little") + 8
    if declared in (8, 0xFFFFFFFF + 8) or declared <= size:
        return None
    return f"the WAV file is cut short: its header declares {declared} bytes, it holds {size}"


def load_audio(source: str | Path | bytes, sample_rate: int = 16000, max_seconds: float | None = None,
               truncate: bool = True) -> np.ndarray:
    """Decode ``source`` to a mono float32 waveform at ``sample_rate``, values in [-1, 1].

    Channels are averaged; a different file rate is resampled with soxr (HQ). With
    ``max_seconds``, longer audio is cut to that length (``truncate=True``) or rejected.
    Empty audio and NaN/inf samples raise AudioError; silence is valid and returned as is.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        from .shards import read_member, tar_member
        member = tar_member(source)  # DIR/shard-000003.tar/000123.audio.wav: a tar shard's member
        if member is None:
            raise AudioError(f"{name}: file does not exist")
        try:
            source = read_member(*member)
        except ValueError as e:  # MediaError, naming the shard and member
            raise AudioError(str(e)) from None
    cut = wav_cut_short(source)
    if cut:
        raise AudioError(f"{name}: {cut}")
    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)) as f:
            file_rate, frames = f.samplerate, f.frames
            if max_seconds is not None and frames > max_seconds * file_rate:
                if not truncate:
                    raise AudioError(f"{name}: audio is {frames / file_rate:.2f} s long, "
                                     f"more than max_seconds={max_seconds}")
                frames = int(max_seconds * file_rate)  # read only what is kept
            data = f.read(frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError on junk
        # soundfile's message names the file object ("Error opening <_io.BytesIO object at 0x...>: ..."):
        # keep only what it says about the data
        why = str(e).split(": ", 1)[-1] if str(e).startswith("Error opening") else str(e)
        raise AudioError(f"{name}: not decodable audio (WAV, FLAC or OGG expected): {why}") from None
    if data.shape[0] == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    wave = data.mean(axis=1)
    peak = float(np.abs(wave).max())
    if peak > 1.0:  # float files may exceed full scale; scale down rather than clip the shape
        wave = wave / peak
    if file_rate != sample_rate:
        wave = soxr.resample(wave, file_rate, sample_rate, quality="HQ")
        if wave.size == 0:  # e.g. one sample at 400 kHz: less than one sample at sample_rate
            raise AudioError(f"{name}: audio is empty at {sample_rate} Hz ({data.shape[0]} samples at {file_rate} Hz)")
        wave = np.clip(wave, -1.0, 1.0)  # the resampler can overshoot slightly near full scale
        if max_seconds is not None:
            wave = wave[: int(max_seconds * sample_rate)]
    return np.ascontiguousarray(wave, dtype=np.float32)


def rms_dbfs(waveform: np.ndarray) -> float:
    """A waveform's loudness: its RMS in dB of full scale (-200 for digital silence or nothing)."""
    if not waveform.size:
        return -200.0
    power = float(np.mean(np.square(waveform, dtype=np.float64)))
    return max(-200.0, 10 * float(np.log10(power + 1e-20)))


def write_audio(path: str | Path, waveform: np.ndarray, sample_rate: int) -> None:
    """Write a waveform (samples,) or (samples, channels); the format follows the suffix.

    .wav and .flac are 16-bit PCM, .ogg is Vorbis. Values are clipped to [-1, 1] first,
    because PCM conversion of out-of-range floats would wrap around.
    """
    path = Path(path)
    formats = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
    suffix = path.suffix.lower()
    if suffix not in formats:
        raise AudioError(f"{path}: unsupported audio suffix {path.suffix!r}; use one of {', '.join(formats)}")
    fmt, subtype = formats[suffix]
    wave = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    sf.write(str(path), wave, sample_rate, format=fmt, subtype=subtype)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * 27.0 / math.log(6.4), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = 200.0 * mel / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(math.log(6.4) / 27.0 * (mel - 15.0)), hz)


def mel_filter_bank(num_frequency_bins: int, num_mel_filters: int, sample_rate: int,
                    min_frequency: float = 0.0, max_frequency: float | None = None) -> torch.Tensor:
    """Triangular mel filters, shape (num_frequency_bins, num_mel_filters).

    Slaney mel scale and Slaney area normalisation (each filter integrates to the same
    energy), as ``librosa.filters.mel(..., htk=False, norm="slaney").T``.
    """
    max_frequency = sample_rate / 2 if max_frequency is None else max_frequency
    if not 0 <= min_frequency < max_frequency <= sample_rate / 2:
        raise ValueError(f"need 0 <= min_frequency < max_frequency <= sample_rate/2 ({sample_rate / 2}), "
                         f"got {min_frequency} and {max_frequency}")
    fft_freqs = np.linspace(0, sample_rate / 2, num_frequency_bins)
    mel_points = np.linspace(_hz_to_mel(min_frequency), _hz_to_mel(max_frequency), num_mel_filters + 2)
    edges = _mel_to_hz(mel_points)  # left edge, centre, right edge of every filter
    widths = np.diff(edges)
    slopes = edges[:, None] - fft_freqs[None, :]
    rising = -slopes[:-2] / widths[:-1, None]
    falling = slopes[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(filters.T.astype(np.float32))


class LogMel(torch.nn.Module):
    """Waveform -> log-mel spectrogram, optionally normalised per utterance.

    n_fft is the next power of two at or above the window; the window is a periodic Hann of
    the window length; frames are centred (``num_samples // hop + 1`` of them). Normalisation
    uses the mean and std over the whole utterance, so in a batch all rows should be real
    audio of one length (pad after, not before, computing features).
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, win_ms: float = 25.0, hop_ms: float = 10.0,
                 normalize: bool = True):
        super().__init__()
        self.sample_rate, self.n_mels, self.normalize = sample_rate, n_mels, normalize
        self.win_length = round(sample_rate * win_ms / 1000)
        self.hop = max(1, round(sample_rate * hop_ms / 1000))
        self.n_fft = 1 << (self.win_length - 1).bit_length()
        # Not persistent: constants derived from the arguments, so checkpoints stay small and
        # load regardless of how features were configured.
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)
        self.register_buffer("mel", mel_filter_bank(self.n_fft // 2 + 1, n_mels, sample_rate), persistent=False)

    @staticmethod
    def num_frames(num_samples: int, hop: int) -> int:
        return num_samples // hop + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        single = waveform.dim() == 1
        x = waveform.unsqueeze(0) if single else waveform
        # Zero padding at the edges (not reflect): works for clips shorter than half a window.
        spec = torch.stft(x.float(), self.n_fft, hop_length=self.hop, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        feats = torch.log(torch.clamp(self.mel.T @ power, min=1e-10))
        if self.normalize:
            # Statistics in float64: for silence (every value log(1e-10)) float32 rounding would
            # leave a std of ~1e-6 and blow the rounding error up; here it gives zeros, not NaN.
            stats = feats.double()
            mean = stats.mean(dim=(1, 2), keepdim=True)
            std = stats.std(dim=(1, 2), keepdim=True, unbiased=False).clamp(min=1e-3)
            feats = ((stats - mean) / std).float()
        return feats[0] if single else feats


class SpecAugment:
    """Random frequency and time masks on (n_mels, frames) features, filled with 0.

    0 is the mean of normalised features, so masks remove information without adding a signal.
    Each frequency mask is 0..freq_width bins wide; each time mask 0..time_width_ratio*frames.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 12, time_masks: int = 2,
                 time_width_ratio: float = 0.05, seed: int | None = None):
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width_ratio = time_masks, time_width_ratio
        self.rng = np.random.default_rng(seed)

    def _mask(self, out: torch.Tensor, dim: int, count: int, max_width: int) -> None:
        size = out.shape[dim]
        for _ in range(count):
            width = int(self.rng.integers(0, min(max_width, size) + 1))
            start = int(self.rng.integers(0, size - width + 1))
            out.narrow(dim, start, width).zero_()

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        out = features.clone()
        self._mask(out, 0, self.freq_masks, self.freq_width)
        self._mask(out, 1, self.time_masks, int(self.time_width_ratio * out.shape[1]))
        return out


class SpeedPerturbation:
    """Speed perturbation on log-mel features (n_mels, frames), as if the waveform had been
    resampled by a random factor in ``speed`` (Ko et al. 2015; > 1 is faster and higher):
    the time axis shrinks by the factor and every frequency is multiplied by it (the mel
    axis warped through the mel scale, as in VTLP, Jaitly & Hinton 2013).

    Why on features and not on the waveform: the features of a recording are then computed
    once and cached, and a perturbation costs an interpolation instead of a resampling and
    an STFT per sample (it made fine-tuning about 2x slower). Why at all: ShapesWorld has one
    recording per word and voice, and without it a word spotter memorised its training
    recordings and heard colour words in an unseen voice at chance.
    """

    def __init__(self, n_mels: int, sample_rate: int, speed: tuple[float, float] = (0.9, 1.1),
                 seed: int | None = None):
        if not 0 < speed[0] <= speed[1]:
            raise ValueError(f"speed: expected 0 < low <= high, got {list(speed)}")
        self.n_mels, self.speed = n_mels, tuple(speed)
        self.top = float(_hz_to_mel(sample_rate / 2))
        self.centres = _mel_to_hz(np.linspace(0.0, self.top, n_mels + 2)[1:-1])  # as mel_filter_bank's
        self.rng = np.random.default_rng(seed)

    def __call__(self, features: torch.Tensor, max_frames: int | None = None) -> torch.Tensor:
        factor = float(self.rng.uniform(*self.speed))
        # Output bin at frequency f holds what the input had at f / factor: a fractional bin index.
        source = _hz_to_mel(self.centres / factor) / self.top * (self.n_mels + 1) - 1
        source = torch.from_numpy(np.clip(source, 0, self.n_mels - 1)).to(features.dtype)
        low = source.floor().long()
        high = (low + 1).clamp(max=self.n_mels - 1)
        weight = (source - low)[:, None]
        warped = features[low] * (1 - weight) + features[high] * weight
        frames = max(1, round(features.shape[1] / factor))
        warped = torch.nn.functional.interpolate(warped[None], size=frames, mode="linear", align_corners=True)[0]
        return warped[:, :max_frames] if max_frames else warped


class AudioPreprocessor:
    """Audio file, bytes or waveform -> normalised log-mel features (n_mels, frames).

    Audio is truncated to ``cfg.max_seconds`` so frames never exceed ``cfg.max_frames``.
    A NumPy waveform must be mono and already at ``cfg.sample_rate``. ``augment`` turns on
    ``perturb``: speed perturbation (``speed``, a (low, high) factor range, None for none)
    and then SpecAugment (``spec_augment``). ``features`` is the deterministic part, so a
    dataset can cache it and perturb each draw afresh.
    """

    def __init__(self, cfg: AudioConfig, augment: bool = False, seed: int | None = None,
                 speed: tuple[float, float] | None = (0.9, 1.1), spec_augment: bool = True):
        self.cfg, self.augment = cfg, augment
        self.logmel = LogMel(cfg.sample_rate, cfg.n_mels, cfg.win_ms, cfg.hop_ms)
        self.speed = SpeedPerturbation(cfg.n_mels, cfg.sample_rate, speed, seed) if augment and speed else None
        self.spec_augment = SpecAugment(seed=seed) if augment and spec_augment else None

    def features(self, source: str | Path | bytes | np.ndarray) -> torch.Tensor:
        cfg = self.cfg
        if isinstance(source, np.ndarray):
            if source.ndim != 1 or source.size == 0:
                raise AudioError(f"<array>: expected a non-empty mono waveform (samples,), got shape {source.shape}")
            if not np.isfinite(source).all():
                raise AudioError("<array>: waveform contains NaN or infinite samples")
            wave = source.astype(np.float32)[: int(cfg.max_seconds * cfg.sample_rate)]
        else:
            wave = load_audio(source, cfg.sample_rate, max_seconds=cfg.max_seconds, truncate=True)
        with torch.no_grad():
            return self.logmel(torch.from_numpy(wave))[:, : cfg.max_frames]

    def perturb(self, features: torch.Tensor) -> torch.Tensor:
        """The random part: identity unless ``augment``."""
        if self.speed is not None:
            features = self.speed(features, self.cfg.max_frames)
        return self.spec_augment(features) if self.spec_augment is not None else features

    def __call__(self, source: str | Path | bytes | np.ndarray) -> torch.Tensor:
        return self.perturb(self.features(source))


# ---------------------------------------------------------------------------------------------
# Manifests for folders of recordings
# ---------------------------------------------------------------------------------------------

_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)$")  # {digit}_{speaker}_{index}


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_ID_COLUMNS = ("id", "file", "filename", "path", "audio", "utt", "utterance")
_TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")


def read_transcripts(path: str | Path) -> dict[str, str]:
    """{recording id: transcript} from a transcript file in one of the common layouts:
    ``id<TAB>text`` lines (Kaldi-style ``id text`` with a space also works), or a CSV with a
    header naming an id column (id, file, filename, path, audio) and a text column (text,
    transcript, sentence). The id may be a file name, with or without its suffix, or a path
    under the folder. Lines starting with ``#`` and blank lines are skipped. Errors name the
    file and line: not UTF-8, a line without text, an id given twice."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"--transcripts: {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise AudioError(f"{path}: not UTF-8 text (byte {e.start}); save the transcripts as UTF-8") from None
    rows: list[tuple[int, str, str]] = []
    first = next((ln for ln in lines if ln.strip() and not ln.startswith("#")), "")
    header = [c.strip().lower() for c in first.split(",")] if "\t" not in first else []
    id_col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
    text_col = next((header.index(c) for c in _TEXT_COLUMNS if c in header), None)
    if id_col is not None and text_col is not None:
        import csv
        reader = csv.reader(lines)
        next(reader)
        for number, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) <= max(id_col, text_col):
                raise AudioError(f"{path}:{number}: expected {len(header)} columns ({first.strip()}), got {len(row)}")
            rows.append((number, row[id_col].strip(), row[text_col]))
    else:
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            key, sep, text = line.partition("\t") if "\t" in line else line.strip().partition(" ")
            rows.append((number, key.strip(), text if sep else ""))
    out: dict[str, str] = {}
    for number, key, text in rows:
        text = " ".join(text.split())
        if not key:
            raise AudioError(f"{path}:{number}: no recording id before the transcript")
        if not text:
            raise AudioError(f"{path}:{number}: recording {key!r} has an empty transcript; expected "
                             f"'id<TAB>text' (or a CSV with id and text columns)")
        if key in out:
            raise AudioError(f"{path}:{number}: recording {key!r} is given a transcript twice")
        out[key] = text
    if not out:
        raise AudioError(f"{path}: no transcripts; expected lines of 'id<TAB>text' or a CSV with a header "
                         f"naming an id column ({', '.join(_ID_COLUMNS[:4])}) and a text column "
                         f"({', '.join(_TEXT_COLUMNS[:3])})")
    return out


def _transcript_key(transcripts: dict[str, str], path: Path, folder: Path) -> str | None:
    """The key of a recording's transcript: its path under the folder or its name, with or without suffix."""
    rel = path.relative_to(folder)
    return next((key for key in (rel.as_posix(), rel.with_suffix("").as_posix(), path.name, path.stem)
                 if key in transcripts), None)


def audio_folder_manifest(folder: str | Path, out_path: str | Path, label_from: str = "digit",
                          transcripts: str | Path | None = None, digit_words: bool = False) -> "FolderReport":
    """Write a JSON-Lines manifest for every WAV/FLAC/OGG file under ``folder``; returns the count.

    ``label_from="digit"`` reads Free Spoken Digit Dataset names ``{digit}_{speaker}_{index}``:
    label is the digit, recordings 0-4 of each speaker and digit are the test split (the
    dataset's official split), the speaker goes to meta. ``label_from="folder"`` labels a file
    with its parent folder's name. Files without a label get no label field and split "train".

    ``transcripts`` (a file, see ``read_transcripts``) gives each recording its ``text``, what
    speech recognition learns from; ``digit_words`` gives FSDD recordings their digit's word
    ("7" -> "seven"). Recordings without a transcript and transcripts without a recording are
    counted in the report's warnings, not errors: a partial transcript file still trains.
    """
    if label_from not in ("digit", "folder"):
        raise ValueError(f"label_from: must be 'digit' or 'folder', got {label_from!r}")
    folder, out_path = Path(folder), Path(out_path)
    if not folder.is_dir():
        raise AudioError(f"{folder}: folder does not exist")
    files = sorted((p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:  # an empty or mistyped folder would otherwise fail much later, in training
        raise AudioError(f"{folder}: no audio files; expected {', '.join(AUDIO_SUFFIXES)} files in it or its sub-folders")
    texts = read_transcripts(transcripts) if transcripts is not None else None
    samples, used, untranscribed = [], set(), []
    for path in files:
        rel_to_folder = path.relative_to(folder).with_suffix("").as_posix()
        sample: dict = {"id": rel_to_folder,
                        "audio": Path(os.path.relpath(path, out_path.parent)).as_posix()}
        match = _FSDD_NAME.match(path.stem)
        if label_from == "digit" and match:
            digit, speaker, index = match.groups()
            sample.update(label=digit, split="test" if int(index) < 5 else "train", meta={"speaker": speaker})
        elif label_from == "folder" and path.parent != folder:
            sample.update(label=path.parent.name, split="train")
        else:
            sample["split"] = "train"
        if texts is not None:
            key = _transcript_key(texts, path, folder)
            if key is None:
                untranscribed.append(rel_to_folder)
            else:
                sample["text"] = texts[key]
                used.add(key)
        elif digit_words and match:
            sample["text"] = DIGIT_WORDS[int(match.group(1))]
        samples.append(sample)
    warnings = []
    if digit_words and texts is None and not any("text" in s for s in samples):
        raise AudioError(f"{folder}: --digit-words reads FSDD names {{digit}}_{{speaker}}_{{index}}, and no file "
                         f"is named so")
    if texts is not None:
        if len(untranscribed) == len(samples):
            raise AudioError(f"{transcripts}: no transcript matches a recording in {folder} (ids tried: the path "
                             f"under the folder and the file name, with and without suffix; e.g. "
                             f"{untranscribed[0]!r})")
        if untranscribed:
            warnings.append(f"{len(untranscribed)} of {len(samples)} recordings have no transcript in "
                            f"{transcripts} (e.g. {', '.join(map(repr, untranscribed[:3]))}); written without text")
        unused = sorted(set(texts) - used)
        if unused:
            warnings.append(f"{len(unused)} transcript(s) in {transcripts} match no recording in {folder} "
                            f"(e.g. {', '.join(map(repr, unused[:3]))})")
    write_manifest(out_path, samples)  # atomically: a failed run leaves an earlier manifest whole
    return FolderReport(len(samples), sum("text" in s for s in samples), warnings)


@dataclass
class FolderReport:
    """What ``audio_folder_manifest`` wrote: recordings, how many have a transcript, and warnings."""
    recordings: int
    transcribed: int = 0
    warnings: list[str] = field(default_factory=list)
