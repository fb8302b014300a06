"""Keep Python's cyclic garbage collector off the long-lived objects of a loaded session.

A full (generation 2) collection walks every tracked object (the experts' torch modules, the Tucker factors,
the views' pyqtgraph items) and holds the GIL while it does. In the demo window it took 0.31 s, the longest
event-loop stall of a slider drag. Those objects live until the next load, so scanning them again finds
nothing. So after each load the window collects once and freezes everything alive (``gc.freeze``), and
later full collections walk only what was made since.
"""

from __future__ import annotations

import gc


def settle_after_load() -> None:
    """Collect once, then exempt every object alive now from later collections (until the next load)."""
    gc.unfreeze()  # the previous session's objects become collectable again
    gc.collect()
    gc.freeze()
