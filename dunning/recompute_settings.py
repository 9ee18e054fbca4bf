"""Settings of recompute and the drift sweep.

    [recompute]
    in_flight_window_seconds = 1800   # a payment started this recently defers every action
    sweep_interval_seconds = 300      # the drift-sweep Schedule's interval
    sweep_page = 100                  # subscriptions read per page of the sweep
    sweep_batch = 10                  # subscriptions reconciled per activity
    sweep_rate_per_second = 5         # provider reads per second, at most (the provider's API limit)
    sweep_recent_hours = 24           # also sweep subscriptions changed this recently
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field


class RecomputeSettings(BaseModel):
    model_config = {"extra": "forbid"}

    in_flight_window_seconds: float = Field(default=1800, gt=0)
    sweep_interval_seconds: float = Field(default=300, ge=1)
    sweep_page: int = Field(default=100, ge=1, le=1000)
    sweep_batch: int = Field(default=10, ge=1, le=100)
    sweep_rate_per_second: float = Field(default=5, gt=0)
    sweep_recent_hours: float = Field(default=24, ge=0)

    @property
    def in_flight_window(self) -> timedelta:
        return timedelta(seconds=self.in_flight_window_seconds)
