"""core.cluster: a dask.address that is not an address is a configuration error naming the setting."""

from __future__ import annotations

import pytest

from core.cluster import ClusterUnreachableError, connect


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1"])
def test_a_malformed_dask_address_is_an_error_naming_the_setting(address: str) -> None:
    with pytest.raises(ClusterUnreachableError, match=rf"dask.address='{address}' is not a Dask scheduler address"):
        connect(address, 1)
