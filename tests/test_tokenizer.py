from llm.tokenizer import EOD, eod_id, load_tokenizer, train_tokenizer

TEXTS = [
    "def add(a, b):\n    return a + b\n\n\n\tindented with a tab\n",
    "Grüße aus Köln — naïve café, 東京, emoji 🚀 and trailing spaces   \n",
    "The quick brown fox jumps over the lazy dog. " * 20,
]


def test_round_trip_is_exact():
    tok = train_tokenizer(TEXTS, vocab_size=400)
    for text in [*TEXTS, "never seen: Ωμέγα ✓ \r\n  x", ""]:
        assert tok.decode(tok.encode(text).ids) == text


def test_learns_merges_and_keeps_eod_single():
    tok = train_tokenizer(TEXTS, vocab_size=400)
    assert 259 < tok.get_vocab_size() <= 400  # 256 bytes + EOD + the two chat markers + merges
    assert len(tok.encode("The quick brown fox").ids) < len("The quick brown fox")
    assert eod_id(tok) == 0 and tok.id_to_token(0) == EOD  # one vocabulary entry, inserted by id


def test_saved_and_string_forms_load_the_same(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=300)
    tok.save(str(tmp_path / "tokenizer.json"))
    for loaded in (load_tokenizer(tmp_path / "tokenizer.json"), load_tokenizer(tok.to_str())):
        assert loaded.encode(TEXTS[0]).ids == tok.encode(TEXTS[0]).ids


def test_the_end_of_document_string_in_a_text_is_ordinary_text(tmp_path):
    tok = train_tokenizer(["a doc about <|endoftext|> markers"] * 20 + ["plain text here"] * 20, vocab_size=300)
    text = "see the <|endoftext|> token"
    for t in (tok, load_tokenizer(tok.to_str())):
        ids = t.encode(text).ids
        assert eod_id(t) not in ids  # only the data pipeline puts the token there, by id
        assert t.decode(ids) == text
