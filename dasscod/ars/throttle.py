"""The ARS sync's limits on what it asks of ARS at once.

ARS's file proxy keeps every open share on its own disk until the share is synchronised to
ERDA, and ERDA works through synchronisations slowly. The current system learned to cap both:
the MB held in open shares (in all, of originals, of derivatives) and the number of assets
whose ERDA sync is requested but not confirmed. Pure bookkeeping here; the sync supervisor
reads the current use from the store once per pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class ShareBudget:
    """MB that may still be opened as shares in this pass of the sync."""

    max_total_mb: float
    max_original_mb: float
    max_derivative_mb: float
    used_original_mb: float = 0.0
    used_derivative_mb: float = 0.0

    @classmethod
    def from_open(
        cls,
        shares: Iterable[tuple[float, bool]],
        *,
        max_total_mb: float,
        max_original_mb: float,
        max_derivative_mb: float,
    ) -> ShareBudget:
        """`shares`: (size in MB, is a derivative) of every share open or opening now."""
        budget = cls(max_total_mb, max_original_mb, max_derivative_mb)
        for size_mb, derivative in shares:
            budget._add(size_mb, derivative)
        return budget

    @property
    def used_mb(self) -> float:
        return self.used_original_mb + self.used_derivative_mb

    def admit(self, size_mb: float, *, derivative: bool) -> bool:
        """Take `size_mb` if it fits under every cap. An asset larger than a cap on its own is
        let through when no share at all is open, so that it waits but is never stuck."""
        used_kind = self.used_derivative_mb if derivative else self.used_original_mb
        max_kind = self.max_derivative_mb if derivative else self.max_original_mb
        fits = (
            self.used_mb + size_mb <= self.max_total_mb and used_kind + size_mb <= max_kind
        )
        if not fits and self.used_mb > 0:
            return False
        self._add(size_mb, derivative)
        return True

    def _add(self, size_mb: float, derivative: bool) -> None:
        if derivative:
            self.used_derivative_mb += size_mb
        else:
            self.used_original_mb += size_mb

