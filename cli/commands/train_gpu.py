"""`llmc train-gpu`: llm.c's train_gpt2.cu, bf16 on one NVIDIA GPU or data parallel on several."""

import dataclasses

import click

from llmc.cli.flags import run_training, train_config, train_options
from llmc.core.errors import LlmcError


@click.command("train-gpu")
@train_options({"B": 4, "T": 1024, "model": "gpt2_124M_bf16.bin", "recompute": 1, "gelu_fusion": 2,
                "master_weights": 1, "num_processes": 1, "process_rank": 0, "zero_stage": 0, "tf32": 1,
                "log_gpu_every": -1, "gpus_per_node": 8, "init_method": "mpi"}, allow_gpu_only=True)
def command(**options) -> None:
    """Train GPT-2 on NVIDIA GPUs in bf16 (llm.c's train_gpt2.cu), with llm.c's flags.

    Example: llmc train-gpu -e d12 -i 'data/fineweb10B/*train*.bin' -j 'data/fineweb10B/*val*.bin' -b 16 -t 1024 -o log

    \b
    Several GPUs (data parallel over NCCL; -z 1 shards the optimizer state, ZeRO-1), one process each:
      mpirun -np N llmc train-gpu ... -pi mpi                    (needs mpi4py)
      or start N processes, i = 0..N-1, on any launcher:
      llmc train-gpu ... -pn N -pr i -pi fs -pf SHARED_DIR
      llmc train-gpu ... -pn N -pr i -pi tcp -ps RANK0_IP
    Rank i uses GPU i % -pg of its node; -b is per GPU, -d the total over all of them.
    """
    from llmc.core import distributed

    cfg = train_config(options)
    cfg.validate()  # before NCCL's rendezvous: bad flags fail at once on every rank
    if options["log_gpu_every"] > 0:
        raise LlmcError("-lg (GPU utilization logging through NVML) is not supported by llmc")
    group = distributed.init(cfg.num_processes, cfg.process_rank, options["gpus_per_node"], options["init_method"],
                             options["server_ip"], options["fs_path"])
    cfg = dataclasses.replace(cfg, num_processes=group.world, process_rank=group.rank)  # mpirun's, under -pi mpi
    if cfg.zero_stage == 1 and group.world == 1:
        click.echo("ZeRO-1 shards the optimizer state across processes; with one process it is the same as -z 0")
    run_training(cfg, "gpu", options, group)
