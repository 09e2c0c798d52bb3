"""Every shape the CPU backend takes, on the GPU: B*T not a multiple of 4 (per-layer fp32 statistics at
4-byte offsets), C not a multiple of 8 (per-layer views at any offset, rows of any length), head sizes
that are not multiples of 8, odd V and Vp. Each primitive against the CPU backend on such shapes, on
views that start off 16-byte alignment; the model under CUDA-graph capture; then `llmc test --device
gpu` on PyTorch debug states of such models, which passes, and fails on one perturbed gradient."""

import numpy as np
import pytest

pytest.importorskip("cupy")
from llmc.tests.core.gpu.util import assert_close, cp, cpu, dev, gpu, host, rand, rng  # noqa: E402,F401

from llmc.core import formats  # noqa: E402
from llmc.core.config import GPTConfig, param_shapes  # noqa: E402
from llmc.core.gpu import attention as gpu_attention, cudnn as gpu_cudnn, runtime  # noqa: E402
from llmc.core.init import random_init  # noqa: E402
from llmc.core.flat_model import views  # noqa: E402
from llmc.core.model import GPT  # noqa: E402
from llmc.core.primitives import AdamW  # noqa: E402

pytestmark = pytest.mark.gpu

BF16_REL = 1e-2
GRAD_REL = 2e-2


def at(x: np.ndarray, offset: int):
    """x on the GPU as bf16, a view starting `offset` elements into its own buffer: for offsets 1 and 2
    a pointer off 16-byte alignment, as the model's per-layer slices are at odd shapes."""
    buf = cp.empty(x.size + offset, gpu.act_dtype)
    view = buf[offset:].reshape(x.shape)
    view[...] = dev(x)
    return view


def at32(x: np.ndarray, offset: int):
    """x as fp32 (layernorm and attention statistics), `offset` floats into its own buffer."""
    buf = cp.empty(x.size + offset, cp.float32)
    view = buf[offset:].reshape(x.shape)
    view[...] = cp.asarray(x, cp.float32)
    return view


def test_pack_width_follows_rows_and_pointers():
    buf = cp.zeros(4096, gpu.act_dtype)
    assert runtime.pack_width(768, buf) == 8
    assert runtime.pack_width(36, buf) == 4 and runtime.pack_width(36, buf[4:]) == 4
    assert runtime.pack_width(768, buf[2:]) == 2 and runtime.pack_width(768, buf[1:]) == 1
    assert runtime.pack_width(27, buf) == 1 and runtime.pack_width(768, buf, None, buf[4:]) == 4


@pytest.mark.parametrize("C", [20, 36, 27, 1030])  # 1030: packs of 2 past the ones held in registers
@pytest.mark.parametrize("offset", [0, 1])
def test_layernorm_any_channels(rng, C, offset):
    B, T = 3, 19  # B*T = 57 statistics
    x, w, b, dout = rand(rng, B, T, C, scale=2.0), rand(rng, C) + 1.0, rand(rng, C), rand(rng, B, T, C)
    w = w.astype(gpu.act_dtype).astype(np.float32)
    out, mean, rstd = at(np.zeros((B, T, C), np.float32), offset), at32(np.zeros((B, T)), offset), \
        at32(np.zeros((B, T)), offset)
    gpu.layernorm_forward(out, mean, rstd, at(x, offset), at(w, offset), at(b, offset))
    want, wmean, wrstd = np.empty((B, T, C), np.float32), np.empty((B, T), np.float32), np.empty((B, T), np.float32)
    cpu.layernorm_forward(want, wmean, wrstd, x, w, b)
    assert_close(host(out), want, BF16_REL, "layernorm out")
    np.testing.assert_allclose(host(mean), wmean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host(rstd), wrstd, rtol=1e-4)

    starts = rand(rng, B, T, C), rand(rng, C), rand(rng, C), rand(rng, C)  # dinp, dweight, dbias, dproj_bias
    got = [at(a, offset) for a in starts]
    gpu.layernorm_backward(*got[:3], at(dout, offset), at(x, offset), at(w, offset), at32(wmean, offset),
                           at32(wrstd, offset), dproj_bias=got[3])
    ref = [a.copy() for a in starts]
    cpu.layernorm_backward(*ref[:3], dout, x, w, wmean, wrstd, dproj_bias=ref[3])
    for g, r, s, what in zip(got, ref, starts, ("dinp", "dweight", "dbias", "dproj_bias")):
        assert_close(host(g) - s, r - s, GRAD_REL, what)


