"""Dense perception targets from a scene graph: what a vision encoder should see at every patch.

The image is cut into a ``grid`` x ``grid`` lattice of square cells (one per ViT
patch). Two kinds of target, both exact because the benchmark renders every
object from its scene graph (:mod:`mmreason.data.scenes`):

- **centre cells** (one per object: the cell holding its centre) carry the
  object's colour, shape and size, its centre offset inside the cell (0..1) and
  its box width and height as a fraction of the image; every other cell is
  "no centre". Decoding the centre cells gives the object list, hence counts.
- **cover** (every cell): the colour and shape of the object covering most of
  the cell's pixels, or background — dense supervision that teaches every
  patch token what lies under it, not only the centre cells.

Class indices: colours, shapes and sizes in the order of ``scenes.COLOURS``,
``scenes.SHAPES`` and ``scenes.SIZES``; ``BACKGROUND`` (-1 in centre-cell
attribute maps: ignored; the last class in cover maps).
"""

from __future__ import annotations

import numpy as np

from mmreason.data import scenes

COLOUR_NAMES = tuple(scenes.COLOURS)
SHAPE_NAMES = scenes.SHAPES
SIZE_NAMES = scenes.SIZES
IGNORE = -1
# A cell is covered by an object only if the object fills at least this share of it.
MIN_COVER = 0.25


def _object_index_map(scene: list[dict], image_size: int) -> np.ndarray:
    """(S, S) int map: the index of the object drawn at each pixel, -1 for background."""
    labels = np.full((image_size, image_size), -1, np.int64)
    for idx, obj in enumerate(scene):
        x0, y0, x1, y1 = obj["box"]
        mask = scenes.sprite(obj["shape"], scenes.side_pixels(obj["size"], image_size))
        if mask.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"object {idx} has box {obj['box']} but its {obj['size']} {obj['shape']} sprite is "
                             f"{mask.shape[1]}x{mask.shape[0]} px; expected the image_size ({image_size}) "
                             "the scene was laid out for")
        labels[y0:y1, x0:x1][mask] = idx
    return labels


def dense_targets(scene: list[dict], image_size: int, grid: int) -> dict[str, np.ndarray]:
    """Per-cell targets of one scene; every array is (grid, grid) or (grid, grid, 2).

    ``centre`` (0/1), ``colour``/``shape``/``size`` (class index at centre cells, IGNORE elsewhere),
    ``offset`` (centre position inside its cell, 0..1, x then y), ``extent`` (box width and height
    over the image side), ``cover_colour``/``cover_shape`` (class index, background = number of classes).
    """
    if image_size % grid:
        raise ValueError(f"image_size {image_size} is not a multiple of the grid {grid}; expected the "
                         "encoder's token grid to tile the image exactly")
    cell = image_size // grid
    out = {
        "centre": np.zeros((grid, grid), np.float32),
        "colour": np.full((grid, grid), IGNORE, np.int64),
        "shape": np.full((grid, grid), IGNORE, np.int64),
        "size": np.full((grid, grid), IGNORE, np.int64),
        "offset": np.zeros((grid, grid, 2), np.float32),
        "extent": np.zeros((grid, grid, 2), np.float32),
    }
    for obj in scene:
        cx, cy = obj["center"]
        col, row = min(grid - 1, int(cx // cell)), min(grid - 1, int(cy // cell))
        out["centre"][row, col] = 1.0
        out["colour"][row, col] = COLOUR_NAMES.index(obj["colour"])
        out["shape"][row, col] = SHAPE_NAMES.index(obj["shape"])
        out["size"][row, col] = SIZE_NAMES.index(obj["size"])
        out["offset"][row, col] = (cx / cell - col, cy / cell - row)
        x0, y0, x1, y1 = obj["box"]
        out["extent"][row, col] = ((x1 - x0) / image_size, (y1 - y0) / image_size)
    labels = _object_index_map(scene, image_size).reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
    labels = labels.reshape(grid, grid, cell * cell)
    colours = np.array([COLOUR_NAMES.index(o["colour"]) for o in scene] + [len(COLOUR_NAMES)])
    shapes = np.array([SHAPE_NAMES.index(o["shape"]) for o in scene] + [len(SHAPE_NAMES)])
    counts = np.stack([(labels == i).sum(-1) for i in range(len(scene))], -1)  # (grid, grid, objects)
    best = counts.argmax(-1)
    covered = counts.max(-1) >= MIN_COVER * cell * cell
    owner = np.where(covered, best, len(scene))  # index len(scene) = background
    out["cover_colour"], out["cover_shape"] = colours[owner], shapes[owner]
    return out


def batch_targets(scenes_: list[list[dict]], image_size: int, grid: int) -> dict[str, np.ndarray]:
    """:func:`dense_targets` of several scenes stacked on a leading batch axis."""
    each = [dense_targets(s, image_size, grid) for s in scenes_]
    return {k: np.stack([t[k] for t in each]) for k in each[0]}


def scenes_of(batch: dict) -> tuple[list[list[dict]], int]:
    """The scene graphs of a batch's records and the image size they were laid out at. That size
    must be the decoded image's own (``orig_sizes``), so a record cannot make the targets allocate
    more than its image, whose size the reader already bounds."""
    records = batch["records"]
    missing = [i for i, r in enumerate(records) if "scene" not in r.meta]
    if missing:
        raise ValueError(f"record {missing[0]} of the batch has no meta.scene; perception pretraining needs "
                         "synthetic data (the fresh-scene stream or shards from `mmreason data synth`)")
    for i, (record, size) in enumerate(zip(records, batch["orig_sizes"])):
        if list(record.meta.get("image_size", [])) != [size[0], size[0]] or size[0] != size[1]:
            raise ValueError(f"record {i} of the batch has meta.image_size {record.meta.get('image_size')!r}; "
                             f"expected its square image's size [{size[0]}, {size[1]}]")
    sizes = {size[0] for size in batch["orig_sizes"]}
    if len(sizes) != 1:
        raise ValueError(f"records of one batch must share one image size; got {sorted(sizes)}")
    return [r.meta["scene"] for r in records], sizes.pop()
