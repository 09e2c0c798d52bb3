"""A training run's settings: llm.c's train_gpt2.cu flags (cli/flags.py maps each flag to a field)
and llmc's own, checked before anything is read or written."""

import math
from dataclasses import dataclass

from llmc.core.errors import LlmcError
from llmc.core.evaluate import DEFAULT_HELLASWAG


@dataclass
class TrainConfig:
    train_data: str = "data/tinyshakespeare/tiny_shakespeare_train.bin"  # -i
    val_data: str = "data/tinyshakespeare/tiny_shakespeare_val.bin"  # -j
    model: str = "gpt2_124M_bf16.bin"  # -e: a .bin checkpoint or a descriptor (d12, gpt3:c768)
    output_dir: str | None = None  # -o: main.log and checkpoints
    checkpoint_every: int = 0  # -n
    checkpoints_keep: int = 0  # -nk
    major_checkpoint_every: int = 0  # -nm
    resume: int = 0  # -y
    B: int = 4  # -b: micro-batch size
    T: int = 1024  # -t: sequence length
    total_batch: int = -1  # -d: tokens per optimizer step (-1: B*T*processes, no accumulation)
    max_steps: int = -1  # -x: -1 = one epoch
    schedule: str = "cosine"  # -k
    lr: float = 3e-4  # -l
    warmup: int = 0  # -u
    final_lr_frac: float = 1.0  # -q
    weight_decay: float = 0.0  # -c
    skip_loss_z: float = 0.0  # -sl: skip the update when the loss z-score exceeds this (0 = off)
    skip_grad_z: float = 0.0  # -sg: likewise for the gradient norm
    val_every: int = 20  # -v
    val_max_steps: int = 20  # -m
    sample_every: int = 20  # -s
    gen_tokens: int = 64  # -g
    hellaswag: int = 0  # -h
    hellaswag_path: str = DEFAULT_HELLASWAG  # the eval shard -h 1 reads (relative to the cwd, as llm.c)
    overfit_single_batch: int = 0  # -a
    recompute: int = 0  # -r
    gelu_fusion: int = 2  # -ge
    master_weights: int = 1  # -w
    num_processes: int = 1  # -pn
    process_rank: int = 0  # -pr
    zero_stage: int = 0  # -z: 1 shards the optimizer state over the processes (ZeRO-1)
    fp8: int = 0  # -f8: the blocks' linear layers in FP8 (core/linears.py)
    overwrite: bool = False  # --overwrite: a new run may replace the run in -o
    tensorboard: bool = False  # --tensorboard: TensorBoard event files in -o/tensorboard
    wandb_project: str | None = None  # --wandb-project: log to this Weights & Biases project
    tokenizer: str | None = None  # --tokenizer: what mid-run samples decode with (default: GPT-2's)
    rank_timeout: float = 30.0  # --rank-timeout: seconds a rank waits for a step of the others before it stops

    def validate(self) -> None:
        """Refuse flags that cannot make a run, before anything is read or written."""
        finite = {"-l": self.lr, "-q": self.final_lr_frac, "-c": self.weight_decay, "-sl": self.skip_loss_z,
                  "-sg": self.skip_grad_z}
        for flag, value in finite.items():
            if not math.isfinite(value) or value < 0:
                raise LlmcError(f"{flag} takes a finite number >= 0, not {value}")
        if not (math.isfinite(self.rank_timeout) and self.rank_timeout > 0):
            raise LlmcError(f"--rank-timeout takes a number of seconds > 0, not {self.rank_timeout}")
        if self.zero_stage not in (0, 1):
            raise LlmcError("-z takes 0 or 1 (ZeRO-1)")
        if self.fp8 not in (0, 1):
            raise LlmcError("-f8 takes 0 (bf16) or 1 (FP8 linear layers)")
        if self.B < 1 or self.T < 1:
            raise LlmcError(f"-b and -t take sizes >= 1, not {self.B} and {self.T}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise LlmcError(f"-x takes a number of steps >= 1 (or -1: one epoch of -i), not {self.max_steps}")
        if self.warmup < 0:
            raise LlmcError(f"-u takes a number of warmup steps >= 0, not {self.warmup}")
        if min(self.checkpoint_every, self.checkpoints_keep, self.major_checkpoint_every) < 0:
            raise LlmcError("-n, -nk and -nm take a number of steps >= 0 (0 = off)")
        if self.val_every < 0 or self.val_max_steps == 0 or self.val_max_steps < -1:
            raise LlmcError("-v takes a number of steps >= 0 (0 = no validation) and -m a number of batches "
                            ">= 1 (or -1: all)")
        if not self.output_dir and (self.resume or self.checkpoint_every or self.overwrite):
            raise LlmcError("-y, -n and --overwrite need an output dir -o")
        if self.resume and self.overwrite:
            raise LlmcError("-y 1 resumes the run in -o and --overwrite replaces it: give one of them")
