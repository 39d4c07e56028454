"""EmergenceCallback's measurement window: the tracker's hooks open over a stretch of forward passes.

A window opens at the start of what is measured (a validation run, a training epoch, a pass of
the callback's own), counts the batches that reached the model, and closes into one measurement
reduced across processes. Outside a window no hook is installed, so training runs as without
the callback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl

from emergence_lightning.callbacks import lightning_state as state
from emergence_lightning.callbacks.path_exact import PathExactCounter
from emergence_lightning.callbacks.probe import ProbeStep, run_step
from emergence_lightning.measure import ActivityTracker, Measurement
from emergence_lightning.measure.observer import eval_pass, fresh_iteration


class MeasurementWindow:
    """Opens and closes ``tracker``'s hooks, feeds it batches, and computes the measurement.

    Args:
        path_counter: with ``connectivity="weights"``, the counter that needs each batch's input.
    """

    def __init__(self, path_counter: PathExactCounter | None) -> None:
        self.tracker: ActivityTracker | None = None  # set at the callback's `setup`
        self.is_open = False
        self.paused = False  # a training-data window, closed to the validation batches running inside it
        self.batches = 0  # batches fed to the model while open and measured
        self._path_counter = path_counter

    def open(self, sample_limit: int | None) -> None:
        """Starts a window; ``sample_limit`` caps the samples counted on this process (DDP padding)."""
        assert self.tracker is not None
        self.tracker.limit_samples(sample_limit)
        self.tracker.reset()
        self.tracker.enabled = True
        self.tracker.attach()
        self.is_open, self.paused, self.batches = True, False, 0

    def start_pass(self, batch: Any, measured: bool = True) -> None:
        """A forward pass on ``batch`` is about to run; ``measured=False`` lets it through unrecorded."""
        if self.is_open and self.tracker is not None and not self.paused:
            self.tracker.start_pass()
            if self._path_counter is not None:
                self._path_counter.remember_input(batch)
            self.tracker.enabled = measured

    def count_pass(self) -> None:
        """The pass announced by :meth:`start_pass` ran (a skipped batch never gets here)."""
        if self.is_open and self.tracker is not None and not self.paused:
            self.batches += self.tracker.enabled

    def pause(self) -> None:
        if self.is_open and self.tracker is not None:
            self.paused, self.tracker.enabled = True, False

    def resume(self) -> bool:
        """Reopens a paused window; whether one was paused."""
        if not self.paused or self.tracker is None:
            return False
        self.paused, self.tracker.enabled = False, True
        return True

    def close(self, trainer: pl.Trainer | None = None) -> Measurement | None:
        """Removes the hooks; with a trainer, also reduces across processes and computes."""
        if self.tracker is None:
            return None
        self.tracker.detach()
        was_open, self.is_open, self.paused = self.is_open, False, False
        if trainer is None or not was_open:
            return None
        measurement = self.tracker.compute(
            reduce=lambda tensor, op: trainer.strategy.reduce(tensor, reduce_op=op)
        )
        # `measurement` is None on every process or on none; all take the same collective.
        batches = state.total_over_processes(trainer, self.batches) if measurement is None else 0
        if batches:
            # Never a silent gap in the history: batches went through, yet no hook was called.
            raise RuntimeError(
                f"EmergenceCallback: {batches} batches went through the model, but none of the tracked "
                f"layers {self.tracker.layer_names} produced an output: their forward hooks never ran. The "
                "forward pass must call these modules (not `module.forward(...)` or a functional op), and the "
                "step must run this model (not a copy, such as an EMA model): name the modules it does call "
                "in `layers=[...]`, or measure on `probe_dataloader=` with a `probe_step` that runs the model."
            )
        return measurement

    def run_pass(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        data: tuple[Iterable[Any], float, int | None],
        probe_step: ProbeStep | None,
    ) -> Measurement | None:
        """A window over a forward-only pass of the callback's own through the module's own step.

        ``data`` is ``(loader, limit, sample_limit)``: the first ``limit`` batches of ``loader`` run
        (see :mod:`~emergence_lightning.callbacks.probe`), and the run is left as found: random states,
        loader generators and workers, modes (see :mod:`~emergence_lightning.measure.observer`).
        """
        loader, limit, sample_limit = data
        self.open(sample_limit)
        try:
            with eval_pass(pl_module, [loader]), trainer.precision_plugin.val_step_context():
                for batch_idx, batch in enumerate(state.take(fresh_iteration(loader), limit)):
                    batch = trainer.strategy.batch_to_device(batch)
                    self.start_pass(batch)
                    run_step(pl_module, batch, batch_idx, probe_step)
                    self.count_pass()
        except BaseException:
            self.close()
            raise
        return self.close(trainer)
