"""Live transcription: a recogniser trained here (tone "speech", see test_asr_task) fed a
recording in pieces as it would come from a microphone, in Python and over the WebSocket
route; the final transcript against the offline one, bounded memory and model input, and every
way a client can go wrong."""
from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest
import soxr
import torch
from starlette.websockets import WebSocketDisconnect

from omniformer.tasks.asr import Transcriber
from omniformer.tasks.asr.metrics import word_error_rate
from omniformer.tasks.asr.streaming import StreamSettings

from test_asr_task import RATE, WORDS, speak

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tone_recogniser):
    return tone_recogniser[0]


@pytest.fixture(scope="module")
def asr(model_dir):
    return Transcriber.load(model_dir)


def feed_in_pieces(stream, wave, rng, low=80, high=2400):
    """Feeds ``wave`` in random-sized pieces; every update the stream gave."""
    updates, pos = [], 0
    while pos < len(wave):
        n = rng.randint(low, high)
        update = stream.feed(wave[pos: pos + n])
        pos += n
        if update is not None:
            updates.append(update)
    return updates


def sentence(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


@pytest.mark.parametrize("decoder", ["beam", "greedy"])
def test_streamed_transcript_is_the_offline_one(asr, decoder):
    """Recordings no longer than the window: the final streamed transcript equals the offline
    one; partial transcripts come before it, as the audio does."""
    rng = random.Random(11)
    for _ in range(12):
        wave = speak(sentence(rng, rng.randint(1, 3)), rng)
        assert len(wave) < asr.cfg.model.audio.max_seconds * RATE
        stream = asr.stream(decoder=decoder)
        updates = feed_in_pieces(stream, wave, rng)
        final = stream.finish()
        offline = asr.transcribe(wave, timings=True, decoder=decoder)
        assert final.final and final.text == offline.text
        assert [w["word"] for w in final.words] == [w["word"] for w in offline.words]
        assert final.seconds == pytest.approx(len(wave) / RATE)
        seconds = [u.seconds for u in updates]
        assert seconds == sorted(seconds) and all(not u.final for u in updates)
        assert any(u.text for u in updates), "no partial transcript before the final one"
        assert stream.steps >= len(wave) / RATE / stream.settings.step_seconds - 1


def test_partial_transcripts_firm_up(asr):
    """The stable part of a partial is whole words the partial begins with; here (a clear
    recording) it only grows, and the final transcript begins with each of them."""
    rng = random.Random(5)
    wave = speak("cab dad abc", rng)
    stream = asr.stream()
    updates = feed_in_pieces(stream, wave, rng, 400, 900)
    final = stream.finish()
    assert final.text == "cab dad abc"
    stable = [u.stable for u in updates]
    assert all(u.text.startswith(u.stable) for u in updates)
    assert stable[-1] and all(final.text.startswith(s) for s in stable), stable
    assert all(len(a) <= len(b) for a, b in zip(stable, stable[1:])), stable
    # The newest words show before they are stable: a partial ahead of its stable part.
    assert any(len(u.text) > len(u.stable) for u in updates)


def test_long_stream_in_bounded_memory_and_model_input(asr, monkeypatch):
    """A minute of speech: the model never sees more than the window, the stream keeps no more
    than it, and the transcript is as good as the recording's."""
    calls = []
    real = asr.log_probs

    def counted(items):
        calls.append(items[0]["audio"].shape[-1])
        return real(items)

    monkeypatch.setattr(asr, "log_probs", counted)
    rng = random.Random(2)
    text = sentence(rng, 90)
    wave = speak(text, rng)
    assert len(wave) > 50 * RATE
    stream = asr.stream()
    kept = 0
    pos = 0
    while pos < len(wave):
        stream.feed(wave[pos: pos + 800])
        pos += 800
        kept = max(kept, stream.buffer.size)
    final = stream.finish()
    frames_in_window = stream.window // (stream.token_samples // asr.cfg.model.audio.subsample) + 1
    assert max(calls) <= frames_in_window
    assert kept <= stream.window + stream.token_samples + stream.step + 800  # the window and what waits for a step
    assert len(calls) == stream.steps and stream.steps < len(wave) / stream.step + 3
    assert word_error_rate([text], [final.text]) <= 0.1, final.text
    starts = [w["start"] for w in final.words]
    assert starts == sorted(starts) and starts[-1] > 45


def test_faster_than_real_time_feeds_take_bigger_steps(asr):
    """A whole recording fed at once (a client sending a file): fewer, larger steps, the same transcript."""
    wave = speak("dad abc cab ab", random.Random(8))
    at_once = asr.stream(StreamSettings(step_seconds=0.1, lookahead_seconds=0.3))
    at_once.feed(wave)
    final = at_once.finish()
    assert final.text == asr.transcribe(wave).text
    assert at_once.max_step > 4 * at_once.step and at_once.steps < len(wave) / at_once.max_step + 2


def test_quiet_microphone_is_silence_without_the_model(asr, monkeypatch):
    """Three seconds of a faint noise floor (-60 dBFS) before speaking: no model step, no word
    heard in it; then the speech is transcribed as it is without the wait."""
    calls = []
    real = asr.log_probs
    monkeypatch.setattr(asr, "log_probs", lambda items: calls.append(1) or real(items))
    rng = random.Random(6)
    floor = (0.001 * np.random.default_rng(0).standard_normal(3 * RATE)).astype(np.float32)
    stream = asr.stream()
    updates = feed_in_pieces(stream, floor, rng, 800, 800)
    assert not calls and not any(u.text for u in updates) and stream.silent_steps >= 14
    speech = speak("cab dad", rng)
    feed_in_pieces(stream, speech, rng, 800, 800)
    final = stream.finish()
    assert calls and final.text == asr.transcribe(speech).text == "cab dad"
    assert final.words[0]["start"] > 3.0        # timed in the whole stream
    ungated = asr.stream(StreamSettings(silence_dbfs=None))
    ungated.feed(floor)
    assert ungated.silent_steps == 0


def test_stream_settings_and_misuse_are_refused(asr):
    with pytest.raises(ValueError, match="lookback_seconds"):
        asr.stream(StreamSettings(lookback_seconds=30.0))          # beyond the model's 2 s
    with pytest.raises(ValueError, match="lookback_seconds"):
        asr.stream(StreamSettings(step_seconds=0.5, lookback_seconds=1.0, lookahead_seconds=0.5))
    with pytest.raises(ValueError, match="step_seconds"):
        asr.stream(StreamSettings(step_seconds=0.0))
    with pytest.raises(ValueError, match="silence_dbfs"):
        asr.stream(StreamSettings(silence_dbfs=6.0))
    with pytest.raises(ValueError, match="decoder"):
        asr.stream(decoder="viterbi")
    stream = asr.stream()
    with pytest.raises(ValueError, match="NaN"):
        stream.feed(np.array([0.0, np.nan], np.float32))
    assert stream.finish().text == ""          # nothing heard, nothing said
    with pytest.raises(RuntimeError, match="finished"):
        stream.feed(np.zeros(10, np.float32))


# ---------------------------------------------------------------------------------------------
# The WebSocket route
# ---------------------------------------------------------------------------------------------

def pcm(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def client(model_dir):
    from fastapi.testclient import TestClient
    from omniformer.serve.app import create_app
    with TestClient(create_app(model_dir, max_streams=2, max_stream_seconds=20.0)) as c:
        yield c


def run_stream(ws, data: bytes, piece: int) -> tuple[list[dict], dict]:
    """Sends ``data`` in ``piece``-byte messages, then the end; (partials, the final message)."""
    ready = ws.receive_json()
    assert ready["type"] == "ready"
    for i in range(0, len(data), piece):
        ws.send_bytes(data[i: i + piece])
    ws.send_text(json.dumps({"type": "end"}))
    partials = []
    while True:
        message = ws.receive_json()
        if message["type"] != "partial":
            return partials, message
        partials.append(message)


def test_websocket_transcribes_as_it_hears(client, asr):
    wave = speak("cab dad abc", random.Random(1))
    offline = asr.transcribe(wave).text
    # odd-sized messages: half a sample waits for the next message
    with client.websocket_connect("/v1/transcribe/stream") as ws:
        partials, final = run_stream(ws, pcm(wave), 1601)
    assert final["type"] == "final" and final["text"] == offline == "cab dad abc"
    assert [w["word"] for w in final["words"]] == ["cab", "dad", "abc"]
    assert partials and partials[-1]["text"] and all("stable" in p for p in partials)
    # another rate, resampled as it streams, and the greedy decoder
    wave44 = soxr.resample(wave, RATE, 44100).astype(np.float32)
    with client.websocket_connect("/v1/transcribe/stream?sample_rate=44100&decoder=greedy") as ws:
        _, final = run_stream(ws, pcm(wave44), 8820)
    assert final["text"] == asr.transcribe(wave, decoder="greedy").text
    info = client.get("/v1/model").json()["stream"]
    assert info["route"] == "/v1/transcribe/stream" and info["max_streams"] == 2


def error_of(ws) -> tuple[dict, int]:
    """The error message the server sends, and the code it closes with."""
    message = ws.receive_json()
    while message["type"] in ("ready", "partial"):
        message = ws.receive_json()
    assert message["type"] == "error", message
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    return message["error"], closed.value.code


@pytest.mark.parametrize("query, field", [("sample_rate=abc", "sample_rate"), ("sample_rate=100", "sample_rate"),
                                          ("decoder=viterbi", "decoder"), ("rate=16000", "rate")])
def test_websocket_refuses_bad_options(client, query, field):
    with client.websocket_connect(f"/v1/transcribe/stream?{query}") as ws:
        error, code = error_of(ws)
    assert error["field"] == field and error["type"] == "invalid_field" and code == 1008


def test_websocket_refuses_garbage_big_messages_and_long_streams(client):
    with client.websocket_connect("/v1/transcribe/stream") as ws:
        ws.send_bytes(pcm(np.zeros(800, np.float32)))
        ws.send_text("hello there")
        error, code = error_of(ws)
    assert error["type"] == "invalid_message" and code == 1003 and "end" in error["message"]
    with client.websocket_connect("/v1/transcribe/stream") as ws:
        ws.send_bytes(b"\x00" * (1024 * 1024))
        error, code = error_of(ws)
    assert error["type"] == "payload_too_large" and code == 1009
    with client.websocket_connect("/v1/transcribe/stream") as ws:   # the server's 20 s limit
        for _ in range(25):
            ws.send_bytes(pcm(np.zeros(RATE, np.float32)))
        error, code = error_of(ws)
    assert error["type"] == "too_long" and "20" in error["message"] and code == 1008
    assert client.get("/healthz").status_code == 200


def test_websocket_streams_are_limited_and_freed(client, model_dir):
    """Two streams at once (this server's limit): a third is refused; a client that goes away
    mid-utterance or falls silent frees its place, and the server goes on serving."""
    wave = pcm(speak("dad", random.Random(3)))
    with client.websocket_connect("/v1/transcribe/stream") as a, client.websocket_connect("/v1/transcribe/stream") as b:
        a.receive_json(), b.receive_json()
        with client.websocket_connect("/v1/transcribe/stream") as c:
            error, code = error_of(c)
        assert error["type"] == "overloaded" and code == 1013
        a.send_bytes(wave[: len(wave) // 2])
    # both left without {"type": "end"}; their places are free again
    service = client.app.state.service
    for _ in range(100):
        if service.streams == 0:
            break
        threading.Event().wait(0.05)
    assert service.streams == 0
    metrics = client.get("/metrics").text
    assert "omniformer_streams 0" in metrics
    service.idle_seconds = 0.3
    try:
        with client.websocket_connect("/v1/transcribe/stream") as ws:
            ws.send_bytes(wave[:1000])
            error, code = error_of(ws)
        assert error["type"] == "timeout" and code == 1008
    finally:
        service.idle_seconds = 30.0
    with client.websocket_connect("/v1/transcribe/stream") as ws:
        _, final = run_stream(ws, wave, 4000)
    assert final["text"] == "dad"


def test_no_streams_when_the_server_allows_none(model_dir):
    from fastapi.testclient import TestClient
    from omniformer.serve.app import create_app
    with TestClient(create_app(model_dir, max_streams=0)) as c:
        with c.websocket_connect("/v1/transcribe/stream") as ws:
            error, code = error_of(ws)
        assert error["type"] == "overloaded" and code == 1013
        assert c.post("/v1/transcribe", files={"audio": ("a.wav", b"", "audio/wav")}).status_code in (400, 415, 422)