@pytest.mark.parametrize("shape,offset", [((3, 19, 27), 0), ((3, 19, 27), 1), ((2, 5, 36), 2), ((4, 9), 1)])
def test_elementwise_any_size(rng, shape, offset):
    x1, dout = rand(rng, *shape, scale=2.0), rand(rng, *shape)
    out, want = at(np.zeros(shape, np.float32), offset), np.empty(shape, np.float32)
    gpu.gelu_forward(out, at(x1, offset))
    cpu.gelu_forward(want, x1)
    assert_close(host(out), want, BF16_REL, "gelu")
    d = at(dout, offset)
    gpu.gelu_backward(d, at(x1, offset), d)
    cpu.gelu_backward(want, x1, dout)
    assert_close(host(d), want, BF16_REL, "gelu backward")


@pytest.mark.parametrize("C,Vp,offset", [(36, 1001, 0), (27, 1001, 1), (20, 130, 2), (2051, 64, 0)])
def test_encoder_any_channels(rng, C, Vp, offset):
    B, T, maxT = 3, 19, 24  # C=2051: more packs than a block has threads
    inp = rng.integers(0, Vp, (B, T)).astype(np.int32)
    inp[1, 3:9] = 5
    wte, wpe = rand(rng, Vp, C), rand(rng, maxT, C)
    out = at(np.zeros((B, T, C), np.float32), offset)
    gpu.encoder_forward(out, dev(inp), at(wte, offset), at(wpe, offset))
    want = np.empty((B, T, C), np.float32)
    cpu.encoder_forward(want, inp, wte, wpe)
    assert_close(host(out), want, BF16_REL, "encoder out")
    dout, dwte0, dwpe0 = rand(rng, B, T, C), rand(rng, Vp, C), rand(rng, maxT, C)
    dwte, dwpe = at(dwte0, offset), at(dwpe0, offset)
    gpu.encoder_backward(dwte, dwpe, at(dout, offset), dev(inp))
    want_wte, want_wpe = dwte0.copy(), dwpe0.copy()
    cpu.encoder_backward(want_wte, want_wpe, dout, inp)
    rows = np.unique(inp)
    assert_close(host(dwte)[rows] - dwte0[rows], want_wte[rows] - dwte0[rows], GRAD_REL, "dwte rows")
    assert_close(host(dwpe) - dwpe0, want_wpe - dwpe0, GRAD_REL, "dwpe")


# (C, OC): fc of C=36 (rows of 36: cuBLASLt's GELU epilogue, not cuDNN's graph), fc of C=27 (a pre-GELU
# leading dimension of 108, not a multiple of 8: the GELU kernels), a projection to 27; the backward's
# pre-GELU input has C channels (36, 27): the GELU kernels
@pytest.mark.parametrize("C,OC", [(36, 144), (27, 108), (36, 27)])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("gelu,residual", [(True, False), (False, False), (False, True)])
def test_matmul_any_channels(rng, C, OC, offset, gelu, residual):
    B, T = 3, 19
    x, w, b = rand(rng, B, T, C), rand(rng, OC, C, scale=0.1), rand(rng, OC)
    r = rand(rng, B, T, OC) if residual else None
    out = at(np.zeros((B, T, OC), np.float32), offset)
    pre = at(np.zeros((B, T, OC), np.float32), offset) if gelu else None
    gpu.matmul_forward(out, at(x, offset), at(w, offset), at(b, offset), pre_gelu=pre,
                       residual=None if r is None else at(r, offset))
    want, want_pre = np.empty((B, T, OC), np.float32), np.empty((B, T, OC), np.float32) if gelu else None
    cpu.matmul_forward(want, x, w, b, pre_gelu=want_pre, residual=r)
    assert_close(host(out), want, BF16_REL, "matmul out")
    if gelu:
        assert_close(host(pre), want_pre, BF16_REL, "matmul pre_gelu")

    # backward through the same layer: with gelu, the input is gelu(pre) of the channels C
    dout, pre_in = rand(rng, B, T, OC), rand(rng, B, T, C) if gelu else None
    dw0, db0 = rand(rng, OC, C), rand(rng, OC)
    dinp, dw, db = at(np.zeros((B, T, C), np.float32), offset), at(dw0, offset), at(db0, offset)
    gpu.matmul_backward(dinp, dw, db, at(dout, offset), at(x, offset), at(w, offset),
                        pre_gelu=None if pre_in is None else at(pre_in, offset))
    want_dinp, want_dw, want_db = np.empty((B, T, C), np.float32), dw0.copy(), db0.copy()
    cpu.matmul_backward(want_dinp, want_dw, want_db, dout, x, w, pre_gelu=pre_in)
    assert_close(host(dinp), want_dinp, BF16_REL, "dinp")
    assert_close(host(dw) - dw0, want_dw - dw0, GRAD_REL, "dweight")
    assert_close(host(db) - db0, want_db - db0, GRAD_REL, "dbias")


