"""The training loop, written once for every backend: llm.c's train_gpt2.cu main().

Steps run 0..N: validation at step % val_every == 0 and at N, then (except at N) one optimizer step
of grad_accum micro-batches, gradient clipping to norm 1.0 and AdamW; each step prints llm.c's line
and appends to main.log.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from llmc.core.config import num_parameters
from llmc.core.dataloader import DataLoader
from llmc.core.errors import LlmcError
from llmc.core.init import load_params
from llmc.core.model import GPT
from llmc.core.outliers import OutlierDetector
from llmc.core.schedules import learning_rate


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
    overfit_single_batch: int = 0  # -a
    recompute: int = 0  # -r
    gelu_fusion: int = 2  # -ge
    master_weights: int = 1  # -w
    num_processes: int = 1  # -pn
    process_rank: int = 0  # -pr


def print_table(rows: list[tuple[str, object]], out: Callable[[str], None]) -> None:
    line = "+-----------------------+----------------------------------------------------+"
    out(line)
    for k, v in rows:
        out(f"| {k:<21} | {str(v):<50} |")
    out(line)


class Trainer:
    def __init__(self, cfg: TrainConfig, backend: ModuleType, out: Callable[[str], None] = print):
        self.cfg, self.backend, self.out = cfg, backend, out
        tokens_per_fwdbwd = cfg.B * cfg.T * cfg.num_processes
        total = tokens_per_fwdbwd if cfg.total_batch == -1 else cfg.total_batch
        if total <= 0 or total % tokens_per_fwdbwd:
            raise LlmcError(f"total batch size -d {total} must be a positive multiple of B*T*processes = {tokens_per_fwdbwd}")
        self.total_batch, self.grad_accum = total, total // tokens_per_fwdbwd
        model_cfg, params = load_params(cfg.model)
        self.model_cfg = model_cfg
        if cfg.T > model_cfg.max_seq_len:
            raise LlmcError(f"-t {cfg.T} is larger than the model's max_seq_len {model_cfg.max_seq_len}")
        self.model = GPT(model_cfg, backend, params, cfg.B, cfg.T, recompute=cfg.recompute,
                         gelu_fusion=cfg.gelu_fusion, master_weights=bool(cfg.master_weights))
        train_pattern = cfg.val_data if cfg.overfit_single_batch else cfg.train_data
        self.train_loader = DataLoader(train_pattern, cfg.B, cfg.T, cfg.process_rank, cfg.num_processes,
                                       shuffle=not cfg.overfit_single_batch)
        self.val_loader = DataLoader(cfg.val_data, cfg.B, cfg.T, cfg.process_rank, cfg.num_processes, shuffle=False)
        self.num_steps = cfg.max_steps if cfg.max_steps != -1 else self.train_loader.num_tokens // total
        self.val_steps = cfg.val_max_steps if cfg.val_max_steps != -1 else self.val_loader.num_tokens // tokens_per_fwdbwd
        if self.num_steps <= 0:
            raise LlmcError(f"no training steps: the train data has {self.train_loader.num_tokens} tokens, "
                            f"fewer than one total batch of {total}")
        self.log_path = None
        if cfg.output_dir:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            self.log_path = Path(cfg.output_dir) / "main.log"
            if not cfg.resume:
                self.log_path.write_text("")
        self.loss_detector, self.grad_detector = OutlierDetector(), OutlierDetector()
        self.step = 0
        self.train_step = backend.graph(self._forward_backward)

    def log(self, line: str) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    def describe(self) -> None:
        c, m = self.cfg, self.model_cfg
        print_table([("train data pattern", c.train_data), ("val data pattern", c.val_data),
                     ("output log dir", c.output_dir or "NULL"), ("micro batch size B", c.B),
                     ("sequence length T", c.T), ("total batch size", self.total_batch),
                     ("LR scheduler", c.schedule), ("learning rate (LR)", f"{c.lr:e}"),
                     ("warmup iterations", c.warmup), ("final LR fraction", f"{c.final_lr_frac:e}"),
                     ("weight decay", f"{c.weight_decay:e}"), ("max_steps", c.max_steps),
                     ("val_loss_every", c.val_every), ("val_max_steps", c.val_max_steps),
                     ("sample_every", c.sample_every), ("genT", c.gen_tokens),
                     ("overfit_single_batch", c.overfit_single_batch), ("device", self.backend.name)], self.out)
        print_table([("weight init method", c.model), ("max_sequence_length T", m.max_seq_len),
                     ("vocab_size V", m.vocab_size), ("padded_vocab_size Vp", m.padded_vocab_size),
                     ("num_layers L", m.num_layers), ("num_heads NH", m.num_heads), ("channels C", m.channels),
                     ("num_parameters", num_parameters(m)), ("train_num_batches", self.num_steps),
                     ("val_num_batches", self.val_steps)], self.out)
        self.out(f"batch_size B={c.B} * seq_len T={c.T} * num_processes={c.num_processes} and "
                 f"total_batch_size={self.total_batch}")
        self.out(f"=> setting grad_accum_steps={self.grad_accum}")

    # ------------------------------------------------------------------ pieces of a step
    def _forward_backward(self) -> None:
        self.model.forward(dloss=1.0 / (self.cfg.B * self.cfg.T * self.grad_accum))
        self.model.backward()

    def validate(self) -> float:
        self.val_loader.reset()
        total = 0.0
        for _ in range(self.val_steps):
            x, y = self.val_loader.next_batch()
            self.model.set_batch(x, y)
            self.model.forward()
            total += self.model.mean_loss()
        return total / self.val_steps

    def optimizer_step(self) -> tuple[float, float, float, float, float]:
        """One step of grad_accum micro-batches and the update: (loss, loss z, norm, norm z, lr)."""
        c, model = self.cfg, self.model
        if c.overfit_single_batch:
            self.train_loader.reset()
        model.zero_grad()
        loss = 0.0
        for _ in range(self.grad_accum):
            x, y = self.train_loader.next_batch()
            model.set_batch(x, y)
            self.train_step()
            loss += model.mean_loss()
        loss /= self.grad_accum
        zloss = self.loss_detector.update(loss)
        lr = learning_rate(c.schedule, self.step, c.lr, c.warmup, self.num_steps, c.final_lr_frac)
        norm = model.grad_norm()
        zgrad = self.grad_detector.update(norm)
        if math.isfinite(zloss) and c.skip_loss_z and zloss > c.skip_loss_z:
            self.out(f"skipping update due to loss z-score of {zloss:f}")
        elif math.isfinite(zgrad) and c.skip_grad_z and zgrad > c.skip_grad_z:
            self.out(f"skipping update due to grad z-score of {zgrad:f}")
        else:
            grad_scale = 1.0 / norm if norm > 1.0 else 1.0  # clip to global norm 1.0
            model.update(lr, 0.9, 0.95, 1e-8, c.weight_decay, self.step + 1, grad_scale,
                         seed=self.step * 1000003 + 1)
        return loss, zloss, norm, zgrad, lr

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        c = self.cfg
        tokens_per_step = self.total_batch
        ema_tps, total_time = 0.0, 0.0
        while self.step <= self.num_steps:
            last = self.step == self.num_steps
            if self.step % c.val_every == 0 or last:
                val = self.validate()
                self.out(f"val loss {val:f}")
                self.log(f"s:{self.step} tel:{val:.4f}")
            if last:
                break
            t0 = time.perf_counter()
            loss, zloss, norm, zgrad, lr = self.optimizer_step()
            self.backend.synchronize()
            dt = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise LlmcError(f"loss became {loss} at step {self.step + 1}; stopping")
            tps = tokens_per_step / dt
            if self.step > 0:  # step 0 is warmup
                total_time += dt
                ema_tps = 0.95 * ema_tps + 0.05 * tps
                tps = ema_tps / (1.0 - 0.95 ** self.step)
            self.out(f"step {self.step + 1:4d}/{self.num_steps} | loss {loss:7.6f} ({zloss:+.2f}z)| "
                     f"norm {norm:6.4f} ({zgrad:+.2f}z)| lr {lr:.2e} | {dt * 1000:.2f} ms | {tps:.0f} tok/s")
            self.log(f"s:{self.step} trl:{loss:.4f} lr:{lr:.6f} norm:{norm:.2f}")
            self.step += 1
        if self.num_steps > 1:
            self.out(f"total average iteration time: {total_time / (self.num_steps - 1) * 1000:f} ms")
