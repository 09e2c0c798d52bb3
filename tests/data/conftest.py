"""Fixtures for the prepro tests: an independent GPT-2 encoding."""

import os

import pytest

from .util import ASSETS, EOT


@pytest.fixture(scope="session")
def ref_enc():
    """tiktoken's own gpt2 recipe (its regex, its loader) on the shipped ranks, not llmc's tokenizer module."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local file, leave no cached copy behind
    try:
        ranks = load_tiktoken_bpe(str(ASSETS / "gpt2.tiktoken"),
                                  expected_hash="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")
    finally:
        if cache is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = cache
    return tiktoken.Encoding("gpt2-ref", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT}, explicit_n_vocab=50257)
