"""Early stopping that waits until the monitored value has moved, and says why it stops."""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

logger = logging.getLogger(__name__)


class EarlyStoppingOnceMoved(EarlyStopping):
    """Lightning's ``EarlyStopping`` that cannot end a run on a value that has never moved.

    A model that has not started to learn shows no improvement, and plain patience would stop it after
    ``patience`` validations as if it had converged: SimpleNet with noise too small has ``val_loss`` at its
    ceiling 1.0 (= 2 × margin) from the first validation. Here patience cannot stop the run while the monitored
    value is still at its first value, or at ``stuck_value`` (a value the metric has when nothing is learnt; for
    SimpleNet's ``val_loss`` 1.0), each within ``flat_tolerance`` (relative). The run then goes on and a warning
    says why, once; every stop is logged with its reason. Non-finite values and the thresholds stop as in
    Lightning.

    Args:
        flat_tolerance: relative distance ``|value − reference| / |reference|`` that still counts as not moved.
        stuck_value: optional value of the monitored metric that means "nothing learnt yet".
        **kwargs: ``EarlyStopping``'s arguments (``monitor``, ``patience``, ``mode``, ``min_delta``, …).
    """

    def __init__(self, *, flat_tolerance: float = 0.01, stuck_value: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if flat_tolerance < 0:
            msg = f"flat_tolerance must be >= 0, got {flat_tolerance}"
            raise ValueError(msg)
        self.flat_tolerance = flat_tolerance
        self.stuck_value = stuck_value
        self.first_value: float | None = None
        self.moved = False
        self._warned = False

    def _near(self, value: float, reference: float) -> bool:
        return abs(value - reference) <= self.flat_tolerance * abs(reference)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        """Lightning's decision, except that patience cannot stop a value that has not moved (see the class)."""
        value = float(current)
        if self.first_value is None and torch.isfinite(current):
            self.first_value = value
        elif self.first_value is not None and not self._near(value, self.first_value):
            self.moved = True
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        stuck = self.stuck_value is not None and self._near(value, self.stuck_value)
        if should_stop and self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED and (stuck or not self.moved):
            self.wait_count = 0  # patience counts again from here
            self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
            if not self._warned:
                self._warned = True
                where = f"at {self.stuck_value:g}, its value when nothing is learnt" if stuck else (
                    f"at its first value {self.first_value:.4g}")
                logger.warning(
                    "%s = %.4f has stayed %s for %d validations: early stopping does not stop the run, since that "
                    "says the model has not started to learn, not that it has converged.",
                    self.monitor, value, where, self.patience,
                )  # fmt: skip
            return False, None
        if should_stop:
            logger.info("Early stopping: %s", reason)
        return should_stop, reason

    def state_dict(self) -> dict[str, Any]:
        """Lightning's state plus the first value and whether it has moved (for resumed runs)."""
        return {**super().state_dict(), "first_value": self.first_value, "moved": self.moved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.first_value = state_dict.get("first_value")
        self.moved = bool(state_dict.get("moved", False))
        super().load_state_dict(state_dict)
