"""The garbage collector tuned for a server that allocates per request and makes no cycles.

A request's objects are freed by reference counting when it ends (none are cyclic garbage:
a c=100 load run with the collector off left nothing for it), yet CPython's collector runs a
young collection every 700 net allocations (the objects of the requests in flight count)
and, now and then, a full one through every object the imports made: pydantic's schemas,
structlog, prometheus_client, the actor tree (about 100,000 objects). That is work that
finds nothing, on the request path.

So, once the gateway is up: the start-up objects are frozen (moved where no collection
looks), and the young generation is collected every `YOUNG_THRESHOLD` allocations instead of
700. The collector still runs: the cycles an error path can make (an exception holding its
frame) are collected, later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 20)  # young collections per middle one; middle per full one


def settle_heap() -> None:
    """Freeze what start-up made and raise the young generation's threshold (once the
    server is up, before it serves)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
