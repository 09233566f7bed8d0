"""The Dask cluster at ``dask.address``: one way to connect, with a bounded wait and an error naming it.

``distributed`` is imported only when a cluster is used, so processes that never use one (serving) do not
load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
