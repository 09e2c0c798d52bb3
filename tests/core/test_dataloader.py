"""llm.c's data loader (llmc/dataloader.h) over tiny shards whose tokens tell where they came from:
shard k holds k*1000 + position, so a batch's first token names its shard and offset."""

import numpy as np
import pytest

from llmc.core.dataloader import DataLoader
from llmc.core.errors import LlmcError
from llmc.core.formats import write_shard

B, T = 2, 5  # B*T = 10


def make_shards(tmp_path, sizes: list[int], prefix: str = "train") -> str:
    for k, n in enumerate(sizes):
        write_shard(tmp_path / f"{prefix}_{k:06d}.bin", k * 1000 + np.arange(n))
    return str(tmp_path / f"{prefix}_*.bin")


def where(batch: tuple[np.ndarray, np.ndarray]) -> tuple[int, int]:
    """(shard, token offset) of a batch, after checking it is one consecutive B*T+1 window."""
    x, y = batch
    assert x.shape == y.shape == (B, T) and x.dtype == np.int32 == y.dtype
    start = int(x[0, 0])
    np.testing.assert_array_equal(x.reshape(-1), start + np.arange(B * T))
    np.testing.assert_array_equal(y.reshape(-1), start + 1 + np.arange(B * T))
    return start // 1000, start % 1000


def samples_per_shard(ntok: int, nproc: int = 1) -> int:
    return (ntok * 2 - 2) // (nproc * B * T * 2)  # llm.c's formula, in bytes of uint16


def test_unshuffled_batches_are_consecutive_windows(tmp_path):
    sizes = [53, 37]  # 5 and 3 samples
    loader = DataLoader(make_shards(tmp_path, sizes), B, T, shuffle=False)
    assert loader.num_tokens == sum(sizes)
    got = [where(loader.next_batch()) for _ in range(5 + 3 + 2)]
    assert got == [(0, 0), (0, 10), (0, 20), (0, 30), (0, 40), (1, 0), (1, 10), (1, 20), (0, 0), (0, 10)]
    loader.reset()
    assert where(loader.next_batch()) == (0, 0)


@pytest.mark.parametrize("ntok,nproc", [(11, 1), (20, 1), (21, 1), (30, 1), (31, 1), (100, 1), (101, 1),
                                        (21, 2), (40, 2), (41, 2), (100, 2), (101, 2)])
def test_samples_per_shard(tmp_path, ntok, nproc):
    loader = DataLoader(make_shards(tmp_path, [ntok]), B, T, num_processes=nproc, shuffle=False)
    assert loader.shard_samples == samples_per_shard(ntok, nproc) == (ntok - 1) // (nproc * B * T)


@pytest.mark.parametrize("nproc", [2, 3])
def test_ranks_read_interleaved_windows(tmp_path, nproc):
    pattern = make_shards(tmp_path, [97, 71])
    loaders = [DataLoader(pattern, B, T, rank=r, num_processes=nproc, shuffle=False) for r in range(nproc)]
    per_shard = [samples_per_shard(97, nproc), samples_per_shard(71, nproc)]
    for shard, count in enumerate(per_shard):
        for sample in range(count):
            for rank, loader in enumerate(loaders):
                assert where(loader.next_batch()) == (shard, sample * nproc * B * T + rank * B * T)
    assert where(loaders[1].next_batch()) == (0, B * T)  # next epoch


def llmc_reference_order(sizes: list[int], seed: int, epochs: int, nproc: int = 1, rank: int = 0) -> list[tuple[int, int]]:
    """dataloader.h's shuffled order, from the raw mt19937 stream (NumPy's RandomState is the same
    generator): at each reset Fisher-Yates the current shard order, then for each shard as it loads
    a fresh identity sample order; j = draw % (i + 1), i from n-1 down to 1."""
    rs = np.random.RandomState(seed)

    def shuffle(values: list[int]) -> list[int]:
        for i in range(len(values) - 1, 0, -1):
            j = int(rs.randint(0, 2**32, dtype=np.uint64)) % (i + 1)
            values[i], values[j] = values[j], values[i]
        return values

    order, shard_order = [], list(range(len(sizes)))
    for _ in range(epochs):
        shard_order = shuffle(shard_order)
        for shard in shard_order:
            for sample in shuffle(list(range(samples_per_shard(sizes[shard], nproc)))):
                order.append((shard, sample * nproc * B * T + rank * B * T))
    return order


SIZES = [53, 37, 81, 121]  # 5, 3, 8, 12 samples


@pytest.mark.parametrize("rank,nproc", [(0, 1), (1, 2)])
def test_shuffled_order_is_llmc(tmp_path, rank, nproc):
    loader = DataLoader(make_shards(tmp_path, SIZES), B, T, rank=rank, num_processes=nproc)
    want = llmc_reference_order(SIZES, 42 + rank, epochs=3, nproc=nproc, rank=rank)
    assert [where(loader.next_batch()) for _ in range(len(want))] == want


