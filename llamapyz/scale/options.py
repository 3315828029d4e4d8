"""How many replicas, and where: the --ray options as one value, checked without Ray."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleOptions:
    replicas: int = 1  # fixed count (when not autoscaling)
    min_replicas: int | None = None  # --autoscale MIN..MAX
    max_replicas: int | None = None
    address: str | None = None  # --ray-address: "auto", "ray://host:10001"; None: the local one, else a new one
    prefix_routing: bool = True  # False: Ray's usual balancing, ignoring prefixes (for comparison)
    cpu_tier: str | None = None  # --cpu-tier, for the replicas (each picks its own CPU's best tier otherwise)

    @property
    def autoscale(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.autoscale else self.replicas


def parse_autoscale(text: str) -> tuple[int, int]:
    """`MIN..MAX` (e.g. `1..4`) as (MIN, MAX); ValueError naming what is wrong."""
    match = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not MIN..MAX (e.g. 1..4)")
    low, high = int(match[1]), int(match[2])
    if high < 1 or low > high:
        raise ValueError(f"{text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high
