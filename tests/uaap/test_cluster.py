"""Attaching to a Ray cluster that is not there fails fast, with what to do."""

from __future__ import annotations

import time

import pytest

from uaap.cluster import check_reachable
from uaap.errors import ConfigError
from uaap.processes import free_port


def test_an_address_where_nothing_listens_fails_within_the_bound() -> None:
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Ray cluster answers at {address}.*ray start --head"):
        check_reachable(address, within=2.0)
    assert time.monotonic() - t0 < 6


def test_malformed_addresses_are_refused_and_ray_lookups_left_alone() -> None:
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        check_reachable("10.0.0.2:abc", within=0.1)
    check_reachable("auto")  # Ray looks the local cluster up itself
