"""The Dask cluster at ``dask.address``: one way to connect, with a bounded wait and an error naming it.

``distributed`` is imported only when a cluster is used, so processes that never use one (serving) do not
load it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

CONNECT_TIMEOUT_S = 30.0


class ClusterUnreachableError(ConnectionError):
    """The scheduler at dask.address did not answer in time."""


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """A client of the scheduler at ``address``; ClusterUnreachableError after ``timeout`` seconds."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except ValueError as exc:  # not an address at all ("missing port number in address ...")
        raise ClusterUnreachableError(
            f"dask.address={address!r} is not a Dask scheduler address (tcp://host:port): {exc}"
        ) from exc
    except OSError as exc:  # distributed raises OSError (TimeoutError among them) for a scheduler it cannot reach
        raise ClusterUnreachableError(
            f"cannot reach the Dask scheduler at dask.address={address} within {timeout:.0f} s: {exc}"
        ) from exc


def map_tasks(client: Client, fn: Callable[..., Any], items: Iterable[Any], **kwargs: Any) -> list[Any]:
    """``fn(item, **kwargs)`` for every item, one task each, the results in the items' order. ``pure=False``:
    a task reads data where it points, which can change between calls. The tasks are cancelled once gathered,
    or when one fails (none keeps running for a caller that gave up)."""
    futures = client.map(fn, list(items), pure=False, **kwargs)
    try:
        return list(client.gather(futures))
    finally:
        client.cancel(futures)
