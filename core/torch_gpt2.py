"""An independent PyTorch GPT-2 of any shape: the reference llmc's backends are checked against.

It plays the part of llm.c's train_gpt2.py: step-0 logits, loss and gradients plus a trailer of
training losses, written as a debug state that `llmc test` reads. Parameters are held under llm.c's
names and shapes (wte (Vp, C), qkvw (L, 3*C, C), ...), so a flat llm.c vector maps to the model by
reshaping alone. fp32 throughout. Imported only by tests and `export-weights --debug-state`.

Size letters: B batch, T time, C channels, V vocab, Vp padded vocab, L layers, NH heads, HS head size.
"""

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from llmc.core.check import TEST_ADAMW
from llmc.core.config import DECAYED_PARAMS, LN_EPS, GPTConfig, param_shapes
from llmc.core.formats import DebugState, write_debug_state, write_model

PER_LAYER = ("ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb")


class GPT2(nn.Module):
    """GPT-2 with llm.c's parameter tensors: pre-LN blocks, fused qkv, tied (padded) wte."""

    def __init__(self, cfg: GPTConfig, params: np.ndarray):
        super().__init__()
        self.cfg = cfg
        self.p = nn.ParameterDict()
        offset = 0
        for name, shape in param_shapes(cfg).items():
            n = math.prod(shape)
            chunk = np.asarray(params[offset: offset + n], dtype=np.float32).reshape(shape)
            self.p[name] = nn.Parameter(torch.tensor(chunk))
            offset += n
        if offset != params.size:
            raise ValueError(f"{params.size} parameters given, {cfg} needs {offset}")
        self.register_buffer("causal", torch.ones(cfg.max_seq_len, cfg.max_seq_len, dtype=torch.bool).tril())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, Vp) and, with targets, the mean cross-entropy over the first V."""
        p, cfg = self.p, self.cfg
        B, T = idx.shape
        if T > cfg.max_seq_len:
            raise ValueError(f"sequence length {T} > the model's max_seq_len {cfg.max_seq_len}")
        C, NH, V = cfg.channels, cfg.num_heads, cfg.vocab_size
        HS = C // NH
        # per-layer views through one unbind each: its backward stacks the L gradients once, where
        # indexing p[name][l] would add a zero-padded (L, ...) gradient per layer
        layers = [dict(zip(PER_LAYER, ts)) for ts in zip(*(p[n].unbind(0) for n in PER_LAYER))]
        x = p["wte"][idx] + p["wpe"][:T]  # (B, T, C)
        for w in layers:
            h = F.layer_norm(x, (C,), w["ln1w"], w["ln1b"], LN_EPS)
            qkv = F.linear(h, w["qkvw"], w["qkvb"])  # (B, T, 3*C)
            q, k, v = qkv.view(B, T, 3, NH, HS).permute(2, 0, 3, 1, 4)  # each (B, NH, T, HS)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HS))  # (B, NH, T, T)
            att = att.masked_fill(~self.causal[:T, :T], float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, C)
            x = x + F.linear(y, w["attprojw"], w["attprojb"])
            h = F.layer_norm(x, (C,), w["ln2w"], w["ln2b"], LN_EPS)
            h = F.gelu(F.linear(h, w["fcw"], w["fcb"]), approximate="tanh")  # (B, T, 4*C)
            x = x + F.linear(h, w["fcprojw"], w["fcprojb"])
        x = F.layer_norm(x, (C,), p["lnfw"], p["lnfb"], LN_EPS)
        logits = x @ p["wte"].T  # (B, T, Vp); the padded columns never reach the loss
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits[..., :V].reshape(B * T, V), targets.reshape(B * T))
        return logits, loss

    def flat_params(self) -> np.ndarray:
        """The parameters as one fp32 vector in llm.c order."""
        return torch.cat([t.detach().reshape(-1) for t in self.p.values()]).numpy()

    def flat_grads(self) -> np.ndarray:
        """The gradients in llm.c order (wte's padded rows get exactly zero)."""
        return torch.cat([(t.grad if t.grad is not None else torch.zeros_like(t)).reshape(-1)
                          for t in self.p.values()]).numpy()


def init_params(cfg: GPTConfig, seed: int = 42) -> np.ndarray:
    """llm.c's random init, flat in llm.c order: one generator seeded `seed` drawing normal_ for wte
    (V rows; padded rows stay 0), wpe, then per layer qkvw, attprojw, fcw, fcprojw; std 0.02, the
    residual projections 0.02/sqrt(2L); biases 0, layernorm weights 1."""
    gen = torch.Generator().manual_seed(seed)
    L, V = cfg.num_layers, cfg.vocab_size
    shapes = param_shapes(cfg)
    p = {name: torch.zeros(shape) for name, shape in shapes.items()}
    for name in ("ln1w", "ln2w", "lnfw"):
        p[name].fill_(1.0)

    def draw(shape: tuple[int, ...], std: float) -> torch.Tensor:
        return torch.empty(shape).normal_(0.0, std, generator=gen)

    p["wte"][:V] = draw((V, cfg.channels), 0.02)
    p["wpe"][:] = draw(shapes["wpe"], 0.02)
    residual_std = 0.02 / math.sqrt(2 * L)
    for l in range(L):
        for name, std in (("qkvw", 0.02), ("attprojw", residual_std), ("fcw", 0.02), ("fcprojw", residual_std)):
            p[name][l] = draw(shapes[name][1:], std)
    return torch.cat([t.reshape(-1) for t in p.values()]).numpy()


def make_optimizer(model: GPT2, decay_all: bool) -> torch.optim.AdamW:
    """test_gpt2.c's AdamW; weight decay on every tensor (decay_all) or on the 2-D weights only."""
    decayed = [t for n, t in model.p.items() if decay_all or n in DECAYED_PARAMS]
    others = [t for n, t in model.p.items() if not (decay_all or n in DECAYED_PARAMS)]
    hp = TEST_ADAMW  # test_gpt2.c's
    groups = [{"params": decayed, "weight_decay": hp.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps, foreach=False, fused=False)


def make_debug_state(cfg: GPTConfig, params: np.ndarray, inputs: np.ndarray, targets: np.ndarray,
                     steps: int = 10, decay_all: bool = False) -> DebugState:
    """Step-0 logits (B, T, V), loss and flat gradients, then the losses of `steps` AdamW steps on the
    same batch (step 0's loss is the step-0 forward; no gradient clipping, as test_gpt2.c).

    Weight decay: test_gpt2.c calls train_gpt2.c's CPU gpt2_update, which decays EVERY parameter;
    llmc's trainer (and train_gpt2.cu, PyTorch) decays only the 2-D weights (config.DECAYED_PARAMS),
    and `llmc test` runs llmc's own AdamW, so the default is decay_all=False. At lr 1e-4, wd 0.01 the
    two differ by ~1e-6 per parameter per step, far below the 1e-2 loss tolerance."""
    model = GPT2(cfg, params)
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64))
    y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))
    optimizer = make_optimizer(model, decay_all)
    state, losses = None, []
    # a step of gpt2-xl on the CPU takes tens of seconds: a bar (silent when stderr is not a terminal)
    for step in tqdm(range(max(steps, 1)), desc="debug state", unit="step", leave=False, disable=None):
        optimizer.zero_grad(set_to_none=False)
        logits, loss = model(x, y)
        loss.backward()
        if step == 0:
            state = DebugState(inputs=np.asarray(inputs, dtype=np.int32), targets=np.asarray(targets, dtype=np.int32),
                               logits=logits[..., :cfg.vocab_size].detach().numpy().copy(),
                               loss=loss.item(), grads=model.flat_grads().copy())
        losses.append(loss.item())
        if step + 1 < steps:
            optimizer.step()
    state.ref_losses = np.asarray(losses, dtype=np.float32) if steps else None
    return state


def write_reference(out_dir: str | os.PathLike, cfg: GPTConfig, B: int = 4, T: int = 64, steps: int = 10,
                    seed: int = 42, decay_all: bool = False) -> tuple[Path, Path]:
    """A random model (llm.c init, `seed`) and its debug state on a random batch, for tests:
    returns the paths of `model.bin` and `debug_state.bin` in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = init_params(cfg, seed)
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=B * T + 1, dtype=np.int32)
    state = make_debug_state(cfg, params, tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T), steps, decay_all)
    model_path, state_path = out_dir / "model.bin", out_dir / "debug_state.bin"
    write_model(model_path, cfg, params)
    write_debug_state(state_path, state)
    return model_path, state_path
