"""The metadata document → ARS `Asset` body (used for create and update) and the
`MinimalAsset` that names an asset to the file proxy.

Field names differ between the two (the metadata keeps the current system's names); this is the
only place that knows how they correspond. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dasscod.ars.models import Asset, MinimalAsset, Specimen

#: ARS requires a status; a new asset is a working copy until curators say otherwise.
DEFAULT_STATUS = "WORKING_COPY"


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        return str(value[0]) if value else None
    return str(value) if value else None


def _tag(value: Any) -> str:
    """ARS tags are strings; structured values travel as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def _date(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def to_ars_asset(metadata: Mapping[str, Any], *, update_user: str) -> Asset:
    """The full `Asset` body for `metadata` (a stored metadata document), as `update_user`
    from the asset's own pipeline and workstation."""
    guid = str(metadata["asset_guid"])
    institution = str(metadata.get("institution") or "")
    collection = str(metadata.get("collection") or "")
    preparation = _first(metadata.get("preparation_type"))
    specimen_pids = metadata.get("specimen_pid") or []
    if isinstance(specimen_pids, str):
        specimen_pids = [specimen_pids]
    barcodes = [str(b) for b in metadata.get("barcode") or []]
    specimens = [
        Specimen(
            institution=institution,
            collection=collection,
            barcode=barcode,
            specimen_pid=str(specimen_pids[i]) if i < len(specimen_pids) else None,
            preparation_type=preparation,
        )
        for i, barcode in enumerate(barcodes)
    ]
    file_format = str(metadata.get("file_format") or "")
    return Asset(
        asset_guid=guid,
        # ARS requires a pid at creation; until one is minted the guid stands in for it.
        asset_pid=str(metadata.get("asset_pid") or guid),
        parent_guid=metadata.get("parent_guid") or None,
        status=str(metadata.get("status") or DEFAULT_STATUS),
        institution=institution,
        collection=collection,
        pipeline=str(metadata.get("pipeline_name") or ""),
        workstation=str(metadata.get("workstation_name") or ""),
        digitiser=str(metadata.get("digitiser") or "") or None,
        date_asset_taken=_date(metadata.get("date_asset_taken")),
        date_metadata_taken=_date(metadata.get("date_metadata_created")),
        payload_type=_first(metadata.get("payload_type")),
        file_formats=[file_format.upper()] if file_format else [],
        funding=str(metadata.get("funding") or "") or None,
        subject=str(metadata.get("asset_subject") or "") or None,
        multi_specimen=bool(metadata.get("multispecimen", False)),
        specimens=specimens,
        restricted_access=[str(r) for r in metadata.get("restricted_access") or []],
        tags={str(k): _tag(v) for k, v in (metadata.get("tags") or {}).items()},
        audited=bool(metadata.get("audited", False)),
        update_user=update_user,
    )


def to_minimal_asset(
    metadata: Mapping[str, Any], *, asset_guid: str, parent_guid: str | None
) -> MinimalAsset:
    """The asset as the file proxy's share calls name it."""
    return MinimalAsset(
        asset_guid=asset_guid,
        parent_guid=parent_guid,
        institution=str(metadata["institution"]),
        collection=str(metadata["collection"]),
    )
