"""Tiny GPT-2 models and token shards for the tests of the training loop (the Trainer and the CLI)."""

from pathlib import Path

import numpy as np

from llmc.core.config import GPTConfig
from llmc.core.formats import write_model, write_shard
from llmc.core.init import random_init

CFG = GPTConfig(max_seq_len=32, vocab_size=101, padded_vocab_size=128, num_layers=2, num_heads=2, channels=32)


def write_training_data(d: Path) -> Path:
    """model.bin (CFG, random init), train_{0,1,2}.bin and val.bin in d."""
    write_model(d / "model.bin", CFG, random_init(CFG))
    rng = np.random.default_rng(0)
    # shards of different lengths (10, 7, 14 samples of B*T = 64), so runs cross shards and epochs
    for i, n in enumerate((700, 500, 900)):
        write_shard(d / f"train_{i}.bin", rng.integers(0, CFG.vocab_size, n))
    write_shard(d / "val.bin", rng.integers(0, CFG.vocab_size, 600))
    return d


def write_model_and_shards(d: Path, cfg: GPTConfig, train_tokens: int, val_tokens: int, seed: int) -> Path:
    """model.bin (cfg, random init), and train.bin and val.bin of random tokens, in d."""
    write_model(d / "model.bin", cfg, random_init(cfg))
    rng = np.random.default_rng(seed)
    write_shard(d / "train.bin", rng.integers(0, cfg.vocab_size, train_tokens))
    write_shard(d / "val.bin", rng.integers(0, cfg.vocab_size, val_tokens))
    return d
