"""After a load the window freezes what is alive, so full collections skip it; the next load releases it."""

from __future__ import annotations

import gc
import weakref

from tuckerscope.core.runtime.collector import settle_after_load


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_settled_objects_are_frozen_until_the_next_load_releases_them():
    try:
        session = Node()
        alive = weakref.ref(session)
        settle_after_load()
        assert gc.get_freeze_count() > 0
        del session
        gc.collect()
        assert alive() is not None, "a frozen cycle is not collected: full collections skip it"
        settle_after_load()  # the next load: the old session's cycle is collected before freezing again
        assert alive() is None
    finally:
        gc.unfreeze()
