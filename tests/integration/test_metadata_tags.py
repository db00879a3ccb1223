"""Job results reach the metadata as a curator needs them: `tags` are merged tag by tag, so
the OCR's words and label box and the barcode reader's device-target note sit beside the
digitiser's own tags, and all of them reach ARS as strings."""

from __future__ import annotations

import json

import pytest

from dasscod.ars.mapping import to_ars_asset
from dasscod.store import Stores
from tests.conftest import make_metadata

G = "asset-tags"
OCR_TAGS = {
    "ocr": "Carex nigra (L.) Reichard\nLeg. A. Hansen",
    "ocr_status": "TEXT_FOUND",
    "ocr_language": "dan+eng+lat",
    "ocr_confidence": 93.4,
    "ocr_label_box": {"image": "a.tif", "box": [2400, 4300, 3800, 5600]},
    "ocr_words": [
        {"text": "Carex", "confidence": 95.1, "image": "a.tif", "box": [2450, 4400, 2700, 4460]}
    ],
}


async def test_job_tags_are_added_beside_the_digitisers_tags(stores: Stores) -> None:
    await stores.metadata.insert(make_metadata(G, tags={"metadataTemplate": "v2_1_0"}))
    assert await stores.metadata.merge(G, {"tags": OCR_TAGS}, updated_by="dasscod:ocr")
    assert await stores.metadata.merge(
        G, {"tags": {"ocr_confidence": 95.0}}, updated_by="dasscod:ocr"
    )
    meta = await stores.metadata.get(G)
    assert meta is not None
    assert meta["tags"] == {**OCR_TAGS, "ocr_confidence": 95.0, "metadataTemplate": "v2_1_0"}

    ars_tags = to_ars_asset(meta, update_user="dasscod").tags
    assert ars_tags is not None
    assert ars_tags["metadataTemplate"] == "v2_1_0"
    assert ars_tags["ocr"] == OCR_TAGS["ocr"]
    assert json.loads(ars_tags["ocr_words"]) == OCR_TAGS["ocr_words"]
    assert json.loads(ars_tags["ocr_label_box"]) == OCR_TAGS["ocr_label_box"]


@pytest.mark.parametrize("tags", [{"a.b": "x"}, {"$set": "x"}, "not an object"])
async def test_tags_that_cannot_be_stored_are_refused(stores: Stores, tags: object) -> None:
    await stores.metadata.insert(make_metadata(G))
    with pytest.raises(ValueError, match="tags"):
        await stores.metadata.merge(G, {"tags": tags}, updated_by="dasscod:ocr")
