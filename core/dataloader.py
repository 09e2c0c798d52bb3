"""llm.c's distributed data loader (llmc/dataloader.h) over token shards, gpt-2's (uint16) or llama-3's (uint32).

A sample is B*T+1 tokens at token offset sample * (num_processes*B*T) + rank*B*T; a shard holds
(2*ntok - 2) // (2*num_processes*B*T) samples. The training loader shuffles with mt19937 seeded
42 + rank: the shard order at every reset (epoch), then each shard's sample order as it loads.
"""

import glob as globlib
from dataclasses import dataclass

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.formats import SHARD_FORMATS, read_shard
from llmc.core.rand import MT19937


@dataclass
class LoaderPosition:
    shard: int  # index into the (shuffled) shard order
    sample: int  # next sample within the shard


class DataLoader:
    def __init__(self, pattern: str, B: int, T: int, rank: int = 0, num_processes: int = 1, shuffle: bool = True):
        self.files = sorted(globlib.glob(pattern))
        if not self.files:
            raise LlmcError(f"no files found matching the pattern: {pattern}")
        self.B, self.T, self.rank, self.nproc, self.shuffle = B, T, rank, num_processes, shuffle
        self.num_tokens, dtypes = 0, set()
        for f in self.files:  # validate every shard up front so a bad one fails now, not mid-run
            tokens = read_shard(f)
            if len(tokens) < num_processes * B * T + 1:
                raise LlmcError(f"{f}: {len(tokens)} tokens, too few for one batch of B*T+1 = "
                                f"{num_processes * B * T + 1}")
            self.num_tokens += len(tokens)
            dtypes.add(tokens.dtype)
        if len(dtypes) > 1:  # one model's tokens: gpt-2's and llama-3's ids mean different things
            raise LlmcError(f"{pattern}: mixes gpt-2 (uint16) and llama-3 (uint32) token shards")
        dtype = dtypes.pop()
        self.token_kind = next(kind for kind, (_, _, dt) in SHARD_FORMATS.items() if np.dtype(dt) == dtype)
        if shuffle:
            self.rng = MT19937(42 + rank)
            self.shard_order = np.arange(len(self.files))
        self.reset()

    def _load_shard(self, index: int) -> None:
        f = self.files[self.shard_order[index] if self.shuffle else index]
        self.tokens = read_shard(f)
        self.shard_samples = (2 * len(self.tokens) - 2) // (2 * self.nproc * self.B * self.T)

    def _shuffle_samples(self) -> None:
        self.sample_order = self.rng.permutation(self.shard_samples)

    def reset(self) -> None:
        self.shard, self.sample = 0, 0
        if self.shuffle:
            self.rng.permute(self.shard_order)
        self._load_shard(0)
        if self.shuffle:
            self._shuffle_samples()

    def _advance(self) -> None:
        if self.shard == len(self.files) - 1:
            self.reset()  # next epoch
            return
        self.shard, self.sample = self.shard + 1, 0
        self._load_shard(self.shard)
        if self.shuffle:
            self._shuffle_samples()

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each (B, T) int32."""
        if self.sample >= self.shard_samples:
            self._advance()
        idx = int(self.sample_order[self.sample]) if self.shuffle else self.sample
        BT = self.B * self.T
        start = idx * self.nproc * BT + self.rank * BT
        buf = np.asarray(self.tokens[start: start + BT + 1], dtype=np.int32)
        self.sample += 1
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)

    # ------------------------------------------------------------------ exact resume
    def state(self) -> dict:
        s = {"shard": self.shard, "sample": self.sample}
        if self.shuffle:
            s.update(shard_order=self.shard_order.copy(), sample_order=self.sample_order.copy(),
                     rng=self.rng.get_state())
        return s

    def restore(self, s: dict) -> None:
        """Continue from state(); refuses a state of another shard set or batch layout (one line, the
        caller names the file it came from)."""
        if ("shard_order" in s) != self.shuffle:
            raise LlmcError(f"the checkpoint's data loader {'did' if 'shard_order' in s else 'did not'} shuffle; "
                            f"resume with the same -a")
        nfiles = len(self.files)
        if s["shard"] >= nfiles or (self.shuffle and sorted(s["shard_order"]) != list(range(nfiles))):
            raise LlmcError(f"the checkpoint's data loader had other shards than the {nfiles} of -i now")
        self.shard, self.sample = int(s["shard"]), int(s["sample"])
        if self.shuffle:
            self.shard_order = np.asarray(s["shard_order"]).copy()
            self.rng.set_state(s["rng"])
        self._load_shard(self.shard)
        if self.sample > self.shard_samples or (
                self.shuffle and sorted(s["sample_order"]) != list(range(self.shard_samples))):
            raise LlmcError("the checkpoint's data loader read a shard in another batch layout; "
                            "resume with the same -b, -t and data")
        if self.shuffle:
            self.sample_order = np.asarray(s["sample_order"]).copy()
