"""llm.c's random numbers (llmc/rand.h, llmc/sampler.h): the mt19937 stream, torch-compatible
normals, llm.c's random init, Fisher-Yates permutations and the xorshift sampler RNG."""

import math

import numpy as np
import pytest

from llmc.core.config import GPTConfig, param_shapes
from llmc.core.init import random_init
from llmc.core.rand import MT19937, XorShift

# rand.h's header comment: manual_seed(137), 5 x randint32, normal_(8), randint32, normal_(16), randint32
RAND_H_INTS = [4053805790, 2173880614, 380293709, 1237255315, 2986595568]
RAND_H_NORMAL8 = [0.7947664260864258, 1.4369317293167114, -0.2292192131280899, 0.47556325793266296,
                  -0.6334410905838013, -0.5791953802108765, -0.0925704762339592, -0.8659197092056274]
RAND_H_NORMAL16 = [-1.2813878059387207, -2.646395683288574, -0.06569503247737885, 0.2180829495191574,
                   -0.46536165475845337, -0.33108410239219666, 2.5485482215881348, 0.10425379872322083,
                   0.8460659980773926, 0.9462448358535767, -0.2913765013217926, 0.34313806891441345,
                   -1.1186704635620117, -0.18305328488349915, -2.3153159618377686, 0.3961987793445587]


def test_randint32_matches_llmc_rand_h():
    rng = MT19937(137)
    assert rng.randint32(5).tolist() == RAND_H_INTS


def test_rand_h_example_sequence():
    rng = MT19937(137)
    rng.randint32(5)
    np.testing.assert_allclose(rng.normal(8), RAND_H_NORMAL8, rtol=1e-6, atol=1e-7)
    assert rng.randint32(1).tolist() == [2186503452]
    np.testing.assert_allclose(rng.normal(16), RAND_H_NORMAL16, rtol=1e-6, atol=1e-7)
    assert rng.randint32(1).tolist() == [2756748748]


def test_randint32_is_the_classic_mt19937():
    # NumPy's legacy RandomState(seed) runs init_genrand(seed), the seeding llm.c and torch use
    for seed in (0, 42, 43, 2**32 - 1):
        want = np.random.RandomState(seed).randint(0, 2**32, size=2000, dtype=np.uint64)
        np.testing.assert_array_equal(MT19937(seed).randint32(2000), want)


def test_randfloat32():
    u = MT19937(7).randfloat32(1000)
    raw = MT19937(7).randint32(1000)
    assert u.dtype == np.float32
    np.testing.assert_array_equal(u, (raw & 0xFFFFFF).astype(np.float64) / 2**24)


def u53(hi: int, lo: int) -> float:
    """rand.h's randfloat64: a 53-bit double from two randint32 (the first is the high word)."""
    return float(((int(hi) << 32) | int(lo)) & ((1 << 53) - 1)) / 2**53


