"""`llmc train-gpu`: llm.c's train_gpt2.cu, bf16 on one NVIDIA GPU."""

import click

from llmc.cli.flags import run_training, train_config, train_options
from llmc.core.errors import LlmcError


@click.command("train-gpu")
@train_options({"B": 4, "T": 1024, "model": "gpt2_124M_bf16.bin", "recompute": 1, "gelu_fusion": 2,
                "master_weights": 1, "num_processes": 1, "process_rank": 0, "flag_f": 1, "flag_z": 0,
                "flag_lg": -1, "flag_pg": 8, "flag_pi": "mpi"}, allow_gpu_only=True)
def command(**options) -> None:
    """Train GPT-2 on an NVIDIA GPU in bf16 (llm.c's train_gpt2.cu), with llm.c's flags.

    Example: llmc train-gpu -e d12 -i 'data/fineweb10B/*train*.bin' -j 'data/fineweb10B/*val*.bin' -b 16 -t 1024 -o log
    """
    cfg = train_config(options)
    if cfg.num_processes != 1 or cfg.process_rank != 0:
        raise LlmcError("multi-GPU training (-pn > 1) is not available yet: llmc train-gpu runs on one GPU")
    if options["flag_z"] not in (0, 1):
        raise LlmcError("-z takes 0 or 1 (ZeRO-1)")
    if options["flag_z"] == 1:
        click.echo("ZeRO-1 shards the optimizer state across processes; with one process it is the same as -z 0")
    if options["flag_lg"] > 0:
        raise LlmcError("-lg (GPU utilization logging through NVML) is not supported by llmc")
    run_training(cfg, "gpu")
