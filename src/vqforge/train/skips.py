"""Skipped steps counted on the device, read to the host with the log interval's one read.

A training step decides on the device whether its optimizer steps apply (fused Adam's `found_inf`, a masked restore
of the in-place state, the weight EMA's weight): nothing in it needs the decision on the host. What the host wants
from the decisions (the counters that a checkpoint keeps, the stop rule `train.max_bad_steps`, the log lines about
skipped steps) is tallied here on the device and settled into `Counters` whenever the trainer reads anyway (each log
interval, each save).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .parts import Counters

# the tally's entries, in the order they are read
FIELDS = ("skipped", "disc_skipped", "disc_steps", "bad_in_a_row", "worst_in_a_row", "last_bad", "last_disc_bad")


@dataclass
class Settled:
    """What one read of the tally told the host."""

    steps: tuple[int, int]  # the first and last step (0-based) the read covers
    skipped: int  # generator steps skipped (each also skips that iteration's discriminator step)
    disc_skipped: int  # discriminator steps skipped alone (the generator step went ahead)
    worst_in_a_row: int  # the longest run of skipped generator steps that the read saw (with the run it continued)
    last_bad: int  # the last skipped generator step, -1 if none
    last_disc_bad: int


class SkipTally:
    """Counts since the last settle: 0-dim int64 tensors on the device, updated without host syncs."""

    def __init__(self, device: torch.device, counters: Counters, first_step: int):
        def scalar(v: int) -> torch.Tensor:
            return torch.tensor(v, dtype=torch.long, device=device)

        self.first_step = first_step
        self.steps = 0  # steps recorded (host count)
        self.values = {name: scalar(0) for name in FIELDS}
        self.values["bad_in_a_row"] = scalar(counters.bad_in_a_row)  # a run of skips may go on across reads
        self.values["last_bad"] = scalar(-1)
        self.values["last_disc_bad"] = scalar(-1)

    def record(self, step: int, applied: torch.Tensor, disc_trained: bool, disc_applied: torch.Tensor) -> None:
        """One step's decisions: `applied` (0-dim bool) the generator step, `disc_applied` the discriminator step
        (meaningful when `disc_trained`)."""
        v = self.values
        skip = (~applied).long()
        v["skipped"] = v["skipped"] + skip
        v["bad_in_a_row"] = (v["bad_in_a_row"] + 1) * skip
        v["worst_in_a_row"] = torch.maximum(v["worst_in_a_row"], v["bad_in_a_row"])
        v["last_bad"] = torch.where(applied, v["last_bad"], step)
        if disc_trained:
            alone = applied & ~disc_applied
            v["disc_steps"] = v["disc_steps"] + disc_applied.long()
            v["disc_skipped"] = v["disc_skipped"] + alone.long()
            v["last_disc_bad"] = torch.where(alone, step, v["last_disc_bad"])
        self.steps += 1

    def read_values(self) -> dict[str, torch.Tensor]:
        """The entries to read, under names that do not collide with loss terms."""
        return {f"_tally/{k}": v for k, v in self.values.items()}

    def settle(self, read: dict[str, float], counters: Counters) -> Settled:
        """Fold the read entries (as `read_values` named them) into `counters`."""
        got = {k: int(round(read[f"_tally/{k}"])) for k in FIELDS}
        counters.skipped_steps += got["skipped"] + got["disc_skipped"]
        counters.disc_steps += got["disc_steps"]
        counters.bad_in_a_row = got["bad_in_a_row"]
        return Settled((self.first_step, self.first_step + self.steps - 1), got["skipped"], got["disc_skipped"],
                       got["worst_in_a_row"], got["last_bad"], got["last_disc_bad"])
