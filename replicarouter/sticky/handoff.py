"""Read-your-writes carried into background jobs: capture the request's position, read after it in the job."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from replicarouter.conf import settings
from replicarouter.health import store as health
from replicarouter.routing import context

from . import policy as sticky
from .store import positions_to_record


def capture_position() -> dict[str, Any]:
    """Return a token to hand to a background job so that its reads see this request's writes.

    Call it after the writes (typically right before enqueueing); pass the token to the job, which reads
    under ``read_after(token)``. It holds WAL positions only: safe to serialise (JSON) into a task.
    """
    state = context.current_state()
    mode = settings.STICKY
    wrote = set(state.wrote) if state is not None else set()
    if mode == "off" or not wrote:
        return {"mode": mode, "positions": {}}
    return {"mode": mode, "positions": positions_to_record(wrote, mode)}


@contextlib.contextmanager
def read_after(token: Mapping[str, Any], wait: float = 0.0) -> Iterator[None]:
    """Run the block in a fresh routing context whose reads see the writes captured in ``token``.

    With ``wait`` > 0, first wait up to that many seconds for a replica to replay the position (reads
    then go to it); after that, reads the replicas cannot serve yet go to the primary.
    """
    positions = {str(k): int(v) for k, v in dict(token.get("positions") or {}).items()}
    mode = str(token.get("mode") or settings.STICKY)
    with context.request_context() as state:
        state.sticky = sticky.StickyState(mode, known=positions)
        if wait > 0 and mode == "lsn":
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not all(
                sticky.caught_up(health.usable_replicas(c), health.positions(c), p)
                for c, p in positions.items()
            ):
                time.sleep(0.02)
        yield
