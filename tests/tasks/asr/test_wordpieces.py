"""CTC over word pieces: the label set writes transcripts back as they were, refuses what it
cannot write by name, a recogniser learns over pieces (tone "speech", trained here), its
checkpoint keeps its tokenizer, and the closed word list and word timings work over pieces."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from omniformer.config import ConfigError, load_config
from omniformer.data.text import Tokenizer
from omniformer.tasks.asr import TASK, Transcriber, TranscriptError, WordPieces
from omniformer.tasks.asr.decoding import Hypothesis, Lexicon, prefix_beam_search, to_text, word_timings

from test_asr_task import WORDS, speak, tiny_cfg, write_tones

torch.set_num_threads(1)


def pieces(texts=("the cat sat on the mat", "cats don't stop"), vocab_size=40) -> WordPieces:
    return WordPieces.from_texts(list(texts) * 3, vocab_size)


def test_pieces_write_transcripts_back_and_refuse_what_they_cannot():
    wp = pieces()
    for text in ("the cat sat on the mat", "cats don't stop", "the mat sat"):
        labels = wp.encode(text).tolist()
        assert 0 not in labels and wp.decode(labels) == text
        assert to_text(labels, wp.labels).strip() == text  # the decoders' way of joining labels
    assert len(wp.encode("the cat sat on the mat")) < len("the cat sat on the mat")  # fewer labels than letters
    with pytest.raises(TranscriptError, match=r"sample 7.*'dog'.*not in the vocabulary"):
        wp.encode("the dog", "sample 7")
    # A tokenizer that cuts words at punctuation (BERT's) cannot write "don't" as one word.
    bert = WordPieces(Tokenizer.train(["cats don't stop"] * 3, vocab_size=40))
    with pytest.raises(TranscriptError, match=r"don't.*cut into the words"):
        bert.encode("cats don't stop")


def test_a_closed_word_list_and_timings_over_pieces():
    wp = pieces(("ab abc cab", "ab cab"), 30)
    lexicon = Lexicon(["ab", "cab"], wp.labels, spell=wp.spell)
    assert lexicon.starts and all(wp.labels[i].startswith(" ") for i in lexicon.starts)
    # Frames favouring " abc" (not a listed word) a little over " ab": the list keeps "ab".
    ab, abc = wp.spell("ab"), wp.spell("abc")
    frames = torch.full((6, len(wp)), -20.0)
    frames[:, 0] = -1.0
    frames[1, abc[0]], frames[1, ab[0]] = -0.1, -0.5
    frames = frames.log_softmax(-1)
    free = prefix_beam_search(frames, beam=4)[0]
    kept = prefix_beam_search(frames, beam=4, lexicon=lexicon)[0]
    assert wp.decode(free.tokens) == "abc" and wp.decode(kept.tokens) == "ab"
    with pytest.raises(ValueError, match="cannot write 'zzz'"):
        Lexicon(["zzz"], wp.labels, spell=wp.spell)
    # Two words' pieces: each word starts at its first piece's frame.
    hyp = Hypothesis(wp.spell("ab") + wp.spell("cab"), [2, 9][: len(ab)] + list(range(9, 9 + len(wp.spell("cab")))))
    words = word_timings(hyp, wp.labels, 0.02)
    assert [w["word"] for w in words] == ["ab", "cab"] and words[1]["start"] == pytest.approx(0.18)


def test_alphabet_is_for_characters_only():
    with pytest.raises(ConfigError, match="alphabet: applies to units: characters"):
        TASK.config(load_config(overrides={"task": {"units": "wordpieces", "alphabet": "abc"}}))


def test_a_recogniser_learns_over_word_pieces(tmp_path):
    manifest = write_tones(tmp_path / "data")
    cfg = tiny_cfg(tmp_path / "run", manifest, task={"units": "wordpieces"})
    cfg.data.vocab_size = 16  # some words are one piece, others two or three
    best = TASK.train(cfg, progress=False)
    asr = Transcriber.load(best)
    assert isinstance(asr.alphabet, WordPieces) and (best / "tokenizer.json").is_file()
    assert any(len(asr.alphabet.spell(w)) > 1 for w in WORDS)  # pieces, not only whole words
    m = TASK.evaluate(best, manifest, split="test", device="cpu").metrics
    assert m["wer"] < 0.15, m
    wave = speak("cab dad", random.Random(3))
    t = asr.transcribe(wave, timings=True)
    assert [w["word"] for w in t.words] == t.text.split()
    stream = asr.stream()  # live, in 0.1 s chunks: the final transcript is the offline one
    for pos in range(0, len(wave), 800):
        stream.feed(wave[pos: pos + 800])
    final = stream.finish()
    assert final.final and final.text == t.text and [w["word"] for w in final.words] == t.text.split()
    # Resuming the run as characters would give its head other labels: refused by name.
    chars = tiny_cfg(tmp_path / "run", manifest, task={"units": "characters"})
    with pytest.raises(ValueError, match=r"--resume: .* writes wordpieces, not characters \(task.units\)"):
        TASK.train(chars, resume=True, progress=False)
