"""Idle OpenMP threads spin briefly, then sleep, in maft's command lines (``GOMP_SPINCOUNT``).

torch's Linux wheels run their operators on GNU OpenMP (libgomp). A worker thread that finishes
its share of an operator waits for the next one: it spins for ``GOMP_SPINCOUNT`` busy-loop turns,
then sleeps until woken. The default count (300 000, about 3 ms by libgomp's own estimate) let a
worker spin on the core of the thread it waits for after a single-threaded stretch (building a
model, loading a checkpoint); on the 2 shared cores of the development machine this once made the
world's frozen evaluation rows 3-20x slower. ``OMP_WAIT_POLICY=PASSIVE`` (no spin at all) cured
that but made every small operator pay a sleep and a wake-up: the world's training steps took
1.5-2x as long (``scripts/bench_omp_wait.py`` runs the settings side by side; losses equal bit
for bit). A count of 10 000 (about 0.1 ms) bridges the gaps between consecutive operators as
the default does and bounds what a misplaced spin can cost. Every operator splits
its work the same way under any count, so no number changes.

OpenMP reads these settings once, when torch loads it: the command lines call
:func:`bounded_spin` before anything imports torch. A user's ``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY`` is kept (``OMP_WAIT_POLICY=PASSIVE`` restores the no-spin behaviour, ``ACTIVE``
spins for minutes, e.g. on cores reserved for one run). Other OpenMP runtimes (LLVM's libomp on
macOS) ignore ``GOMP_SPINCOUNT`` and keep their own defaults.
"""

from __future__ import annotations

import os
import sys

#: Busy-wait turns of an idle libgomp thread before it sleeps (about 0.1 ms).
SPINCOUNT = "10000"


def bounded_spin() -> bool:
    """Set ``GOMP_SPINCOUNT`` unless the user chose a wait or torch is loaded; True when set."""
    chosen = "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ
    if chosen or "torch" in sys.modules:
        return False
    os.environ["GOMP_SPINCOUNT"] = SPINCOUNT
    return True


__all__ = ["SPINCOUNT", "bounded_spin"]
