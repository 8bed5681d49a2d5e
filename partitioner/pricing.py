"""The two profiles and the cost model of one model: what ``plan`` and ``split --candidates auto`` price splits with.

A side without a profile file is profiled on this machine (the edge with one
thread, the cloud with every core), and a note says so. A bundle keeps the
profiles it was priced with under ``profiles/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from partitioner.costmodel import CostModel
from partitioner.formats import ModelSource
from partitioner.profile import Profile, profile_source

PROFILE_RUNS = 10  # timed runs when a side is profiled on the spot
PROFILES_DIR = "profiles"
ProfileArg = str | Path | Profile | None


@dataclass
class Pricing:
    cost_model: CostModel
    profiles: dict[str, Profile]  # "edge", "cloud"
    measured_here: dict[str, bool]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        source: ModelSource,
        edge: ProfileArg,
        cloud: ProfileArg,
        codec: str,
        log: Callable[[str], None],
        cloud_threads: int | None = None,
    ) -> Pricing:
        """Read (or measure) both profiles, check they belong to ``source``, and measure the codec."""
        notes: list[str] = []
        profiles: dict[str, Profile] = {}
        measured: dict[str, bool] = {}
        for side, given, threads in (("edge", edge, 1), ("cloud", cloud, cloud_threads or os.cpu_count() or 1)):
            measured[side] = given is None
            if isinstance(given, Profile):
                profiles[side] = given
            elif given is not None:
                profiles[side] = Profile.load(given)
            else:
                notes.append(f"no --{side}-profile: profiled this machine as the {side} "
                             f"({threads} thread(s), {PROFILE_RUNS} runs)")
                log(f"profiling this machine as the {side} ({threads} thread(s))")
                profiles[side] = profile_source(source, threads, PROFILE_RUNS, 3, log)
        cost_model = CostModel.build(source, profiles["edge"], profiles["cloud"], codec, log)
        if cost_model.transfers.unsendable:
            names = ", ".join(sorted(cost_model.transfers.unsendable)[:3])
            notes.append(f"{len(cost_model.transfers.unsendable)} tensor(s) cannot be sent with {codec} ({names}); "
                         "no split sends them")
        return cls(cost_model, profiles, measured, notes)

    def save_profiles(self, root: Path) -> tuple[str, ...]:
        """Write both profiles under ``root/profiles``; their paths relative to ``root``."""
        (root / PROFILES_DIR).mkdir(exist_ok=True)
        written = []
        for side, p in self.profiles.items():
            rel = f"{PROFILES_DIR}/{side}.json"
            p.save(root / rel)
            written.append(rel)
        return tuple(written)
