"""Why pretraining could not start or had to stop."""

from __future__ import annotations

from conclugen.errors import ConCluGenError


class PretrainError(ConCluGenError, RuntimeError):
    """Pretraining cannot start or had to stop; the message says why."""


class NonFiniteLossError(PretrainError):
    """A loss became NaN or infinite; ``epoch`` and ``step`` say where, when known."""

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step
