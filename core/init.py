"""GPT-2's parameters from llm.c's random init (a descriptor's model, core/families.load)."""

import math

import numpy as np

from llmc.core.config import GPTConfig, param_shapes
from llmc.core.rand import MT19937


def random_init(cfg: GPTConfig, seed: int = 42) -> np.ndarray:
    """llm.c's gpt_build_from_descriptor: one mt19937 stream, normals in PyTorch's init order
    (wte's V real rows, wpe, then per layer qkvw, attprojw, fcw, fcprojw); std 0.02, residual
    projections 0.02/sqrt(2L); biases 0, layernorm weights 1, wte's padded rows 0."""
    shapes = param_shapes(cfg)
    sizes = {name: int(np.prod(s)) for name, s in shapes.items()}
    offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1].tolist()))
    params = np.zeros(sum(sizes.values()), dtype=np.float32)
    rng = MT19937(seed)
    L, C, V = cfg.num_layers, cfg.channels, cfg.vocab_size

    def fill(name: str, start: int, n: int, std: float) -> None:
        o = offsets[name] + start
        rng.normal_fill(params[o: o + n], 0.0, std)

    for name in ("ln1w", "ln2w", "lnfw"):
        params[offsets[name]: offsets[name] + sizes[name]] = 1.0
    fill("wte", 0, V * C, 0.02)
    fill("wpe", 0, sizes["wpe"], 0.02)
    residual_std = 0.02 / math.sqrt(2 * L)
    for l in range(L):
        for name, std in (("qkvw", 0.02), ("attprojw", residual_std), ("fcw", 0.02), ("fcprojw", residual_std)):
            per_layer = sizes[name] // L
            fill(name, l * per_layer, per_layer, std)
    return params