# head sizes 18, 6, 9 (cuDNN asked for, the fallback runs), 16 off alignment (likewise) and 16 with only the
# stats at a 4-byte offset (cuDNN)
@pytest.mark.parametrize("backend", ["cudnn", "fallback"])
@pytest.mark.parametrize("B,T,NH,HS,offset,stats_offset", [(3, 19, 2, 18, 0, 0), (2, 37, 4, 6, 1, 1),
                                                           (2, 37, 3, 9, 1, 1), (3, 19, 1, 16, 1, 1),
                                                           (3, 19, 1, 16, 0, 1)])
def test_attention_any_head_size(rng, monkeypatch, backend, B, T, NH, HS, offset, stats_offset):
    if backend == "cudnn" and gpu_cudnn.module() is None:
        pytest.skip("nvidia-cudnn-frontend is not installed")
    monkeypatch.setattr(gpu_attention, "IMPLEMENTATION", backend)
    C = NH * HS
    qkv, dout = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    out, stats = at(np.zeros((B, T, C), np.float32), offset), at32(np.zeros((B, NH, T)), stats_offset)
    gpu.attention_forward(out, stats, at(qkv, offset), NH)
    want, probs = np.empty((B, T, C), np.float32), np.empty(cpu.attention_stats_shape(B, T, NH), np.float32)
    cpu.attention_forward(want, probs, qkv, NH)
    assert_close(host(out), want, BF16_REL, "attention out")
    dqkv = at(np.full((B, T, 3 * C), 5, np.float32), offset)
    gpu.attention_backward(dqkv, at(dout, offset), at(qkv, offset), out, stats, NH)
    want_dqkv = np.empty_like(qkv)
    cpu.attention_backward(want_dqkv, dout, qkv, want, probs, NH)
    got = host(dqkv)
    for i, what in enumerate("qkv"):
        sl = slice(i * C, (i + 1) * C)
        assert_close(got[..., sl], want_dqkv[..., sl], GRAD_REL, f"d{what}")


@pytest.mark.parametrize("V,Vp", [(1001, 1001), (999, 1004), (1001, 1024), (1001, 1002)])
def test_softmax_crossentropy_any_vocab(rng, V, Vp):
    B, T = 3, 19
    logits = rand(rng, B, T, Vp, scale=3.0)
    targets = rng.integers(0, V, (B, T)).astype(np.int32)
    targets[0, 0] = V - 1
    losses, lg = cp.empty((B, T), cp.float32), dev(logits)
    gpu.softmax_crossentropy(losses, lg, dev(targets), V)
    want_losses, want = np.empty((B, T), np.float32), logits.copy()
    cpu.softmax_crossentropy(want_losses, want, targets, V)
    np.testing.assert_allclose(host(losses), want_losses, rtol=1e-4, atol=1e-4)
    gpu.softmax_crossentropy(losses, lg, dev(targets), V, 1.0 / (B * T))
    cpu.softmax_crossentropy(want_losses, want, targets, V, 1.0 / (B * T))
    np.testing.assert_allclose(host(losses), want_losses, rtol=1e-4, atol=1e-4)
    got = host(lg)
    assert_close(got, want, BF16_REL, "dlogits")
    assert not got[..., V:].any()


# ----------------------------------------------------------------------------- the model

def _cfg(C: int, NH: int, V: int, Vp: int, maxT: int = 40, L: int = 2) -> GPTConfig:
    return GPTConfig(max_seq_len=maxT, vocab_size=V, padded_vocab_size=Vp, num_layers=L, num_heads=NH, channels=C)


