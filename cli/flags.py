"""llm.c's train_gpt2.cu flags, declared once for train-cpu and train-gpu (same spellings, meanings and
defaults; train-cpu takes train_gpt2.c's B=4, T=64 and refuses the GPU-only ones). Every short flag has a
long name too (`-l` / `--learning-rate`), as nanoGPT and LitGPT users type them; the long name, with
underscores, is the flag's key in a run's config.json, which `--config FILE` reads back."""

import json
from dataclasses import fields
from pathlib import Path

import click

from llmc.core.errors import LlmcError
from llmc.core.train_config import TrainConfig

# (llm.c's flags, long name, TrainConfig field or None, type, help, gpu_only)
TRAIN_FLAGS = [
    (("-i",), "--train-data", "train_data", str, "train data filename pattern (glob)", False),
    (("-j",), "--val-data", "val_data", str, "val data filename pattern (glob)", False),
    (("-e",), "--model", "model", str, "model: a .bin checkpoint (GPT-2 or Llama 3, told apart by its magic), or a "
     "descriptor for llm.c's random init: d6|d12|d24|d36|d48 (GPT-2), gpt3:cC, or dL:cC:hH[:tT][:vV] for any depth "
     "L, width C, heads H, max sequence length T (1024) and vocab V (50257), e.g. d4:c128:h4:t128; Llama 3: "
     "llama3.2-1b|llama3.2-3b|llama3.1-8b or llama3:dL:cC:hH:kvK[:tT][:vV][:fF][:mM] with K key/value heads, "
     "e.g. llama3:d4:c128:h4:kv2:t256:m32", False),
    (("-o",), "--output-dir", "output_dir", str, "output log dir: main.log, metrics.csv, config.json and checkpoints",
     False),
    (("-lg",), "--log-gpu-every", None, int, "log GPU utilization every N steps", True),
    (("-n",), "--checkpoint-every", "checkpoint_every", int, "write a checkpoint every N steps (0 = off)", False),
    (("-nk",), "--checkpoints-keep", "checkpoints_keep", int, "keep only the last N checkpoints (0 = all)", False),
    (("-nm",), "--major-checkpoint-every", "major_checkpoint_every", int,
     "never delete checkpoints of steps divisible by N", False),
    (("-y",), "--resume", "resume", int, "resume from the newest checkpoint in -o (0|1)", False),
    (("-b",), "--batch-size", "B", int, "micro-batch size B", False),
    (("-t",), "--seq-len", "T", int, "sequence length T", False),
    (("-d",), "--total-batch-size", "total_batch", int,
     "total batch size in tokens (-1 = B*T*processes, no accumulation)", False),
    (("-x",), "--max-steps", "max_steps", int, "max optimization steps (-1 = one epoch)", False),
    (("-k",), "--lr-schedule", "schedule", str, "learning rate schedule: cosine|linear|constant|wsd", False),
    (("-l",), "--learning-rate", "lr", float, "learning rate", False),
    (("-u",), "--warmup-steps", "warmup", int, "learning rate warmup iterations", False),
    (("-q",), "--final-lr-frac", "final_lr_frac", float, "final learning rate as a fraction of -l", False),
    (("-c",), "--weight-decay", "weight_decay", float, "weight decay (2-D weights only)", False),
    (("-sl",), "--skip-loss-z", "skip_loss_z", float,
     "skip the update when the loss z-score exceeds this (0 = off)", False),
    (("-sg",), "--skip-grad-z", "skip_grad_z", float,
     "skip the update when the grad-norm z-score exceeds this (0 = off)", False),
    (("-v",), "--val-every", "val_every", int, "evaluate val loss every N steps (0 = no validation)", False),
    (("-m",), "--val-max-steps", "val_max_steps", int, "val batches per evaluation (-1 = the whole val set)", False),
    (("-s",), "--sample-every", "sample_every", int, "sample from the model every N steps (0 = off)", False),
    (("-g",), "--gen-tokens", "gen_tokens", int, "tokens to generate per sample", False),
    (("-h",), "--hellaswag", "hellaswag", int, "evaluate HellaSwag (0|1)", False),
    (("-a",), "--overfit-single-batch", "overfit_single_batch", int,
     "overfit the first val batch (0|1), for debugging", False),
    (("-f",), "--tf32", None, int, "enable TF32 (0|1); accepted for llm.c's command lines: llmc's GPU "
     "matmuls are bf16, so it changes nothing", True),
    (("-w",), "--master-weights", "master_weights", int,
     "keep fp32 master weights (0 = bf16 with stochastic rounding)", True),
    (("-ge",), "--gelu-fusion", "gelu_fusion", int,
     "GELU fusion into matmuls: 0 none, 1 forward, 2 forward+backward", True),
    (("-z",), "--zero-stage", "zero_stage", int,
     "ZeRO stage: 0 all-reduces gradients, 1 also shards the optimizer state", True),
    (("-f8",), "--fp8", "fp8", int, "the blocks' linear layers in FP8 (0|1): E4M3 forward, E5M2 gradients, per-tensor "
     "current scaling; output head, attention, norms and optimizer as without (train-cpu: the exact emulation)",
     False),
    (("-r",), "--recompute", "recompute", int, "recompute in backward: 0 none, 1 GELU, 2 GELU+layernorm", True),
    (("-pn",), "--num-processes", "num_processes", int, "number of processes", True),
    (("-pr",), "--process-rank", "process_rank", int, "this process's rank", True),
    (("-pg",), "--gpus-per-node", None, int, "GPUs per node", True),
    (("-pi", "-pm"), "--init-method", None, str, "NCCL init method: mpi|tcp|fs", True),
    (("-ps",), "--server-ip", None, str, "server IP for -pi tcp", True),
    (("-pf", "-pp"), "--fs-path", None, str, "shared file-system path for -pi fs", True),
]
# llmc's own switches, with no llm.c spelling: (long name, TrainConfig field, help)
LLMC_SWITCHES = [
    ("--overwrite", "overwrite", "start afresh in an -o that holds an earlier run, deleting that run's files"),
    ("--tensorboard", "tensorboard", "also write TensorBoard event files to -o/tensorboard (needs tensorboardX)"),
]
LLMC_OPTIONS = [
    ("--wandb-project", "wandb_project", str, "also log to this Weights & Biases project (needs wandb; "
     "WANDB_MODE=offline works offline)"),
    ("--tokenizer", "tokenizer", str, "what mid-run samples decode with: llm.c's gpt2_tokenizer.bin (the default "
     "when in the cwd, else GPT-2's BPE), or the Llama 3 tokenizer llama-3 shards were made with (a Hugging Face "
     "folder or Meta's tokenizer.model)"),
    ("--rank-timeout", "rank_timeout", float, "with several processes: a rank whose step has not completed in "
     "this many seconds stops with one line (another rank died or hangs; evaluations and checkpoints get longer)"),
]

DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
FIELDS = {_long.lstrip("-").replace("-", "_"): field for _, _long, field, *_ in TRAIN_FLAGS} | \
    {name.lstrip("-").replace("-", "_"): field for name, field, *_ in LLMC_SWITCHES + LLMC_OPTIONS}


def dest(long_name: str) -> str:
    """The option's key in click's parameters and in config.json: `--learning-rate` -> `learning_rate`."""
    return long_name.lstrip("-").replace("-", "_")


def train_options(defaults: dict, allow_gpu_only: bool):
    """Decorator adding every llm.c flag (and llmc's own, and --config) as click options; defaults
    maps a TrainConfig field, or the key of a flag without one, to this command's default."""
    def decorate(fn):
        for name, field, typ, help_text in reversed(LLMC_OPTIONS):
            fn = click.option(name, dest(name), type=typ, default=DEFAULTS[field], help=help_text)(fn)
        for name, field, help_text in reversed(LLMC_SWITCHES):
            fn = click.option(name, dest(name), is_flag=True, default=False, help=help_text)(fn)
        for flags, long_name, field, typ, help_text, gpu_only in reversed(TRAIN_FLAGS):
            key = dest(long_name)
            if gpu_only and not allow_gpu_only:
                fn = click.option(*flags, long_name, key, type=typ, default=None, hidden=True,
                                  callback=_refuse_gpu_flag)(fn)
                continue
            default = defaults.get(field, DEFAULTS.get(field)) if field else defaults.get(key)
            fn = click.option(*flags, long_name, key, type=typ, default=default, show_default=True,
                              help=help_text)(fn)
        return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                            callback=_read_config,
                            help="read the flags from a run's config.json (flags given here override it): "
                                 "--config OLD/config.json -o NEW repeats a run")(fn)
    return decorate


def _refuse_gpu_flag(ctx: click.Context, param: click.Parameter, value):
    if value is not None:
        raise click.UsageError(f"{param.opts[0]} is a GPU-only flag of llm.c's train_gpt2.cu; use `llmc train-gpu`")
    return value


def _read_config(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    """--config FILE: the file's flags become this invocation's defaults, so the command line overrides
    them; flags this command does not take (a train-gpu run's GPU flags, read by train-cpu) are named."""
    if path is None:
        return
    try:
        flags = json.loads(Path(path).read_text())["flags"]
        if not isinstance(flags, dict):
            raise TypeError
    except OSError as e:
        raise LlmcError(f"--config {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise LlmcError(f"--config {path}: not a run's config.json (JSON with a \"flags\" object)") from None
    taken = {p.name for p in ctx.command.params if not p.hidden and p.name != param.name}
    unknown = sorted(k for k, v in flags.items() if k not in taken and v is not None)
    if unknown:
        click.echo(f"--config {path}: {ctx.info_name} does not take {', '.join(unknown)}; ignored", err=True)
    ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in flags.items() if k in taken}}


def train_config(options: dict) -> TrainConfig:
    """The TrainConfig fields from parsed options (flags without a field stay in `options`)."""
    return TrainConfig(**{field: options[key] for key, field in FIELDS.items()
                          if field and options.get(key) is not None})


def run_training(cfg: TrainConfig, device: str, options: dict, group=None) -> None:
    """Build the trainer on the device's backend and run it (as one rank of `group`, a
    core.distributed process group, if given); a run stopped by SIGINT/SIGTERM (after its
    checkpoint) exits with 128 + the signal number, as the signal itself would have. options (every
    flag's value) go into the run's config.json, with cfg's resolved values where they differ."""
    from llmc.core.backends import get_backend
    from llmc.core.train import Trainer

    ctx = click.get_current_context()
    shown = {p.name for p in ctx.command.params if not p.hidden}
    resolved = {key: getattr(cfg, FIELDS[key]) if FIELDS.get(key) else value
                for key, value in options.items() if key in shown}
    record = {"command": ctx.info_name, "flags": resolved}
    trainer = Trainer(cfg, get_backend(device), out=click.echo, group=group, record=record)
    trainer.describe()
    trainer.run()
    if trainer.stop_signal is not None:
        raise SystemExit(128 + trainer.stop_signal)