def pair_radius(want: np.ndarray, seed: int | None = None) -> np.ndarray:
    """The Box-Muller radius behind each of normal_(n)'s standard normals `want`: blocks of 16 pair
    t with t+8; below 16, pair (2k, 2k+1) comes from 4 draws of a fresh stream `seed`, u2 the second
    double."""
    w = want.astype(np.float64)
    n = len(w)
    if n >= 16:
        radius = np.empty(n)
        for start in [*range(0, n - 15, 16), n - 16]:
            block = w[start: start + 16]
            r = np.sqrt(block[:8] ** 2 + block[8:] ** 2)
            radius[start: start + 16] = np.concatenate([r, r])
        return radius
    raw = MT19937(seed).randint32(4 * ((n + 1) // 2))
    r = [math.sqrt(-2 * math.log1p(-u53(raw[4 * k + 2], raw[4 * k + 3]))) for k in range((n + 1) // 2)]
    return np.repeat(r, 2)[:n]


def assert_normals_close(got: np.ndarray, want: np.ndarray, radius, mean: float = 0.0, std: float = 1.0) -> None:
    """torch's normal_ is not bit-identical to llm.c's: its vectorized path (n >= 16) rounds 2*pi*u to
    fp32 and has its own log/sincos, its small path works in double where llm.c rounds u and theta to
    fp32. Either way theta differs by ~1 ulp (<= 4.8e-7 below 2*pi), moving the output by that much
    times the radius: |diff| <= 1e-6 |want - mean| + 1e-6 std radius (+ rounding of the mean)."""
    assert got.shape == want.shape and got.dtype == np.float32
    w = want.astype(np.float64)
    bound = 1e-6 * np.abs(w - mean) + 1e-6 * std * radius + 2 * np.spacing(np.float32(abs(mean))) + 1e-7 * std
    bad = np.abs(got - w) > bound
    assert not bad.any(), f"{bad.sum()} of {len(w)} differ, e.g. at {np.where(bad)[0][:5]}: {got[bad][:5]} vs {want[bad][:5]}"


@pytest.mark.parametrize("n", [*range(1, 41), 1000])
def test_normal_matches_torch(n):
    torch = pytest.importorskip("torch")
    got = MT19937(n).normal(n, 0.5, 0.02)
    want = torch.empty(n).normal_(0.5, 0.02, generator=torch.Generator().manual_seed(n)).numpy()
    assert_normals_close(got, want, pair_radius((want - 0.5) / 0.02, seed=n), mean=0.5, std=0.02)
    got = MT19937(1000 + n).normal(n)
    want = torch.empty(n).normal_(generator=torch.Generator().manual_seed(1000 + n)).numpy()
    assert_normals_close(got, want, pair_radius(want, seed=1000 + n))


def test_chained_normals_match_torch():
    """Several draws from one stream. Odd sizes below 16 are left out: torch keeps their unused
    second Box-Muller value in the generator for its next call, llm.c's normal_ drops it."""
    torch = pytest.importorskip("torch")
    rng, gen = MT19937(42), torch.Generator().manual_seed(42)
    for n in (2, 16, 20, 4, 1000, 33, 6, 17, 48, 14, 31):
        got = rng.normal(n, 0.0, 0.02)
        want = torch.empty(n).normal_(0.0, 0.02, generator=gen).numpy()
        assert_normals_close(got, want, pair_radius(want / 0.02) if n >= 16 else 8.0, std=0.02)


def test_small_normals_use_llmc_semantics():
    """n < 16: per pair two 53-bit doubles (4 x randint32) and nothing cached across calls."""
    rng = MT19937(5)
    first = rng.normal(3)
    assert rng.randint32(1)[0] == MT19937(5).randint32(9)[8]  # two pairs used 8 draws
    again = MT19937(5)
    np.testing.assert_array_equal(again.normal(4)[:3], first)  # the odd call just drops its last value

    raw = MT19937(5).randint32(8)
    u1, u2 = np.float32(u53(raw[0], raw[1])), np.float32(u53(raw[2], raw[3]))
    radius = math.sqrt(-2 * math.log(1 - float(u2) + 1e-12))
    theta = 2 * math.pi * float(u1)
    np.testing.assert_allclose(first[:2], [radius * math.cos(theta), radius * math.sin(theta)], rtol=1e-6, atol=1e-7)


def test_random_init_matches_torch_init():
    pytest.importorskip("torch")
    from llmc.core.torch_gpt2 import init_params

    # V*C and maxT*C not multiples of 16: torch's "redo the last 16" path
    cfg = GPTConfig(max_seq_len=13, vocab_size=41, padded_vocab_size=128, num_layers=2, num_heads=3, channels=6)
    got, want = random_init(cfg), init_params(cfg)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-7)  # std 0.02 x the ulp-of-theta error above
    offsets = np.cumsum([0] + [math.prod(s) for s in param_shapes(cfg).values()])
    start = dict(zip(param_shapes(cfg), offsets))
    wte = got[start["wte"]: start["wte"] + cfg.padded_vocab_size * cfg.channels].reshape(cfg.padded_vocab_size, -1)
    assert not wte[cfg.vocab_size:].any() and wte[: cfg.vocab_size].all()


def test_random_init_is_seeded():
    cfg = GPTConfig(max_seq_len=8, vocab_size=50, padded_vocab_size=128, num_layers=1, num_heads=2, channels=8)
    np.testing.assert_array_equal(random_init(cfg), random_init(cfg, 42))
    assert not np.array_equal(random_init(cfg, 42), random_init(cfg, 43))


def fisher_yates(values: list[int], draws: list[int]) -> list[int]:
    """llm.c's random_permutation: i from n-1 down to 1, j = draw % (i+1), swap."""
    values, k = list(values), 0
    for i in range(len(values) - 1, 0, -1):
        j = draws[k] % (i + 1)
        k += 1
        values[i], values[j] = values[j], values[i]
    return values


@pytest.mark.parametrize("n", [0, 1, 2, 7, 100])
def test_permutation_is_llmc_fisher_yates(n):
    rng = MT19937(42)
    got = rng.permutation(n)
    draws = MT19937(42).randint32(max(n - 1, 0) + 1).tolist()
    assert got.tolist() == fisher_yates(list(range(n)), draws)
    assert rng.randint32(1)[0] == draws[max(n - 1, 0)]  # exactly n-1 draws consumed


def test_permute_shuffles_an_existing_order_in_place():
    rng = MT19937(43)
    order = np.array([3, 0, 4, 1, 2])
    rng.permute(order)
    draws = MT19937(43).randint32(4).tolist()
    assert order.tolist() == fisher_yates([3, 0, 4, 1, 2], draws)


def test_state_round_trip_resumes_the_stream():
    rng = MT19937(9)
    rng.randint32(700)  # past one 624-word refill
    state = rng.get_state()
    want = rng.randint32(50)
    other = MT19937(1)
    other.set_state(state)
    np.testing.assert_array_equal(other.randint32(50), want)


def xorshift_reference(state: int, n: int) -> tuple[list[int], list[float]]:
    """sampler.h's random_u32 and random_f32 in 64-bit unsigned arithmetic."""
    mask = (1 << 64) - 1
    ints, floats = [], []
    for k in range(2 * n):
        state ^= state >> 12
        state = (state ^ (state << 25)) & mask
        state ^= state >> 27
        u = ((state * 0x2545F4914F6CDD1D) & mask) >> 32
        if k % 2 == 0:
            ints.append(u)
        else:
            floats.append(float(np.float32(np.float32(u >> 8) / np.float32(16777216.0))))
    return ints, floats


@pytest.mark.parametrize("seed", [1337, 1, 2**63 + 12345])
def test_xorshift_matches_sampler_h(seed):
    ints, floats = xorshift_reference(seed, 20)
    rng = XorShift(seed)
    got_ints, got_floats = [], []
    for _ in range(20):
        got_ints.append(rng.u32())
        got_floats.append(rng.f32())
    assert got_ints == ints
    assert got_floats == floats
    assert all(0 <= f < 1 for f in got_floats) and all(0 <= u < 2**32 for u in got_ints)


@pytest.mark.parametrize("n", [5, 16, 33, 3 * (1 << 18) + 7])  # below 16, a block, a tail, several pool jobs
def test_normal_fill_is_normal_in_place(n):
    a, b = MT19937(3), MT19937(3)
    out = np.full(n, np.nan, dtype=np.float32)
    assert a.normal_fill(out, 0.5, 0.02) is out
    np.testing.assert_array_equal(out, b.normal(n, 0.5, 0.02))
    assert a.randint32(4).tolist() == b.randint32(4).tolist()  # both streams moved alike
    with pytest.raises(ValueError, match="contiguous"):
        a.normal_fill(np.zeros((4, 8), dtype=np.float32)[:, :4])
