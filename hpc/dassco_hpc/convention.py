"""What the payload of a barcode on a DaSSCo image means (the "payload convention").

The barcode reader sees only strings; this module turns them into the listener's barcode
result (`barcodes`, `asset_subject`, `MSO`, `MOS`, `label`, `disposable`). It is kept apart
from the image code so that the rules can be tested, and changed, without images or
third-party packages. Each kind of payload is one regular expression, overridable from the
environment because the printed codes belong to the digitisation line, not to this code:

- specimen barcode, `DASSCO_BARCODE_PATTERN`, default `^[A-Z]{2,10}-?[0-9]{4,12}$`,
  e.g. `NHMD-123456`;
- device (colour) target, `DASSCO_TARGET_PATTERN`, default
  `^DEVICE-TARGET:(?P<id>[A-Za-z0-9._-]+)$`, e.g. `DEVICE-TARGET:CT-0007`;
- MOS disposable, `DASSCO_MOS_PATTERN`, default
  `^MOS:(?P<disposable>[A-Za-z0-9._-]+):(?P<role>label|specimen)$`, e.g. `MOS:D000042:label`
  on the label's image and `MOS:D000042:specimen` on the specimen's sheet.

The target pattern may name a group `id`; the MOS pattern must name `disposable` and `role`
(`label` or `specimen`). Rules, in order:

1. a device target payload anywhere → `asset_subject = "device target"` (the daemon cancels
   the rest of the pipeline); specimen barcodes are still listed;
2. an MOS payload → `MOS = true`, `disposable` = its id; role `label` → `asset_subject =
   "label"`, `label = true`; role `specimen` → `"specimen"`. Two different disposable ids, or
   both roles, on one image are contradictory: `ConventionError`;
3. otherwise `"specimen"`;
4. `barcodes` = the distinct specimen barcodes in reading order; more than one → `MSO = true`
   (several specimens on one sheet);
5. payloads matching no pattern are returned in `unknown` (logged, not reported): a stray QR
   code on a ruler must not become a specimen number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BARCODE_PATTERN = r"^[A-Z]{2,10}-?[0-9]{4,12}$"
DEFAULT_TARGET_PATTERN = r"^DEVICE-TARGET:(?P<id>[A-Za-z0-9._-]+)$"
DEFAULT_MOS_PATTERN = r"^MOS:(?P<disposable>[A-Za-z0-9._-]+):(?P<role>label|specimen)$"

SPECIMEN, LABEL, DEVICE_TARGET = "specimen", "label", "device target"


class ConventionError(ValueError):
    """A payload set that cannot describe one real image (or a bad pattern setting)."""


def _compile(env: Mapping[str, str], name: str, default: str, groups: set[str]) -> re.Pattern[str]:
    raw = env.get(name, "").strip() or default
    try:
        pattern = re.compile(raw)
    except re.error as exc:
        raise ConventionError(f"{name} is not a regular expression ({exc}): {raw!r}") from None
    missing = groups - set(pattern.groupindex)
    if missing:
        raise ConventionError(f"{name} must name the group(s) {', '.join(sorted(missing))}")
    return pattern


@dataclass(frozen=True)
class Convention:
    barcode: re.Pattern[str] = field(default_factory=lambda: re.compile(DEFAULT_BARCODE_PATTERN))
    target: re.Pattern[str] = field(default_factory=lambda: re.compile(DEFAULT_TARGET_PATTERN))
    mos: re.Pattern[str] = field(default_factory=lambda: re.compile(DEFAULT_MOS_PATTERN))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Convention:
        return cls(
            barcode=_compile(env, "DASSCO_BARCODE_PATTERN", DEFAULT_BARCODE_PATTERN, set()),
            target=_compile(env, "DASSCO_TARGET_PATTERN", DEFAULT_TARGET_PATTERN, set()),
            mos=_compile(env, "DASSCO_MOS_PATTERN", DEFAULT_MOS_PATTERN, {"disposable", "role"}),
        )

    def knows(self, payload: str) -> bool:
        """Whether the payload is one of the convention's (specimen, target or MOS)."""
        text = payload.strip()
        return any(p.fullmatch(text) for p in (self.barcode, self.target, self.mos))

    def classify(self, payloads: Iterable[str]) -> Classified:
        """The barcode result for the payloads read on one asset, in reading order."""
        barcodes: list[str] = []
        targets: list[str] = []
        disposables: set[str] = set()
        roles: set[str] = set()
        unknown: list[str] = []
        for raw in payloads:
            text = raw.strip()
            if (m := self.target.fullmatch(text)) is not None:
                targets.append(m.groupdict().get("id") or text)
            elif (m := self.mos.fullmatch(text)) is not None:
                disposables.add(m.group("disposable"))
                roles.add(m.group("role"))
            elif self.barcode.fullmatch(text) is not None:
                if text not in barcodes:
                    barcodes.append(text)
            elif text not in unknown:
                unknown.append(text)
        if len(disposables) > 1:
            raise ConventionError(
                f"several disposable ids on one image: {', '.join(sorted(disposables))}"
            )
        if len(roles) > 1:
            raise ConventionError("one disposable id marks this image both label and specimen")
        is_label = roles == {"label"}
        subject = DEVICE_TARGET if targets else LABEL if is_label else SPECIMEN
        result: dict[str, Any] = {
            "barcodes": barcodes,
            "asset_subject": subject,
            "MSO": len(barcodes) > 1,
            "MOS": bool(disposables),
            "label": is_label,
            "disposable": next(iter(disposables), None),
        }
        return Classified(result=result, targets=targets, unknown=unknown)


@dataclass(frozen=True)
class Classified:
    #: The listener's BarcodeResult as a dict.
    result: dict[str, Any]
    #: Device target ids found (for the log).
    targets: list[str]
    #: Payloads that match no pattern (for the log).
    unknown: list[str]
