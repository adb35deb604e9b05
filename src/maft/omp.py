"""Idle OpenMP threads sleep instead of spinning in maft's command lines (``OMP_WAIT_POLICY``).

Under OpenMP's default policy a thread that finishes its share of an operator spins for
milliseconds before it sleeps. On a machine whose cores are shared (other processes, other
containers), the scheduler may put torch's OpenMP worker on the core of the thread it waits
for, typically after a single-threaded stretch (building a model, loading a checkpoint); then
each parallel operator costs a scheduler time slice until the two are moved apart. On the 2
shared cores of the development machine this made whichever evaluation rows ran then 3-20x
slower (``scripts/bench_eval_rows.py``): the frozen-CLIP rows, right after the MaftTask is
built, far more often than the MAFT row, right after training. ``PASSIVE`` puts idle threads
to sleep at once. Every operator splits its work the same way, so no number changes.

OpenMP reads the policy once, when torch loads it: the command lines call :func:`passive_wait`
before anything imports torch. A policy already in the environment is kept
(``OMP_WAIT_POLICY=ACTIVE`` restores spinning, e.g. on cores reserved for one run).
"""

from __future__ import annotations

import os
import sys

POLICY = "PASSIVE"


def passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set or torch is loaded; True when set."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = POLICY
    return True


__all__ = ["POLICY", "passive_wait"]