def test_aligned_shapes_take_the_fast_paths(rng, monkeypatch):
    """C a multiple of 8 at B*T = 57 (layernorm and attention statistics of layer 1 at 4-byte offsets):
    every kernel is built 8-wide, the classifier is the persistent one and attention is cuDNN's at every
    layer (given cuDNN)."""
    cfg, B, T = _cfg(64, 1, 1001, 1024), 3, 19
    packs, fallback = set(), []
    kernel = runtime.kernel

    def recording(file: str, name: str, pack: int = 8):
        packs.add((name, pack))
        return kernel(file, name, pack)
    monkeypatch.setattr(runtime, "kernel", recording)
    monkeypatch.setattr(gpu_attention, "_fallback_forward", lambda *a: fallback.append(a))
    monkeypatch.setattr(gpu_attention, "_fallback_backward", lambda *a: fallback.append(a))
    model = GPT(cfg, gpu, random_init(cfg), B, T)
    model.set_batch(rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T)))
    model.forward(dloss=1.0 / (B * T))
    model.backward()
    gpu.synchronize()
    assert {pack for _, pack in packs} == {8}
    assert ("softmax_crossentropy_train", 8) in packs
    assert not fallback or gpu_cudnn.module() is None


# (cfg, B, T): B*T = 57 with head size 16; C=36 with head size 18 and odd V; head size 6 with Vp odd
# from the header; C=27 (odd: 1-wide packs, the GELU GEMMs unfused) with head size 9
MODELS = [(_cfg(64, 4, 1001, 1024), 3, 19), (_cfg(36, 2, 999, 1024), 2, 37), (_cfg(36, 6, 1001, 1001), 3, 19),
          (_cfg(27, 3, 777, 800), 2, 37)]


@pytest.mark.parametrize("cfg,B,T", MODELS)
def test_model_any_shape_matches_cpu_under_graph_capture(cfg, B, T):
    """Step-0 gradients against the CPU, then AdamW steps with the GPU's forward/backward a CUDA graph
    (call 1 eager, 2 captures, 3 and 4 replay on the updated parameters): the losses follow the CPU's."""
    rng = np.random.default_rng(3)
    params = random_init(cfg).astype(gpu.act_dtype).astype(np.float32)
    x = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    y = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    models = {name: GPT(cfg, backend, params, B, T) for name, backend in (("cpu", cpu), ("gpu", gpu))}
    grads, losses = {}, {}
    for name, model in models.items():
        model.set_batch(x, y)
        step = model.backend.graph(lambda m=model: (m.zero_grad(), m.forward(dloss=1.0 / (B * T)), m.backward()))
        losses[name] = []
        for i in range(4):
            step()
            losses[name].append(model.mean_loss())
            if i == 0:
                grads[name] = {k: model.backend.to_host(v).copy() for k, v in model.g.items()}
            model.update(AdamW(lr=1e-3), step=i + 1)
    for name in grads["cpu"]:
        assert_close(grads["gpu"][name], grads["cpu"][name], 5e-2, f"grad {name}")
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], atol=2e-2)


# ----------------------------------------------------------------------------- llmc test --device gpu

@pytest.fixture(scope="module")
def states(tmp_path_factory):
    pytest.importorskip("torch")
    from llmc.core.torch_gpt2 import write_reference

    return [write_reference(tmp_path_factory.mktemp(f"shape{k}"), cfg, B=B, T=T, steps=10, seed=k)
            for k, (cfg, B, T) in enumerate(MODELS)]


def _llmc_test(model, state) -> tuple[int, list[str]]:
    from click.testing import CliRunner

    from llmc.cli.main import main

    result = CliRunner().invoke(main, ["test", "-m", str(model), "-s", str(state), "--device", "gpu"], prog_name="llmc")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output.splitlines()


@pytest.mark.parametrize("k", range(len(MODELS)))
def test_llmc_test_gpu_passes_at_any_shape(states, k):
    code, lines = _llmc_test(*states[k])
    assert code == 0 and lines[-1] == "overall okay: 1", "\n".join(lines)
    assert sum(line.endswith("OK = 1") for line in lines) == 10


@pytest.mark.parametrize("k,tensor", [(0, "qkvw"), (1, "fcprojb"), (2, "wte"), (3, "ln1b")])
def test_llmc_test_gpu_fails_on_one_perturbed_gradient(states, tmp_path, k, tensor):
    cfg = MODELS[k][0]
    model, state_path = states[k]
    state = formats.read_debug_state(state_path, cfg)
    grads = views(state.grads, param_shapes(cfg))
    grads[tensor].reshape(-1)[7] += 1.0  # past every tolerance (wte's is 0.5); in wte, a real row
    formats.write_debug_state(tmp_path / "bad.bin", state)
    code, lines = _llmc_test(model, tmp_path / "bad.bin")
    assert code == 1 and lines[-1] == "overall okay: 0", "\n".join(lines)
    assert [line.split()[2] for line in lines if line.startswith("NOT OK d")] == [f"d{tensor}"]