def test_shuffled_epochs_visit_every_sample_once_and_reshuffle(tmp_path):
    loader = DataLoader(make_shards(tmp_path, SIZES), B, T)
    per_epoch = sum(samples_per_shard(n) for n in SIZES)
    everything = sorted((k, s * B * T) for k, n in enumerate(SIZES) for s in range(samples_per_shard(n)))
    epochs = [[where(loader.next_batch()) for _ in range(per_epoch)] for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == everything
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != everything  # shuffled at all


def test_shuffling_is_deterministic_and_seeded_by_rank(tmp_path):
    pattern = make_shards(tmp_path, SIZES)
    a, b = DataLoader(pattern, B, T), DataLoader(pattern, B, T)
    assert [where(a.next_batch()) for _ in range(60)] == [where(b.next_batch()) for _ in range(60)]
    r0 = DataLoader(pattern, B, T, rank=0, num_processes=2)
    r1 = DataLoader(pattern, B, T, rank=1, num_processes=2)
    order0 = [where(r0.next_batch())[0] for _ in range(20)]
    order1 = [where(r1.next_batch())[0] for _ in range(20)]
    assert order0 != order1  # seeds 42 and 43


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("skip", [0, 3, 5, 7, 28, 30])  # mid-shard, at shard ends, across an epoch
def test_state_restore_resumes_the_exact_sequence(tmp_path, shuffle, skip):
    pattern = make_shards(tmp_path, SIZES)
    loader = DataLoader(pattern, B, T, shuffle=shuffle)
    for _ in range(skip):
        loader.next_batch()
    state = loader.state()
    want = [where(loader.next_batch()) for _ in range(40)]  # runs into the next epoch's reshuffle
    fresh = DataLoader(pattern, B, T, shuffle=shuffle)
    fresh.next_batch()  # a different position before restoring
    fresh.restore(state)
    assert [where(fresh.next_batch()) for _ in range(40)] == want


def test_state_is_a_snapshot(tmp_path):
    loader = DataLoader(make_shards(tmp_path, SIZES), B, T)
    state = loader.state()
    first = [where(loader.next_batch()) for _ in range(30)]  # mutates the loader's own orders
    loader.restore(state)
    assert [where(loader.next_batch()) for _ in range(30)] == first


def test_llama3_shards_give_the_same_int32_batches(tmp_path):
    tokens = 2**17 + np.arange(53)  # ids beyond uint16, as Llama 3's 128,256-token vocab has
    write_shard(tmp_path / "l_000.bin", tokens, "llama-3")
    loader = DataLoader(str(tmp_path / "l_*.bin"), B, T, shuffle=False)
    assert loader.num_tokens == 53 and loader.tokens.dtype == np.uint32
    for i in range(5):
        x, y = loader.next_batch()
        assert x.dtype == y.dtype == np.int32
        np.testing.assert_array_equal(x.reshape(-1), tokens[i * B * T: (i + 1) * B * T])
        np.testing.assert_array_equal(y.reshape(-1), tokens[i * B * T + 1: (i + 1) * B * T + 1])
    assert loader.next_batch()[0][0, 0] == tokens[0]  # next epoch


def test_gpt2_and_llama3_shards_in_one_glob_is_an_error(tmp_path):
    write_shard(tmp_path / "m_000.bin", np.arange(50))
    write_shard(tmp_path / "m_001.bin", np.arange(50), "llama-3")
    with pytest.raises(LlmcError, match="mixes gpt-2 .* and llama-3"):
        DataLoader(str(tmp_path / "m_*.bin"), B, T)


def test_no_files_is_an_error(tmp_path):
    with pytest.raises(LlmcError, match="no files found matching"):
        DataLoader(str(tmp_path / "nothing_*.bin"), B, T)


@pytest.mark.parametrize("nproc", [1, 2])
def test_shard_too_small_for_a_batch_is_an_error(tmp_path, nproc):
    write_shard(tmp_path / "a_000.bin", np.arange(500))
    write_shard(tmp_path / "a_001.bin", np.arange(nproc * B * T))  # one token short
    with pytest.raises(LlmcError, match="a_001.bin.*too few"):
        DataLoader(str(tmp_path / "a_*.bin"), B, T, num_processes=nproc)


def test_bad_shard_in_the_glob_is_an_error(tmp_path):
    pattern = make_shards(tmp_path, [53, 37])
    (tmp_path / "train_000002.bin").write_bytes(b"\0" * 2000)
    with pytest.raises(LlmcError, match="train_000002.bin.*magic"):
        DataLoader(pattern, B, T)
