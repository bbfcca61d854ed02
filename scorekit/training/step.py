"""One optimizer step: the global batch in chunks over ranks and micro-batches, mixed precision,
gradient clipping, the learning-rate schedule and the EMA.

Every rank draws the same global batch of `trainer.batch_size` from the shared data generator
and cuts it into K = world_size x grad_accum equal chunks; rank r computes chunks
r*grad_accum ... r*grad_accum + grad_accum - 1, one micro-batch each. The noise of chunk k (the
diffusion times and Gaussian draws) comes from a generator seeded by a hash of (seed, batch
number, k). A step's randomness so depends on K but not on how the chunks are spread over
processes: one process with grad_accum=2 and two with grad_accum=1 compute the same losses and
gradients, and a resumed run needs only the data generator's state.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from scorekit.training import distributed
from scorekit.training.config import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def chunk_seed(seed: int, batch: int, chunk: int) -> int:
    """Seed of the noise of chunk `chunk` of the `batch`-th batch drawn in a run: a SeedSequence
    hash, so that no two (batch, chunk) pairs, nor two seeds, share a random stream."""
    return int(np.random.SeedSequence([seed % 2**64, batch, chunk]).generate_state(1, np.uint64)[0])


class StepMixin:
    """`train_step` and its parts for `scorekit.train.Trainer`: reads `cfg`, `model`, `ema`,
    `optimizer`, `objective`, `data_gen`, `device`, `dist`, `step` and `skipped`."""

    def _init_step(self) -> None:
        """Check the precision and chunking against the device and ranks; make the noise
        generator, the fp16 loss scaler and the (DDP-wrapped) model that training calls."""
        t, world = self.cfg.trainer, self.dist.world_size
        if t.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"trainer.precision=fp16 needs a CUDA device (device="
                              f"{self.cfg.device!r} runs on {self.device.type}); use bf16")
        if t.batch_size % (world * t.grad_accum):
            raise ConfigError(f"trainer.batch_size={t.batch_size} must be divisible by the "
                              f"number of processes x trainer.grad_accum = {world} x "
                              f"{t.grad_accum}: the global batch is split into equal chunks")
        self.noise_gen = torch.Generator(self.device)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.train_model = distributed.wrap(self.model, self.dist, self.device)

    # --- the batch --------------------------------------------------------------------------
    def draw_batch(self, n: int) -> dict[str, Tensor]:
        """The step's global batch of n examples from `data_gen` (the same on every rank), as
        tensors with leading dimension n."""
        return {"idx": torch.randint(self.train_x.shape[0], (n,), generator=self.data_gen)}

    def chunk_loss(self, chunk: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        """Mean loss (scalar, with graph) of one chunk of the batch; noise from `generator`."""
        x0 = self.train_x[chunk["idx"].to(self.device)]
        return self.objective(self.train_model, x0, generator=generator)

    def _autocast(self) -> AbstractContextManager:
        p = self.cfg.trainer.precision
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES.get(p), enabled=p != "fp32")

    def _accumulate(self, batch: dict[str, Tensor]) -> Tensor:
        """Forward and backward of this rank's chunks of `batch`; returns the mean of their
        losses (detached). Gradients are summed over micro-batches, each loss / grad_accum."""
        accum = self.cfg.trainer.grad_accum
        size = self.cfg.trainer.batch_size // (self.dist.world_size * accum)
        n_batch = self.step + len(self.skipped)  # batches drawn so far: skipped ones count
        total = None
        for j in range(accum):
            k = self.dist.rank * accum + j
            chunk = {key: v[k * size:(k + 1) * size] for key, v in batch.items()}
            self.noise_gen.manual_seed(chunk_seed(self.cfg.seed, n_batch, k))
            # DDP all-reduces the summed gradient once, in the last micro-batch's backward.
            with distributed.no_sync(self.train_model, skip=j < accum - 1):
                with self._autocast():
                    loss = self.chunk_loss(chunk, self.noise_gen) / accum
                self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    # --- the step ---------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        t = self.cfg.trainer
        scale = min(1.0, (step + 1) / t.warmup) if t.warmup > 0 else 1.0
        if t.lr_schedule == "cosine" and step >= t.warmup:
            frac = (step - t.warmup) / max(1, t.steps - t.warmup)
            scale *= 0.5 * (1 + math.cos(math.pi * frac))
        return t.lr * scale

    @torch.no_grad()
    def _update_ema(self) -> None:
        t = self.cfg.trainer
        # Warm-up of the decay (as in common EMA implementations) so early samples are usable.
        decay = min(t.ema_decay, (1 + self.step) / (10 + self.step)) if t.ema_warmup \
            else t.ema_decay
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, list(self.model.parameters()), 1 - decay)

    def train_step(self) -> Tensor | None:
        """One optimizer step on a fresh global batch; returns its mean loss (detached, the same
        on every rank), or None for a batch skipped under `trainer.skip_nonfinite` (checked at
        once: one host sync per step, only then)."""
        t = self.cfg.trainer
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.dist.mean(self._accumulate(self.draw_batch(t.batch_size)))
        if t.skip_nonfinite and not bool(torch.isfinite(loss)):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip_batch("loss", float(loss))
        self.scaler.unscale_(self.optimizer)  # clip the true gradient (a no-op unless fp16)
        if t.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            # Under fp16 an overflow is the scaler's business: it skips the step, lowers the scale.
            if t.skip_nonfinite and not self.scaler.is_enabled() \
                    and not bool(torch.isfinite(norm)):
                self.optimizer.zero_grad(set_to_none=True)
                return self._skip_batch("gradient norm", float(norm))
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self._update_ema()
        return loss

    def _skip_batch(self, what: str, value: float) -> None:
        """Record a skipped batch at the coming step; past the limit, stop."""
        limit = self.cfg.trainer.skip_nonfinite
        self.skipped.append(self.step + 1)
        if len(self.skipped) > limit:
            raise FloatingPointError(
                f"training {what} is {value} at step {self.step + 1}: {len(self.skipped)} "
                f"non-finite batches (at steps {self.skipped[-5:]}), more than "
                f"trainer.skip_nonfinite={limit}")
        self._print(f"step {self.step + 1}: training {what} is {value}; batch skipped "
                    f"({len(self.skipped)} of trainer.skip_nonfinite={limit})")
        return None

    def _shows_progress(self) -> bool:
        """Bars only when asked (`trainer.progress`), on rank 0, and where someone watches: a
        terminal or a notebook (in a log file they would be noise)."""
        interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
        return bool(self.cfg.trainer.progress) and self.dist.is_main and interactive

    def _print(self, msg: str, console: bool = True) -> None:
        """A message from rank 0 only (every rank knows the same): on the console (above a
        progress bar) unless `console=False`, and appended, time-stamped, to the run's log
        (`self.log_path`: `<run_dir>/train.log` while training)."""
        if not self.dist.is_main:
            return
        if console:
            tqdm.write(msg)
        path = getattr(self, "log_path", None)
        if path is not None:
            with open(path, "a") as fh:
                fh.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}\n")
