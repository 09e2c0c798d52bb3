"""The training loop, written once for every backend: llm.c's train_gpt2.cu main().

Steps run 0..N. At each step boundary, as llm.c: validation (step % val_every == 0 and at N),
HellaSwag (likewise, after step 0), a sample (step % sample_every == 0 after step 0, and at N) and a
checkpoint (step % checkpoint_every == 0 after step 0, and at N); then (except at N) one optimizer
step of grad_accum micro-batches, gradient clipping to norm 1.0 and AdamW. Each step prints llm.c's
line plus an ETA and appends to main.log.

Safety: -y 1 resumes from the newest complete checkpoint in -o exactly where it stopped (same data
order, optimizer state, outlier windows); SIGINT/SIGTERM (with -o) write a checkpoint at the next step
boundary and stop; a non-finite loss or gradient norm stops before the update, with a checkpoint of
the last good step.

Data parallel (a core.distributed process group): each rank reads its slice of every batch, the
gradients are averaged over the ranks after the micro-batches (-z 1: into each rank's optimizer
shard), losses are averaged, and rank 0 alone prints, logs and samples.
"""

import math
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Callable, Iterator

import numpy as np

from llmc.core import checkpoint, families, report
from llmc.core.dataloader import DataLoader
from llmc.core.distributed import Group, SingleProcess, Watchdog
from llmc.core.errors import LlmcError
from llmc.core.evaluate import evaluate, load_hellaswag
from llmc.core.metrics import RunLog
from llmc.core.outliers import OutlierDetector
from llmc.core.primitives import AdamW
from llmc.core.rundir import RunDir
from llmc.core.sample import ReforwardModel, load_decoder, sample_from_eot
from llmc.core.schedules import learning_rate
from llmc.core.train_config import TrainConfig


# seconds the ranks may go without a completed step through work that can take long on one rank while
# the others wait: the start and first steps (loading, compiling, tuning), evaluations, samples and
# checkpoints (PyTorch's NCCL timeout is 10 minutes too)
SLOW_WORK_SECONDS = 600.0


