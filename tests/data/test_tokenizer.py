import hashlib

import numpy as np

from llmc.data.tokenizer import EOT, GPT2_PATTERN, RANKS_FILE, encode, encode_documents, gpt2_encoding

from .util import ASSETS

SAMPLES = [
    "Hello world", "hello world", "", "  leading and trailing  \n\n", "I'm sure they'll've said 'twas",
    "numbers 1234567 3.14159 and 1,000,000", "tabs\tand\r\nwindows\nnewlines\n\n\n", "unicode: naïve café 東京 🤖👍🏽",
    "<|endoftext|> stays text here", "a" * 5000, "lone surrogate \ud800 here",
]


def test_shipped_ranks_are_openais_r50k_base():
    data = RANKS_FILE.read_bytes()
    assert RANKS_FILE == ASSETS / "gpt2.tiktoken"
    assert hashlib.sha256(data).hexdigest() == "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def test_pattern_is_tiktokens_gpt2():
    from tiktoken_ext.openai_public import r50k_pat_str
    assert GPT2_PATTERN == r50k_pat_str


def test_known_token_ids():
    assert encode("Hello world").tolist() == [15496, 995]
    assert encode("hello world").tolist() == [31373, 995]  # tiktoken's own docstring example
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257 and enc.eot_token == EOT == 50256


def test_encode_matches_tiktoken_encode_ordinary(ref_enc):
    for text in SAMPLES:
        assert encode(text).tolist() == ref_enc.encode_ordinary(text), repr(text[:40])
    corpus = (ASSETS / "shakespeare.txt").read_text()
    np.testing.assert_array_equal(encode(corpus), ref_enc.encode_ordinary(corpus))


def test_encode_documents_puts_eot_before_each(ref_enc):
    n, tokens = encode_documents(SAMPLES)
    expected = []
    for text in SAMPLES:
        expected += [EOT] + ref_enc.encode_ordinary(text)
    assert n == len(SAMPLES) and tokens.dtype == np.uint16 and tokens.tolist() == expected
    n, tokens = encode_documents([])
    assert n == 0 and tokens.size == 0 and tokens.dtype == np.uint16
