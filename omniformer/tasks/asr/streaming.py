"""Live transcription: a recording fed as it is made, partial transcripts as they firm up.

    stream = transcriber.stream()                 # a Transcriber's, at its model's sample rate
    for chunk in microphone():                    # float32 samples, any chunk size
        update = stream.feed(chunk)
        if update: print(update.text)             # "the red circle is le"
    print(stream.finish().text)                   # "the red circle is left of the square"

The model runs on a window of the last ``lookback_seconds`` of audio each time ``step_seconds``
of new audio has come, so a step costs the same however long the recording. Audio tokens at
least ``lookahead_seconds`` before the newest sample are *committed*: their frame
probabilities go to the decoder, which carries its state (the beam) from step to step; the
newer tokens are decoded, on a copy of that state, only for the partial transcript.

The recogniser is bidirectional and leans on what follows a word ("there" or "the" depends on
the next ones), so a frame that saw only its look-ahead can be wrong where the whole recording
would not be. Hence segments: the stream's start, or speech after a quiet run longer than the
look-ahead (+0.3 s), begins one; when it ends (the quiet, or ``finish``) and it fits the model
(``audio.max_seconds``), it is decoded again in one pass over all of it, from the decoder's
state at its start. A recording no longer than that is so decoded exactly as it is offline;
longer speech without a pause keeps its committed frames. Windows quieter than
``silence_dbfs`` are heard as silence without running the model, and a segment's windows never
reach back into the quiet before it (``benchmarks/asr_streaming.py`` measures the rest).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...data.audio import rms_dbfs
from .decoding import Hypothesis, PrefixBeamSearch, beam_or_best_path, to_text, word_timings
from .model import BLANK

if TYPE_CHECKING:
    from .predictor import Transcriber

# Audio quieter than this (RMS, dB of full scale) over a whole window or recording is silence:
# the recogniser is not run on it (per-utterance normalisation would lift its noise to speech level).
SILENCE_DBFS = -50.0


@dataclass(frozen=True)
class StreamSettings:
    """How a live recording is cut into model steps (seconds of audio)."""
    step_seconds: float = 0.2        # run the model each time this much new audio has come
    lookback_seconds: float | None = None  # the window the model sees: this much of the latest
                                           # audio (None: 4 s, or the model's audio.max_seconds if less)
    lookahead_seconds: float = 0.8   # a token is final once this much audio follows it
    # A window quieter than this (RMS, dB of full scale) is heard as silence without running the
    # model: a microphone open before anyone speaks costs nothing and is not heard as words
    # (per-window normalisation would lift its noise to speech level). None: always run it.
    silence_dbfs: float | None = SILENCE_DBFS

    def resolved(self, max_seconds: float) -> "StreamSettings":
        """These settings for a model of ``audio.max_seconds``, checked; errors name the setting
        and the range it must lie in."""
        lookback = min(4.0, max_seconds) if self.lookback_seconds is None else float(self.lookback_seconds)
        settings = StreamSettings(float(self.step_seconds), lookback, float(self.lookahead_seconds),
                                  None if self.silence_dbfs is None else float(self.silence_dbfs))
        settings._check(max_seconds)
        return settings

    def _check(self, max_seconds: float) -> None:
        if not 0.02 <= self.step_seconds <= 2.0:
            raise ValueError(f"step_seconds: expected 0.02 to 2.0, got {self.step_seconds}")
        if self.silence_dbfs is not None and not -120.0 <= self.silence_dbfs <= 0.0:
            raise ValueError(f"silence_dbfs: expected -120 to 0 dB (or None), got {self.silence_dbfs}")
        if not 0.0 <= self.lookahead_seconds <= 2.0:
            raise ValueError(f"lookahead_seconds: expected 0 to 2.0, got {self.lookahead_seconds}")
        low = self.step_seconds + self.lookahead_seconds + 0.5
        if not low <= self.lookback_seconds <= max_seconds:
            raise ValueError(f"lookback_seconds: expected {low:g} (step + look-ahead + 0.5 s) to the model's "
                             f"audio.max_seconds {max_seconds:g}, got {self.lookback_seconds}")


@dataclass
class StreamUpdate:
    """A transcript so far: ``text`` begins with ``stable``, the words that committed audio alone
    already says (later audio rarely changes them), and the newest, tentative words follow."""
    text: str
    stable: str
    seconds: float                     # audio received so far
    final: bool = False
    words: list[dict[str, Any]] = field(default_factory=list)  # the final one's word timings

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "final" if self.final else "partial", "text": self.text,
                               "seconds": round(self.seconds, 3)}
        if self.final:
            out["words"] = self.words
        else:
            out["stable"] = self.stable
        return out


class _Greedy:
    """The best path, fed frames as they come: repeats are collapsed across steps too."""

    def __init__(self):
        self.tokens: list[int] = []
        self.frames_of: list[int] = []
        self.previous, self.frames = BLANK, 0

    def advance(self, log_probs: torch.Tensor) -> None:
        for t, label in enumerate(log_probs.argmax(-1).tolist(), start=self.frames):
            if label != BLANK and label != self.previous:
                self.tokens.append(label)
                self.frames_of.append(t)
            self.previous = label
        self.frames += log_probs.shape[0]

    def fork(self) -> "_Greedy":
        other = _Greedy()
        other.tokens, other.frames_of = list(self.tokens), list(self.frames_of)
        other.previous, other.frames = self.previous, self.frames
        return other

    def leader(self) -> Hypothesis:
        return Hypothesis(list(self.tokens), list(self.frames_of))


class TranscriptStream:
    """One live recording's state: the latest ``lookback_seconds`` of samples, how many audio
    tokens are committed, and the decoder's state over them. Not thread-safe: one feeder."""

    def __init__(self, transcriber: "Transcriber", settings: StreamSettings | None = None,
                 decoder: str | None = None):
        audio = transcriber.cfg.model.audio
        settings = (settings or StreamSettings()).resolved(audio.max_seconds)
        self.asr, self.settings = transcriber, settings
        self.rate = audio.sample_rate
        hop = max(1, round(audio.sample_rate * audio.hop_ms / 1000))
        self.token_samples = hop * int(audio.subsample)   # windows start on the token grid
        self.window = int(settings.lookback_seconds * self.rate) // self.token_samples * self.token_samples
        self.step = max(1, int(settings.step_seconds * self.rate))
        # Behind a client faster than real time, one step takes up to this much new audio,
        # still leaving each committed token half the window of past audio.
        self.max_step = max(self.step, self.window // 2 - int(settings.lookahead_seconds * self.rate))
        self.lookahead_tokens = int(np.ceil(settings.lookahead_seconds * self.rate / self.token_samples))
        decoder = decoder or transcriber.task_config.decoder
        if decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder: expected greedy or beam, got {decoder!r}")
        self.decoder = decoder
        if decoder == "beam":
            self.search: Any = PrefixBeamSearch(transcriber.task_config.beam, BLANK, transcriber.lexicon,
                                                transcriber.alphabet.space)
        else:
            self.search = _Greedy()
        self.best_path = self.search if decoder == "greedy" else _Greedy()  # the beam's fallback, as offline
        # A segment (the stream's start, or speech after a long quiet run) is decoded again in
        # one pass over its whole audio when it ends, if it fits the model (audio.max_seconds):
        # its words then get the right context the window's look-ahead lacked.
        self.max_pass = int(audio.max_seconds * self.rate) // self.token_samples * self.token_samples
        self.buffer = np.zeros(0, np.float32)   # the latest samples, at most a window of them
        self.buffer_start = 0                    # the sample index of buffer[0] in the recording
        self.received = 0                        # samples fed so far
        self.modelled = 0                        # samples the model had seen at its last step
        self.committed = 0                       # audio tokens given to the decoder
        self.tentative = Hypothesis([], [])     # the decoder's leader over all modelled tokens
        self.steps = 0
        self.silent_steps = 0                    # steps heard as silence, the model not run
        # Speech after a long quiet run starts a new segment: windows begin shortly before it,
        # not in the quiet (where normalised noise could be heard as words), as training
        # recordings do. Tracked per audio token's samples.
        self.scanned = 0                         # samples checked for loudness so far
        self.quiet_since: int | None = None      # where the current quiet run began (None: loud now)
        self.segment: tuple[int, int] = (0, 0)   # (the quiet run's start, where windows may start)
        self.min_quiet = int((settings.lookahead_seconds + 0.3) * self.rate)
        self.margin = int(0.25 * self.rate) // self.token_samples * self.token_samples
        self._mark_segment()
        self.closed = False

    @property
    def seconds(self) -> float:
        return self.received / self.rate

    def feed(self, samples: np.ndarray) -> StreamUpdate | None:
        """Add mono float samples at the model's rate; an update when the model ran, else None."""
        if self.closed:
            raise RuntimeError("this stream is finished; start another")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size and not np.isfinite(samples).all():
            raise ValueError("samples: NaN or infinite values")
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += samples.size
        self._scan_quiet()
        ran = False
        while self.received - self.modelled >= self.step:
            self._run(min(self.received, self.modelled + self.max_step), last=False)
            ran = True
        return self._update() if ran else None

    def finish(self) -> StreamUpdate:
        """Commit what is left and give the final transcript, with word timings."""
        if self.closed:
            raise RuntimeError("this stream is finished; start another")
        if self.received and not self._repass(self.received):
            if self.modelled < self.received or self.committed < self._tokens(self.received):
                while self.received - self.modelled > self.max_step:
                    self._run(self.modelled + self.max_step, last=False)
                self._run(self.received, last=True)
        self.closed = True
        hyp = self._final_hypothesis()
        words = word_timings(hyp, self.asr.alphabet.labels, self.asr.frame_seconds)
        text = to_text(hyp.tokens, self.asr.alphabet.labels).strip()
        return StreamUpdate(text, text, self.seconds, final=True, words=words)

    # -- inside -----------------------------------------------------------------------------

    def _tokens(self, samples: int) -> int:
        """Audio tokens of a recording of ``samples`` (as the embedder makes them from its frames)."""
        hop = self.token_samples // int(self.asr.cfg.model.audio.subsample)
        frames = samples // hop + 1
        return -(-frames // int(self.asr.cfg.model.audio.subsample))

    def _scan_quiet(self) -> None:
        """Loudness of each new token's worth of samples: notes a long quiet run ending in speech."""
        if self.settings.silence_dbfs is None:
            return
        ts = self.token_samples
        while self.received - self.scanned >= ts:
            block = self.buffer[self.scanned - self.buffer_start: self.scanned + ts - self.buffer_start]
            if self._silent(block):
                if self.quiet_since is None:
                    self.quiet_since = self.scanned
            else:
                if self.quiet_since is not None and self.scanned - self.quiet_since >= self.min_quiet:
                    self.segment = (self.quiet_since, max(self.quiet_since, self.scanned - self.margin))
                self.quiet_since = None
            self.scanned += ts

    def _mark_segment(self) -> None:
        """A segment starts at the committed token: the decoders' state there, kept for ``_repass``."""
        self.segment_tokens = self.committed
        self.segment_search = self.search.fork()
        self.segment_best = self.segment_search if self.best_path is self.search else self.best_path.fork()

    @torch.no_grad()
    def _frames(self, wave: np.ndarray) -> torch.Tensor:
        """The (tokens, labels) log-probabilities of a window's samples; blank where it is quiet."""
        if self._silent(wave):
            self.silent_steps += 1
            return self._blank_frames(self._tokens(wave.size))
        features = self.asr.audio.features(wave if wave.size else np.zeros(1, np.float32))
        log_probs, lengths = self.asr.log_probs([{"audio": features}])
        return log_probs[0, : int(lengths[0])]

    def _repass(self, end: int) -> bool:
        """Decode the current segment, up to sample ``end``, again in one model pass over all of
        it, from the decoders' state at its start; False (nothing done) when it is too long."""
        start = self.segment_tokens * self.token_samples
        if end - start > self.max_pass or start < self.buffer_start or end <= start:
            return False
        frames = self._frames(self.buffer[start - self.buffer_start: end - self.buffer_start])
        self.search = self.segment_search.fork()
        self.best_path = self.search if self.segment_best is self.segment_search else self.segment_best.fork()
        self.committed = self.segment_tokens
        self._commit(frames)
        self.modelled = max(self.modelled, end)
        return True

    def _blank_frames(self, tokens: int) -> torch.Tensor:
        frames = torch.full((tokens, len(self.asr.alphabet)), -30.0)
        frames[:, BLANK] = 0.0
        return frames

    def _commit(self, frames: torch.Tensor) -> None:
        self.search.advance(frames)
        if self.best_path is not self.search:
            self.best_path.advance(frames)
        self.committed += frames.shape[0]

    @torch.no_grad()
    def _run(self, end: int, last: bool) -> None:
        """One model step on the window ending at sample ``end``: commit the tokens it may."""
        ts = self.token_samples
        quiet_from, speech_from = self.segment
        if self.committed * ts >= quiet_from and speech_from // ts > self.committed:
            # a new segment: the last one decoded again whole, the quiet heard as silence
            if self._repass(quiet_from // ts * ts) and speech_from // ts <= self.committed:
                speech_from = self.committed * ts
            if speech_from // ts > self.committed:
                self._commit(self._blank_frames(speech_from // ts - self.committed))
            self._mark_segment()
        floor = min(speech_from, self.committed * ts)
        start = max(max(0, end - self.window) // ts * ts, floor // ts * ts)
        frames = self._frames(self.buffer[start - self.buffer_start: end - self.buffer_start])
        first = start // self.token_samples                 # the window's first token in the recording
        total = first + frames.shape[0]
        upto = total if last else max(self.committed, self._tokens(end) - self.lookahead_tokens)
        upto = min(upto, total)
        if self.committed < first:
            raise RuntimeError(f"stream: window starts at token {first}, after the {self.committed} committed")
        if upto > self.committed:
            self._commit(frames[self.committed - first: upto - first])
        # the tentative rest, decoded on a copy of the decoder's state: the partial transcript
        rest = frames[self.committed - first:]
        ahead = self.search.fork()
        if rest.shape[0]:
            ahead.advance(rest)
        self.tentative = ahead.leader()
        self.modelled, self.steps = end, self.steps + 1
        # keep only what the next window, or the segment's second pass, can reach
        segment = self.segment_tokens * ts
        reach = min(end - self.window, segment) if end - segment <= self.max_pass else end - self.window
        keep = max(0, reach) // ts * ts
        if keep > self.buffer_start:
            self.buffer = self.buffer[keep - self.buffer_start:]
            self.buffer_start = keep

    def _silent(self, wave: np.ndarray) -> bool:
        return self.settings.silence_dbfs is not None and wave.size > 0 and rms_dbfs(wave) < self.settings.silence_dbfs

    def _final_hypothesis(self) -> Hypothesis:
        if self.decoder == "greedy":
            return self.search.leader()
        return beam_or_best_path(self.search.results(), self.best_path.leader())  # as offline

    def _update(self) -> StreamUpdate:
        labels = self.asr.alphabet.labels
        committed = to_text(self.search.leader().tokens, labels).split()
        text = to_text(self.tentative.tokens, labels).split()
        same = 0  # the whole words committed audio alone already says, as the partial begins
        while same < min(len(committed), len(text)) and committed[same] == text[same]:
            same += 1
        return StreamUpdate(" ".join(text), " ".join(text[:same]), self.seconds)