@dataclass
class QueuedStep:
    """A step whose work is queued: its losses and norm come back through `fetched`."""
    step: int  # 0-based
    lr: float
    loader_state: dict  # the train loader at the step's start
    update_queued: bool  # AdamW queued on the device (else the host decides it after the read-back)
    fetched: Callable[[], list[np.ndarray]]


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class Trainer:
    def __init__(self, cfg: TrainConfig, backend: ModuleType, out: Callable[[str], None] = print,
                 stream: Callable[[str], None] = _write_stdout, group: Group | None = None,
                 record: dict | None = None):
        """out prints a line; stream writes sampled text as it comes (no newline). With a group of
        several processes, rank 0 alone prints, logs, samples and evaluates HellaSwag. record is what
        config.json keeps of the command line: {"command": ..., "flags": {long name: value}}."""
        self.group = group or SingleProcess()
        self.main = self.group.rank == 0
        if self.main:
            self.out, self.stream = out, stream
        else:
            self.out = self.stream = lambda text: None
        self.cfg, self.backend = cfg, backend
        if (cfg.num_processes, cfg.process_rank) != (self.group.world, self.group.rank):
            raise LlmcError(f"-pn {cfg.num_processes} -pr {cfg.process_rank} differ from the process group's "
                            f"rank {self.group.rank} of {self.group.world}")
        cfg.validate()
        # several ranks: one whose steps stop completing (another rank died) stops instead of waiting forever
        self.watchdog = (Watchdog(self.group, cfg.rank_timeout, first=SLOW_WORK_SECONDS)
                         if self.group.world > 1 else None)
        self.run_dir = None
        try:
            self.run_dir = RunDir.hold(cfg.output_dir, self.group) if cfg.output_dir else None
            self._start(record or {"flags": {}})
        except BaseException:
            if self.watchdog is not None:
                self.watchdog.stop()
            if self.run_dir is not None:
                self.run_dir.release(failed=True)
            raise

    def _start(self, record: dict) -> None:
        cfg, backend = self.cfg, self.backend
        tokens_per_fwdbwd = cfg.B * cfg.T * cfg.num_processes
        total = tokens_per_fwdbwd if cfg.total_batch == -1 else cfg.total_batch
        if total <= 0 or total % tokens_per_fwdbwd:
            raise LlmcError(f"total batch size -d {total} must be a positive multiple of B*T*processes = {tokens_per_fwdbwd}")
        self.total_batch, self.grad_accum = total, total // tokens_per_fwdbwd
        resume_step = checkpoint.find_resumable(cfg.output_dir, cfg.process_rank) if cfg.resume else None
        self.resumed = resume_step is not None
        if self.run_dir is not None:
            self.run_dir.refuse_clobber(bool(cfg.resume), cfg.overwrite)
            if self.resumed and self.main:
                self.run_dir.check_resume(record["flags"], self.out)
        self.family, model_cfg, params = families.load(str(checkpoint.model_path(cfg.output_dir, resume_step))
                                                       if self.resumed else cfg.model)
        self.model_cfg = model_cfg
        self.model = self.family.Model(model_cfg, backend, params, cfg.B, cfg.T, recompute=cfg.recompute,
                                       gelu_fusion=cfg.gelu_fusion, master_weights=bool(cfg.master_weights),
                                       group=self.group, zero_stage=cfg.zero_stage, fp8=bool(cfg.fp8))
        train_pattern = cfg.val_data if cfg.overfit_single_batch else cfg.train_data
        self.train_loader = DataLoader(train_pattern, cfg.B, cfg.T, cfg.process_rank, cfg.num_processes,
                                       shuffle=not cfg.overfit_single_batch)
        self.val_loader = DataLoader(cfg.val_data, cfg.B, cfg.T, cfg.process_rank, cfg.num_processes, shuffle=False)
        tokens = self.train_loader.token_kind  # gpt-2 or llama-3: the same ids are other tokens in each
        if self.val_loader.token_kind != tokens:
            raise LlmcError(f"-i holds {tokens} token shards and -j {self.val_loader.token_kind} ones: "
                            "the same ids are other tokens in each")
        if cfg.hellaswag and tokens != "gpt-2":
            raise LlmcError(f"-h 1: HellaSwag's eval file holds GPT-2 tokens (llm.c writes none for Llama 3's "
                            f"tokenizer), and -i holds {tokens} token shards")
        self.num_steps = cfg.max_steps if cfg.max_steps != -1 else self.train_loader.num_tokens // total
        self.val_steps = cfg.val_max_steps if cfg.val_max_steps != -1 else self.val_loader.num_tokens // tokens_per_fwdbwd
        if self.num_steps <= 0:
            raise LlmcError(f"no training steps: the train data has {self.train_loader.num_tokens} tokens, "
                            f"fewer than one total batch of {total}")
        self.loss_detector, self.grad_detector = OutlierDetector(), OutlierDetector()
        self.step = 0
        self.last_checkpoint = -1  # step of the checkpoint written (or resumed from) last
        if self.resumed:
            self._restore(resume_step)
        self.hellaswag = (load_hellaswag(cfg.hellaswag_path, cfg.B, cfg.T, model_cfg.vocab_size, self.out)
                          if self.main and cfg.hellaswag else None)
        self.sample_every = cfg.sample_every if self.main else 0  # 0 once sampling turns out impossible
        if self.sample_every > 0 and tokens != "gpt-2" and cfg.tokenizer is None:
            self.out(f"no samples: -i holds {tokens} token shards; give --tokenizer, the one they were made with, "
                     "to decode samples (train_llama3.cu leaves its tokenizer a TODO)")
            self.sample_every = 0
        # a bad tokenizer stops the start, not the run
        self.decoder = load_decoder(cfg.tokenizer) if self.sample_every > 0 else None
        self.stop_signal: int | None = None  # set by SIGINT/SIGTERM, acted on at the next step boundary
        self.memory_reported = False  # llm.c's "device memory usage" line, once the optimizer state exists
        self.train_step = backend.graph(self._forward_backward)
        self.step_losses = backend.xp.zeros((self.grad_accum, cfg.B, cfg.T), dtype=np.float32)
        flops_per_step = self.family.flops_per_token(model_cfg, cfg.T) * total // self.group.world  # one process's
        self.timer = report.StepTimer(total, flops_per_step, backend.promised_flops())  # None: no MFU column (CPU)
        self.val_losses: list[tuple[int, float]] = []  # (step, val loss) of this process's evaluations
        # last: a failed start leaves -o untouched
        record = {**record, "backend": backend.name, "device": backend.device_name(),
                  "model": {"family": self.family.name, "descriptor": cfg.model, **asdict(model_cfg),
                            "num_parameters": self.family.num_parameters(model_cfg)},
                  "resumed_from_step": resume_step}
        wandb_id = None
        if cfg.wandb_project:
            previous = self.run_dir.previous_config() if self.resumed and self.run_dir else None
            wandb_id = (previous or {}).get("wandb_run_id") or uuid.uuid4().hex[:12]
            record["wandb_run_id"] = wandb_id
        if self.run_dir is not None:
            self.run_dir.take(record, self.out)
        self.run_log = RunLog(cfg.output_dir if self.main else None, resume_step, cfg.tensorboard and self.main,
                              cfg.wandb_project if self.main else None, wandb_id, record)

    # ------------------------------------------------------------------ output dir, checkpoints, resume
    def _restore(self, step: int) -> None:
        """Optimizer, data loader and outlier-detector state of checkpoint `step` (llm.c's load_state)."""
        c = self.cfg
        if step > self.num_steps:
            raise LlmcError(f"the newest checkpoint in {c.output_dir} is at step {step}, past -x {self.num_steps}")
        state, note = checkpoint.restore(c.output_dir, step, self.model, self.train_loader, c.num_processes,
                                         c.process_rank)
        if note:
            self.out(note)
        if state.detectors is not None:
            self.loss_detector, self.grad_detector = state.detectors
        self.step = self.last_checkpoint = step
        self.out(f"resuming from the checkpoint of step {step} in {c.output_dir}")

    def save_checkpoint(self, loader_state: dict | None = None, params: np.ndarray | None = None) -> None:
        """model_%08d.bin, state_%08d_%05d.bin, DONE_%08d of the current step boundary; then keep the
        newest -nk (and every -nm-th) checkpoints. loader_state: the loader as of this boundary, when
        it has read ahead since; params: the parameters on the host, when the caller has them."""
        c, backend = self.cfg, self.backend
        params = backend.to_host(self.model.params) if params is None else params
        if not np.isfinite(params).all():  # a diverged state is never written as a checkpoint
            raise LlmcError(f"the parameters are not finite at step {self.step}: no checkpoint written; "
                            f"{self._last_good()}")
        state = checkpoint.TrainState(self.step, *self.model.optimizer_state(), loader_state or self.train_loader.state(),
                                      [self.loss_detector, self.grad_detector], c.num_processes, c.process_rank)
        self.out(f"Writing checkpoint at step {self.step}")
        checkpoint.save_checkpoint(c.output_dir, self.family.write_model, self.model_cfg, params,
                                   backend.act_dtype != np.float32, state, self.group.barrier)
        self.group.barrier()  # DONE is written: every rank may prune
        self.last_checkpoint = self.step
        for step in checkpoint.prune_checkpoints(c.output_dir, c.checkpoints_keep, c.major_checkpoint_every,
                                                 c.process_rank):
            self.out(f"Deleting checkpoint at step {step}")

    def _checkpoint_last_good_state(self, loader_state: dict) -> str:
        """After a non-finite loss or norm: checkpoint the step boundary before it, if its parameters
        are finite; what the stop message says of it."""
        c = self.cfg
        if not c.output_dir:
            return ""
        params = self.backend.to_host(self.model.params)
        if not np.isfinite(params).all():
            return f"; the parameters were already not finite, so no checkpoint was written ({self._last_good()})"
        self.save_checkpoint(loader_state, params)
        return f"; the checkpoint of step {self.step} in {c.output_dir} holds the last good state"

    def _last_good(self) -> str:
        if self.last_checkpoint < 0:
            return "there is no good checkpoint"
        return f"the checkpoint of step {self.last_checkpoint} in {self.cfg.output_dir} is the last good state"

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """With -o, SIGINT/SIGTERM ask for a checkpoint and a stop at the next step boundary; a second
        one acts as usual (the checkpoint files are written atomically either way)."""
        if not self.cfg.output_dir or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.stop_signal is not None:
                signal.signal(signum, previous[signum] or signal.SIG_DFL)
                signal.raise_signal(signum)
            self.stop_signal = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ evaluation and samples
    def sample(self) -> None:
        """llm.c's mid-run sample from <|endoftext|>; sampling stops for the run where it cannot start. On an
        asynchronous backend (a GPU, where a token's cost is its kernel launches) llm.c's way: the training
        model's forward re-run over the prefix, one graph a token; on the CPU the KV cache's fp32 forward of
        one position a token, from the model's own parameters."""
        def reforward(cfg, params, xp, positions):  # generate's maker of the model it samples from
            return ReforwardModel(self.family.Model, self.backend, cfg, params, positions)

        inference = reforward if self.backend.asynchronous else self.family.KVCacheModel
        if not sample_from_eot(inference, self.model_cfg, self.model.params, self.backend.xp,
                               self.decoder, self.cfg.gen_tokens, self.out, self.stream):
            self.sample_every = 0

    def describe(self) -> None:
        """llm.c's start-up tables and batch lines."""
        c = self.cfg
        report.print_table([
            ("train data pattern", c.train_data), ("val data pattern", c.val_data),
            ("output log dir", c.output_dir or "NULL"), ("micro batch size B", c.B), ("sequence length T", c.T),
            ("total batch size", self.total_batch), ("LR scheduler", c.schedule), ("learning rate (LR)", f"{c.lr:e}"),
            ("warmup iterations", c.warmup), ("final LR fraction", f"{c.final_lr_frac:e}"),
            ("weight decay", f"{c.weight_decay:e}"), ("max_steps", c.max_steps), ("val_loss_every", c.val_every),
            ("val_max_steps", c.val_max_steps), ("sample_every", c.sample_every), ("genT", c.gen_tokens),
            ("overfit_single_batch", c.overfit_single_batch), ("checkpoint_every", c.checkpoint_every),
            ("resume", c.resume), ("run hellaswag", "yes" if self.hellaswag else "no"),
            ("device", self.backend.name)], self.out)
        report.print_table([("weight init method", "intermediate checkpoint" if self.resumed else c.model),
                            *self.family.describe(self.model_cfg), ("train_num_batches", self.num_steps),
                            ("val_num_batches", self.val_steps)], self.out)
        self.out(f"batch_size B={c.B} * seq_len T={c.T} * num_processes={c.num_processes} and "
                 f"total_batch_size={self.total_batch}")
        self.out(f"=> setting grad_accum_steps={self.grad_accum}")
        if self.model.sharded:
            self.out(f"ZeRO-1: each of the {self.group.world} processes keeps the optimizer state of "
                     f"{self.model.shard.size} of the {self.model.params.size} parameters")

    # ------------------------------------------------------------------ pieces of a step
    def _forward_backward(self) -> None:
        self.model.forward(dloss=1.0 / (self.cfg.B * self.cfg.T * self.grad_accum))
        self.model.backward()

    def _check_tokens(self, x: np.ndarray, y: np.ndarray, loader: DataLoader) -> None:
        top = max(int(x.max()), int(y.max()))
        if top >= self.model_cfg.vocab_size:
            shard = loader.shard_order[loader.shard] if loader.shuffle else loader.shard
            raise LlmcError(f"{loader.files[shard]}: token id {top} is outside the model's vocab of "
                            f"{self.model_cfg.vocab_size}")

    def validate(self) -> float:
        self.val_loader.reset()
        total = 0.0
        for _ in range(self.val_steps):
            x, y = self.val_loader.next_batch()
            self._check_tokens(x, y, self.val_loader)
            self.model.set_batch(x, y)
            self.model.forward()
            total += self.model.mean_loss()
        return self.group.host_reduce([total / self.val_steps])[0] / self.group.world

    def _queue_micro_steps(self) -> dict:
        """Queue the grad_accum forward/backward passes of the next step and its gradient norm; the
        loader's state at the step's start (for a checkpoint if the step fails)."""
        c, model = self.cfg, self.model
        loader_state = self.train_loader.state()
        if c.overfit_single_batch:
            self.train_loader.reset()
        model.zero_grad()
        for micro in range(self.grad_accum):
            x, y = self.train_loader.next_batch()
            self._check_tokens(x, y, self.train_loader)
            model.set_batch(x, y)
            self.train_step()
            self.step_losses[micro][...] = model.losses  # read back with the norm, once per step
        model.reduce_gradients()
        model.compute_grad_norm()
        return loader_state

    def _lr(self, step: int) -> float:
        c = self.cfg
        return learning_rate(c.schedule, step, c.lr, c.warmup, self.num_steps, c.final_lr_frac)

    def _update(self, step: int, grad_scale: float = 1.0, clip_to: float | None = None) -> None:
        """AdamW for the 0-based step with train_gpt2.cu's betas and eps; -w 0's stochastic rounding
        seeded per step (reproducible from a checkpoint)."""
        hp = AdamW(lr=self._lr(step), weight_decay=self.cfg.weight_decay)
        self.model.update(hp, step=step + 1, grad_scale=grad_scale, seed=step * 1000003 + 1, clip_to=clip_to)

    def finish_step(self, queued: QueuedStep) -> tuple[float, float, float, float, float]:
        """Wait for a queued step's losses and norm: (loss, loss z, norm, norm z, lr). Under -sl/-sg
        the host decides the update here, after the read-back; otherwise it was queued before."""
        c = self.cfg
        losses, norm_squared = queued.fetched()
        loss = self.group.host_reduce([float(losses.mean())])[0] / self.group.world
        norm = float(np.sqrt(norm_squared[0]))
        if not (math.isfinite(loss) and math.isfinite(norm)):  # stop before the update spoils the state
            self.step = queued.step  # the boundary before it: the device skipped its update, none later is queued
            where = self._checkpoint_last_good_state(queued.loader_state)
            raise LlmcError(f"loss {loss}, gradient norm {norm} at step {self.step + 1}: stopped before "
                            f"the update{where}")
        zloss = self.loss_detector.update(loss)
        zgrad = self.grad_detector.update(norm)
        if not queued.update_queued:
            if math.isfinite(zloss) and c.skip_loss_z and zloss > c.skip_loss_z:
                self.out(f"skipping update due to loss z-score of {zloss:f}")
            elif math.isfinite(zgrad) and c.skip_grad_z and zgrad > c.skip_grad_z:
                self.out(f"skipping update due to grad z-score of {zgrad:f}")
            else:
                grad_scale = 1.0 / norm if norm > 1.0 else 1.0  # clip to global norm 1.0
                self._update(queued.step, grad_scale)
        return loss, zloss, norm, zgrad, queued.lr

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        # overflow is caught as a non-finite loss or norm, with a clear stop; NumPy's warnings would only add noise
        self.started = time.perf_counter()
        note = self.backend.first_run_note()
        if note and self.main:
            self.out(note)
        try:
            with self._stop_on_signals(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                self._loop()
            self.summarize()
        finally:
            if self.watchdog is not None:
                self.watchdog.stop()
            self.run_log.close()
            if self.run_dir is not None:
                self.run_dir.release()

    def _loop(self) -> None:
        """Steps until max_steps. On a device that queues work (and without -sl/-sg, whose z-scores the
        host needs before the update) the host stays a step ahead: it queues step s+1's forward and
        backward, then reads step s back and prints it while the device computes, then queues step
        s+1's update; the device never waits for the host between steps. Step boundaries with work to
        do (evaluations, samples, checkpoints, a stop) first wait for the step in flight."""
        c = self.cfg
        host_decides = bool(c.skip_loss_z or c.skip_grad_z)
        ahead = self.backend.asynchronous and not host_decides
        in_flight: QueuedStep | None = None
        while True:
            last = self.step == self.num_steps
            if self.group.world > 1:  # a signal reaches the ranks at different steps: stop together
                stop = int(self.group.host_reduce([self.stop_signal or 0], "max")[0])
                self.stop_signal = stop or None
            jobs = self._boundary_jobs(last)
            if in_flight is not None and (jobs or last or self.stop_signal is not None):
                self._report(in_flight)
                in_flight = None
            if self.stop_signal is not None and not last:
                if self.step != self.last_checkpoint:
                    self.save_checkpoint()
                self.out(f"stopped by {signal.Signals(self.stop_signal).name} at step {self.step}; "
                         f"continue with -y 1 -o {c.output_dir}")
                return
            if jobs or self.timer.since is None:
                self._kick_watchdog(SLOW_WORK_SECONDS)
                for job in jobs:
                    job()
                self.backend.synchronize()  # time the next step from here, not from before the evaluations
                self.timer.since = time.perf_counter()
            if last:
                break
            loader_state = self._queue_micro_steps()
            if ahead and in_flight is not None:  # the step before, read back while the device runs this one
                self._report(in_flight)  # before this step's update is queued: a failed step stops ahead of it
            if not host_decides:  # AdamW clipped to norm 1.0 on the device, skipped there if the norm is not finite
                self._update(self.step, clip_to=1.0)
            queued = QueuedStep(self.step, self._lr(self.step), loader_state, not host_decides,
                                self.backend.fetch(self.step_losses, self.model.norm_squared))
            if ahead:
                in_flight = queued
            else:
                self._report(queued)
            self.step += 1  # the boundary the queued updates reach
        if self.timer.mean() is not None:
            self.out(f"total average iteration time: {self.timer.mean() * 1000:f} ms")

    def _report(self, queued: QueuedStep) -> None:
        """Finish a queued step and print its line: the step ends at its read-back."""
        loss, zloss, norm, zgrad, lr = self.finish_step(queued)
        dt, tps, mfu = self.timer.lap()
        usage = None if self.memory_reported else self.backend.memory_usage()
        if usage is not None:  # where llm.c prints it: its first update has allocated the optimizer state
            self.out(f"device memory usage: {report.mib_of_total(usage)}")
        self.memory_reported = True
        self._kick_watchdog(max(self.cfg.rank_timeout, 10 * dt))  # a slow step's successor gets its time
        eta = self.timer.eta(self.num_steps - queued.step - 1, dt)
        mfu_column = "" if mfu is None else f"{100 * mfu:.1f}% bf16 MFU | "
        self.out(f"step {queued.step + 1:4d}/{self.num_steps} | loss {loss:7.6f} ({zloss:+.2f}z)| "
                 f"norm {norm:6.4f} ({zgrad:+.2f}z)| lr {lr:.2e} | {dt * 1000:.2f} ms | {mfu_column}{tps:.0f} tok/s | "
                 f"ETA {report.duration(eta)}")
        self.run_log.train_step(queued.step, loss, lr, norm, dt, self.total_batch / dt, mfu)

    def _kick_watchdog(self, seconds: float) -> None:
        if self.watchdog is not None:
            self.watchdog.kick(seconds)

    def summarize(self) -> None:
        c = self.cfg
        last = str(checkpoint.model_path(c.output_dir, self.last_checkpoint)) if self.last_checkpoint >= 0 else None
        report.summary(time.perf_counter() - self.started, self.timer, self.backend.memory_usage(), self.val_losses,
                       last, self.out)

    def _boundary_jobs(self, last: bool) -> list[Callable[[], None]]:
        """What this step boundary is due (as llm.c): validation, HellaSwag, a sample, a checkpoint."""
        c, jobs = self.cfg, []
        periodic_eval = c.val_every > 0 and self.step % c.val_every == 0  # -v 0: no validation
        if periodic_eval or (last and c.val_every > 0):
            jobs.append(self._validate_and_print)
        if self.hellaswag is not None and ((self.step > 0 and periodic_eval) or last):
            jobs.append(self._hellaswag_and_print)
        if self.sample_every > 0 and ((self.step > 0 and self.step % self.sample_every == 0) or last):
            jobs.append(self.sample)
        if (c.output_dir and c.checkpoint_every > 0 and self.step != self.last_checkpoint
                and ((self.step > 0 and self.step % c.checkpoint_every == 0) or last)):
            jobs.append(self.save_checkpoint)
        return jobs

    def _validate_and_print(self) -> None:
        val = self.validate()
        self.out(f"val loss {val:f}")
        self.val_losses.append((self.step, val))
        self.run_log.val_loss(self.step, val)

    def _hellaswag_and_print(self) -> None:
        acc = evaluate(self.model, self.hellaswag)
        self.out(f"HellaSwag: {round(acc * len(self.hellaswag))}/{len(self.hellaswag)} = {acc:f}")
        self.run_log.hellaswag(self.step, acc)
