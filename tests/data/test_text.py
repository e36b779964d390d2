import pytest

from omniformer.data.text import SPECIAL_TOKENS, Tokenizer, TokenizerError

TEXTS = ["the red circle is left of the blue square", "what shape is the green object?",
         "there are three objects", "is there a yellow triangle?"] * 5


def test_train_save_load_roundtrip(tmp_path):
    tok = Tokenizer.train(TEXTS, vocab_size=200)
    ids = tok.encode("the red circle")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert tok.decode(ids) == "the red circle"
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    again = Tokenizer.load(tmp_path)
    assert again.encode("what shape is the red object?") == tok.encode("what shape is the red object?")
    assert again.vocab_size == tok.vocab_size
    assert [again.id_to_token(i) for i in again.special_ids] == SPECIAL_TOKENS


def test_load_bert_vocab_txt(tmp_path):
    vocab = SPECIAL_TOKENS + ["the", "red", "cir", "##cle", "is", "left", "of", "?"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = Tokenizer.load(tmp_path / "vocab.txt")
    assert tok.tokens("The red circle") == ["[CLS]", "the", "red", "cir", "##cle", "[SEP]"]
    assert tok.encode("purple") == [tok.cls_id, tok.unk_id, tok.sep_id]


def test_truncation_keeps_sep_and_padding_mask():
    tok = Tokenizer.train(TEXTS, vocab_size=200)
    ids = tok.encode("the red circle is left of the blue square", max_len=5)
    assert len(ids) == 5 and ids[-1] == tok.sep_id
    batch, mask = tok.encode_batch(["the red circle", "there are three objects"])
    assert batch.shape == mask.shape
    assert mask.sum(1).tolist() == [5, 6]
    assert (batch[~mask] == tok.pad_id).all()


def test_empty_text_and_missing_files_are_clear(tmp_path):
    tok = Tokenizer.train(TEXTS, vocab_size=200)
    with pytest.raises(TokenizerError, match="empty"):
        tok.encode("   ")
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(TokenizerError, match=r"lacks special tokens"):
        Tokenizer.load(tmp_path / "vocab.txt")
    with pytest.raises(TokenizerError, match="no non-empty text"):
        Tokenizer.train(["", " "])


WRITTEN = ["Ein Mann im T-Shirt, der's mag.", "Zwei Männer (rot) spielen \"Fußball\".",
           "A black-and-white dog; I do not know why."]


def test_whole_word_pieces_decode_text_as_written_and_split_punctuation_does_not():
    """Whole words keep hyphens, apostrophes and brackets where they were (and BERT's clean-up,
    which would make "do not" "don't", stays off); split punctuation spaces them out."""
    whole = Tokenizer.train(WRITTEN * 3, vocab_size=300, lowercase=False, split_punctuation=False)
    split = Tokenizer.train(WRITTEN * 3, vocab_size=300, lowercase=False)
    for text in WRITTEN:
        assert whole.decode(whole.encode(text)) == text
    assert split.decode(split.encode(WRITTEN[0])) == "Ein Mann im T - Shirt, der ' s mag."


@pytest.mark.parametrize("setting,whole_words", [(None, True), (False, True), (True, False)])
def test_text_writing_tasks_train_whole_word_vocabularies_unless_told(tmp_path, setting, whole_words):
    """The vocabulary an encoder-decoder run trains (translate, caption) is of whole words by
    default, so what it writes decodes as written; the other tasks split punctuation by default."""
    from omniformer.config import DataConfig
    from omniformer.tasks.common import build_tokenizer, seq2seq_tokenizer
    data = DataConfig(vocab_size=300, split_punctuation=setting)
    tok = seq2seq_tokenizer(tmp_path, None, False, data, lambda: WRITTEN * 3, lowercase=False)
    assert (tok.decode(tok.encode(WRITTEN[0])) == WRITTEN[0]) == whole_words
    other = build_tokenizer(data, [{"text": t} for t in WRITTEN * 3])
    assert (other.decode(other.encode("T-Shirt")) == "t-shirt") == (setting is False)  # lowercased
