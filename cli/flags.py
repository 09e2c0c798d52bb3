"""llm.c's train_gpt2.cu flags, declared once for train-cpu and train-gpu (same spellings,
meanings and defaults; train-cpu takes train_gpt2.c's B=4, T=64 and refuses the GPU-only ones)."""

from dataclasses import fields

import click

from llmc.core.train import TrainConfig

# (flags, TrainConfig field or None, type, help, gpu_only)
TRAIN_FLAGS = [
    (("-i",), "train_data", str, "train data filename pattern (glob)", False),
    (("-j",), "val_data", str, "val data filename pattern (glob)", False),
    (("-e",), "model", str, "model: a .bin checkpoint, or d6|d12|d24|d36|d48 / gpt3:cC for random init", False),
    (("-o",), "output_dir", str, "output log dir: main.log and checkpoints", False),
    (("-lg",), None, int, "log GPU utilization every N steps", True),
    (("-n",), "checkpoint_every", int, "write a checkpoint every N steps (0 = off)", False),
    (("-nk",), "checkpoints_keep", int, "keep only the last N checkpoints (0 = all)", False),
    (("-nm",), "major_checkpoint_every", int, "never delete checkpoints of steps divisible by N", False),
    (("-y",), "resume", int, "resume from the newest checkpoint in -o (0|1)", False),
    (("-b",), "B", int, "micro-batch size B", False),
    (("-t",), "T", int, "sequence length T", False),
    (("-d",), "total_batch", int, "total batch size in tokens (-1 = B*T*processes, no accumulation)", False),
    (("-x",), "max_steps", int, "max optimization steps (-1 = one epoch)", False),
    (("-k",), "schedule", str, "learning rate schedule: cosine|linear|constant|wsd", False),
    (("-l",), "lr", float, "learning rate", False),
    (("-u",), "warmup", int, "learning rate warmup iterations", False),
    (("-q",), "final_lr_frac", float, "final learning rate as a fraction of -l", False),
    (("-c",), "weight_decay", float, "weight decay (2-D weights only)", False),
    (("-sl",), "skip_loss_z", float, "skip the update when the loss z-score exceeds this (0 = off)", False),
    (("-sg",), "skip_grad_z", float, "skip the update when the grad-norm z-score exceeds this (0 = off)", False),
    (("-v",), "val_every", int, "evaluate val loss every N steps", False),
    (("-m",), "val_max_steps", int, "val batches per evaluation (-1 = the whole val set)", False),
    (("-s",), "sample_every", int, "sample from the model every N steps (0 = off)", False),
    (("-g",), "gen_tokens", int, "tokens to generate per sample", False),
    (("-h",), "hellaswag", int, "evaluate HellaSwag (0|1)", False),
    (("-a",), "overfit_single_batch", int, "overfit the first val batch (0|1), for debugging", False),
    (("-f",), None, int, "enable TF32 (0|1)", True),
    (("-w",), "master_weights", int, "keep fp32 master weights (0 = bf16 with stochastic rounding)", True),
    (("-ge",), "gelu_fusion", int, "GELU fusion into matmuls: 0 none, 1 forward, 2 forward+backward", True),
    (("-z",), "zero_stage", int, "ZeRO stage: 0 all-reduces gradients, 1 also shards the optimizer state", True),
    (("-r",), "recompute", int, "recompute in backward: 0 none, 1 GELU, 2 GELU+layernorm", True),
    (("-pn",), "num_processes", int, "number of processes", True),
    (("-pr",), "process_rank", int, "this process's rank", True),
    (("-pg",), None, int, "GPUs per node", True),
    (("-pi", "-pm"), None, str, "NCCL init method: mpi|tcp|fs", True),
    (("-ps",), None, str, "server IP for -pi tcp", True),
    (("-pf", "-pp"), None, str, "shared file-system path for -pi fs", True),
]

DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _dest(flags: tuple[str, ...]) -> str:
    return "flag_" + flags[0].lstrip("-")


def train_options(defaults: dict, allow_gpu_only: bool):
    """Decorator adding every llm.c flag as a click option with the given defaults."""
    def decorate(fn):
        for flags, field, typ, help_text, gpu_only in reversed(TRAIN_FLAGS):
            if gpu_only and not allow_gpu_only:
                fn = click.option(*flags, _dest(flags), type=typ, default=None, hidden=True,
                                  callback=_refuse_gpu_flag)(fn)
                continue
            default = defaults.get(field, DEFAULTS.get(field)) if field else defaults.get(_dest(flags))
            fn = click.option(*flags, _dest(flags), type=typ, default=default, show_default=True, help=help_text)(fn)
        return fn
    return decorate


def _refuse_gpu_flag(ctx: click.Context, param: click.Parameter, value):
    if value is not None:
        raise click.UsageError(f"{param.opts[0]} is a GPU-only flag of llm.c's train_gpt2.cu; use `llmc train-gpu`")
    return value


def train_config(options: dict) -> TrainConfig:
    """The TrainConfig fields from parsed options (GPU-only extras stay in `options`)."""
    values = {}
    for flags, field, *_ in TRAIN_FLAGS:
        if field and options.get(_dest(flags)) is not None:
            values[field] = options[_dest(flags)]
    return TrainConfig(**values)


def run_training(cfg: TrainConfig, device: str, group=None) -> None:
    """Build the trainer on the device's backend and run it (as one rank of `group`, a
    core.distributed process group, if given); a run stopped by SIGINT/SIGTERM (after its
    checkpoint) exits with 128 + the signal number, as the signal itself would have."""
    from llmc.core.backends import get_backend
    from llmc.core.train import Trainer

    trainer = Trainer(cfg, get_backend(device), out=click.echo, group=group)
    trainer.describe()
    trainer.run()
    if trainer.stop_signal is not None:
        raise SystemExit(128 + trainer.stop_signal)
