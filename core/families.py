"""Model families: the one place where the training loop, checkpoints, sampling and the CLI learn about
an architecture. They see a model only through a Family and the objects it makes:

- a config with `max_seq_len` and `vocab_size` (the family's own dataclass; the rest is the family's),
- the training model, written against the primitive set: forward / backward / zero_grad /
  reduce_gradients / compute_grad_norm / update, set_batch / mean_loss, `params` (flat, file order),
  `losses` (B, T), `norm_squared`, and optimizer_state / load_optimizer_state for checkpoints,
- the KV-cache model that generation runs (core/sample.generate); on a GPU the trainer's mid-run samples
  re-run the training model's forward instead (core/sample.ReforwardModel over Model(..., inference=True)).

GPT-2 (core/model.py) and Llama 3 (core/llama.py) are the families: each a module beside the other and
an entry in FAMILIES; nothing in the loop branches on which family it trains.
"""

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from llmc.core.errors import LlmcError
from llmc.core.formats import read_magic


@dataclass(frozen=True)
class Family:
    name: str
    model_magic: int  # the first int32 of its model files
    config_from_descriptor: Callable[[str], Any]  # `-e d12` etc. -> config; LlmcError if not this family's
    describe: Callable[[Any], list[tuple[str, object]]]  # the config's rows of the start-up table
    num_parameters: Callable[[Any], int]
    flops_per_token: Callable[[Any, int], int]  # training FLOPs per token at sequence length T (MFU)
    random_init: Callable[[Any, int], np.ndarray]  # (config, seed) -> flat fp32 parameters
    read_model: Callable[[str], tuple[Any, np.ndarray]]  # a model file -> (config, flat fp32 parameters)
    write_model: Callable[[str, Any, np.ndarray, str], None]  # (path, config, parameters, "fp32" | "bf16")
    Model: type  # Model(config, backend, params, B, T, recompute=, gelu_fusion=, master_weights=, group=, zero_stage=,
    #               fp8=, inference=)
    KVCacheModel: type  # KVCacheModel(config, params, xp, positions)


def gpt2() -> Family:
    from llmc.core import config, formats, init, model

    return Family("gpt2", formats.MODEL_MAGIC, config.config_from_descriptor, config.describe, config.num_parameters,
                  config.flops_per_token, init.random_init, formats.read_model, formats.write_model, model.GPT,
                  model.KVCacheModel)


def llama3() -> Family:
    from llmc.core import llama, llama_config, llama_formats

    return Family("llama3", llama_formats.LLAMA3_MAGIC, llama_config.config_from_descriptor, llama_config.describe,
                  llama_config.num_parameters, llama_config.flops_per_token, llama_config.random_init,
                  llama_formats.read_model, llama_formats.write_model, llama.Llama, llama.KVCacheModel)


# built on use: no family is imported before it is needed
FAMILIES: dict[str, Callable[[], Family]] = {"gpt2": gpt2, "llama3": llama3}


def load(model: str, seed: int = 42) -> tuple[Family, Any, np.ndarray]:
    """`-e`: a model file (its family from the file's magic) or a descriptor (the family whose syntax it
    is) for llm.c's random init; (family, config, flat fp32 parameters)."""
    families = [make() for make in FAMILIES.values()]
    if model.endswith(".bin"):
        magic = read_magic(model)
        family = next((f for f in families if f.model_magic == magic), None)
        if family is None:
            expected = " or ".join(str(f.model_magic) for f in families)
            raise LlmcError(f"{model}: bad magic {magic} (expected {expected}): not a model checkpoint file")
        return family, *family.read_model(model)
    family, cfg = _from_descriptor(model, families)
    return family, cfg, family.random_init(cfg, seed)


def load_config(model: str) -> tuple[Family, Any]:
    """`-e`'s family and config alone: a descriptor's random init is not drawn (a model file is read whole)."""
    if model.endswith(".bin"):
        family, cfg, _ = load(model)
        return family, cfg
    return _from_descriptor(model, [make() for make in FAMILIES.values()])


def _from_descriptor(model: str, families: list[Family]) -> tuple[Family, Any]:
    """The family whose descriptor syntax `model` is, and its config."""
    errors = []
    for family in families:
        try:
            return family, family.config_from_descriptor(model)
        except LlmcError as e:
            errors.append(str(e))
    raise LlmcError("; ".join(errors))
