"""Device targets recognised by what the image shows: a regular grid of uniform patches.

A colour checker or a grey scale is photographed to calibrate the imaging line; most carry no
printed code. What they have in common, and a herbarium sheet lacks, is a lattice of flat,
rectangular patches of one size, each a different colour or grey, and large in the picture.
On a copy whose long side is `WORK_PX`:

1. pixels where the colour hardly changes (low gradient) form the flat areas; each patch is one
   connected flat area, separated from its neighbours by the edge between them;
2. flat areas that are rectangles (they fill their rotated bounding box) of one size are
   candidates;
3. their centres must sit on a lattice (rows and columns at regular steps, mostly filled);
4. the patches must be of several distinct colours or greys (a Data Matrix's modules are a
   lattice of two), and the grid must span at least `MIN_SPAN` of the image's width or
   height (a small colour bar beside a specimen is not a device target).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dassco_hpc.imaging import optional

if TYPE_CHECKING:
    from PIL.Image import Image

WORK_PX = 800
MIN_PATCHES = 6
#: Distinct colours among the patches: a grey scale has as many as steps, a checker 24.
MIN_DISTINCT = 5
#: The grid's extent along the image's width or height: a calibration shot is of the target.
MIN_SPAN = 0.3


@dataclass(frozen=True)
class Target:
    """A device target found in an image."""

    kind: str  # "colour checker" or "grey scale"
    rows: int
    columns: int
    patches: int
    #: In the full-size image's pixels.
    box: tuple[int, int, int, int]

    def describe(self) -> str:
        grid = f"{self.patches} patches in {self.rows}x{self.columns}"
        return f"{self.kind}, {grid}, at {list(self.box)}"


def _clusters(values: list[float], tolerance: float) -> list[float]:
    """Centres of groups of values closer than `tolerance` to their neighbours."""
    groups: list[list[float]] = []
    for v in sorted(values):
        if groups and v - groups[-1][-1] <= tolerance:
            groups[-1].append(v)
        else:
            groups.append([v])
    return [sum(g) / len(g) for g in groups]


def _regular(centres: list[float], step: float) -> bool:
    """Lattice positions: every gap is a whole number of steps (missing patches allowed)."""
    gaps = [b - a for a, b in itertools.pairwise(centres)]
    return all(abs(g / step - round(g / step)) < 0.25 and round(g / step) >= 1 for g in gaps)


def find_target(img: Image) -> Target | None:
    """The device target in the image, or None."""
    cv2 = optional("cv2", "opencv-python-headless")
    np = optional("numpy", "numpy")
    factor = max(1.0, max(img.size) / WORK_PX)
    small = img.convert("RGB").resize(
        (max(1, round(img.width / factor)), max(1, round(img.height / factor)))
    )
    rgb = cv2.GaussianBlur(np.asarray(small), (3, 3), 0)
    height, width = rgb.shape[:2]
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    gradient = np.zeros((height, width), np.float32)
    for c in range(3):
        gx = cv2.Sobel(lab[..., c], cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(lab[..., c], cv2.CV_32F, 0, 1, ksize=3)
        gradient = np.maximum(gradient, cv2.magnitude(gx, gy))
    flat = (gradient < 24).astype(np.uint8) * 255
    flat = cv2.erode(flat, np.ones((3, 3), np.uint8))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(flat, connectivity=4)
    area_total = float(width * height)
    candidates: list[tuple[float, float, float, float, float, tuple[float, ...]]] = []
    for i in range(1, count):
        area = float(stats[i][4])
        if not (area_total * 0.0004 <= area <= area_total * 0.08):
            continue
        ys, xs = np.nonzero(labels[stats[i][1] : stats[i][1] + stats[i][3],
                                   stats[i][0] : stats[i][0] + stats[i][2]] == i)  # fmt: skip
        points = np.column_stack((xs, ys)).astype(np.float32)
        (_, _), (rw, rh), angle = cv2.minAreaRect(points)
        if rw * rh <= 0 or area / (rw * rh) < 0.85 or max(rw, rh) > 4 * min(rw, rh):
            continue
        colour = tuple(float(v) for v in lab[labels == i].mean(axis=0))
        candidates.append((float(centroids[i][0]), float(centroids[i][1]), rw, rh, angle, colour))
    best: list[Any] = []
    for seed in candidates:
        same = [
            c for c in candidates
            if 0.75 <= c[2] * c[3] / (seed[2] * seed[3]) <= 1.33
        ]  # fmt: skip
        if len(same) > len(best):
            best = same
    if len(best) < MIN_PATCHES:
        return None
    size_x = float(np.median([min(c[2], c[3]) if c[2] < c[3] else c[2] for c in best]))
    size_y = float(np.median([c[3] if c[2] < c[3] else min(c[2], c[3]) for c in best]))
    xs_ = _clusters([c[0] for c in best], 0.35 * size_x)
    ys_ = _clusters([c[1] for c in best], 0.35 * size_y)
    columns, rows = len(xs_), len(ys_)
    step_x = min((b - a for a, b in itertools.pairwise(xs_)), default=size_x)
    step_y = min((b - a for a, b in itertools.pairwise(ys_)), default=size_y)
    if not (_regular(xs_, step_x) and _regular(ys_, step_y)):
        return None
    if len(best) < 0.75 * columns * rows:
        return None
    colours = _clusters_nd([c[5] for c in best], 12.0)
    if colours < MIN_DISTINCT:
        return None
    left = min(c[0] - c[2] / 2 for c in best)
    right = max(c[0] + c[2] / 2 for c in best)
    top = min(c[1] - c[3] / 2 for c in best)
    bottom = max(c[1] + c[3] / 2 for c in best)
    if max((right - left) / width, (bottom - top) / height) < MIN_SPAN:
        return None
    chroma = max(math.hypot(c[5][1] - 128, c[5][2] - 128) for c in best)
    return Target(
        kind="colour checker" if chroma > 20 else "grey scale",
        rows=rows,
        columns=columns,
        patches=len(best),
        box=(
            max(0, round(left * factor)),
            max(0, round(top * factor)),
            min(img.width, round(right * factor)),
            min(img.height, round(bottom * factor)),
        ),
    )


def _clusters_nd(colours: list[tuple[float, ...]], distance: float) -> int:
    """How many distinct colours: greedy grouping by Lab distance."""
    centres: list[tuple[float, ...]] = []
    for colour in colours:
        if all(math.dist(colour, c) > distance for c in centres):
            centres.append(colour)
    return len(centres)
