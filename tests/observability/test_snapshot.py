"""The background snapshot behind the store gauges: what it counts, and what it leaves out."""

from __future__ import annotations

from pathlib import Path

from dasscod.devstack.assets import add_asset
from dasscod.store import Stores
from dasscod.store.stats import take_snapshot


async def test_the_ars_backlog_is_counted_only_where_ars_is_configured(
    stores: Stores, tmp_path: Path
) -> None:
    for n in range(3):
        await add_asset(stores, tmp_path, f"snap-{n}")
    with_ars = await take_snapshot(stores.track.collection)
    without = await take_snapshot(stores.track.collection, ars=False)
    assert with_ars.ars_backlog["is_in_ars=NO"] == 3
    assert without.ars_backlog == {}
    # The asset counts do not depend on it.
    assert with_ars.assets == without.assets
    assert sum(without.assets.values()) == 3
