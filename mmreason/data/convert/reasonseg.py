"""LISA ReasonSeg (``name.jpg`` + labelme-style ``name.json`` polygons) to ``seg`` shards.

The mask is 0 (background) / 255 (target). Polygons are painted as LISA does,
largest first, so a smaller "ignore" polygon inside a target removes those
pixels from the target and a smaller target inside an ignore region stays.
The ignore polygons themselves go to ``meta["ignore_polygons"]``: evaluation
ignores the pixels inside them where the mask is 0, which reproduces LISA's
ignore label. "flag" shapes are deprecated annotations and are dropped; any
other label counts as target, as in LISA.

A polygon reaching over the image border is clipped to the image, as LISA's
painting clips it; one with no area inside the image, a sample without a
target polygon, or one whose target pixels are all ignored is an error naming
the file: such annotations were drawn on another picture or are broken.

The text answer is empty: the answer of a segmentation sample is its mask,
and each model family adds its own segmentation token to the target text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw

from ..schema import is_finite_number
from .common import ConversionError, ShardSink, UnusableFile, load_image, progress, read_json

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
STEP_TEXT = "the target region"
TARGET, IGNORE = 1, 2  # values in the label map painted before the 0/255 mask is cut from it


def pair_files(annotations: Path, images: Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """(name, image, json) for every name with both files, and the files lacking a partner."""
    jsons = {path.stem: path for path in sorted(annotations.glob("*.json"))}
    pictures: dict[str, Path] = {}
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in pictures:
            raise ConversionError(f"{path}: two images named {path.stem!r} ({pictures[path.stem].name}, "
                                  f"{path.name}); expected one image per annotation")
        pictures[path.stem] = path
    paired = [(name, pictures[name], jsons[name]) for name in sorted(pictures.keys() & jsons.keys())]
    unpaired = sorted([pictures[n] for n in pictures.keys() - jsons.keys()]
                      + [jsons[n] for n in jsons.keys() - pictures.keys()])
    return paired, unpaired


def read_questions(annotation: dict, where: str) -> list[str]:
    texts = annotation.get("text")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ConversionError(f"{where}: 'text' must be a non-empty list of question strings, got {texts!r}")
    return [t.strip() for t in texts]


def read_shapes(annotation: dict, size: tuple[int, int], where: str) -> list[tuple[int, list[list[float]]]]:
    """(TARGET or IGNORE, polygon) for every shape that is not a "flag"; each must cover part of the image."""
    shapes = annotation.get("shapes", [])
    if not isinstance(shapes, list):
        raise ConversionError(f"{where}: 'shapes' must be a list of polygons, got {shapes!r}")
    polygons = []
    for i, shape in enumerate(shapes):
        label = str(shape.get("label", "")).lower() if isinstance(shape, dict) else ""
        if label == "flag":
            continue
        points = shape.get("points") if isinstance(shape, dict) else None
        if not isinstance(points, list) or len(points) < 3 or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(is_finite_number(v) for v in p) for p in points
        ):
            raise ConversionError(f"{where}: shapes[{i}] must be a polygon with 'points' [[x, y], ...] (at least "
                                  f"3, finite numbers), got {str(shape)[:80]!r}")
        points = [[float(x), float(y)] for x, y in points]
        if polygon_area(clip_to_image(points, size)) == 0:
            raise ConversionError(f"{where}: shapes[{i}] ({label!r}) has no area inside the {size[0]}x{size[1]} "
                                  f"image, points {str(points)[:80]}; expected a polygon over the picture (was it "
                                  f"drawn on another size of this image?)")
        polygons.append((IGNORE if "ignore" in label else TARGET, points))
    return polygons


def polygon_area(points: list[list[float]]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def clip_to_image(points: list[list[float]], size: tuple[int, int]) -> list[list[float]]:
    """The part of a polygon inside the image rectangle (Sutherland-Hodgman), empty when none is."""
    for axis, bound, side in ((0, 0.0, 1), (0, float(size[0]), -1), (1, 0.0, 1), (1, float(size[1]), -1)):
        clipped = []
        for previous, current in zip(points[-1:] + points[:-1], points):
            previous_in, current_in = (previous[axis] - bound) * side >= 0, (current[axis] - bound) * side >= 0
            if previous_in != current_in:
                t = (bound - previous[axis]) / (current[axis] - previous[axis])
                crossing = [previous[0] + t * (current[0] - previous[0]), previous[1] + t * (current[1] - previous[1])]
                crossing[axis] = bound
                clipped.append(crossing)
            if current_in:
                clipped.append(current)
        points = clipped
    return points


def target_mask(size: tuple[int, int], polygons: list[tuple[int, list[list[float]]]]) -> Image.Image:
    """Paint the polygons largest first (outline included) and keep the target pixels as 255."""
    labels = Image.new("L", size, 0)
    draw = ImageDraw.Draw(labels)
    for value, points in sorted(polygons, key=lambda p: -polygon_area(p[1])):
        draw.polygon([tuple(p) for p in points], fill=value, outline=value)
    return labels.point(lambda v: 255 if v == TARGET else 0)


def target_box(size: tuple[int, int], polygons: list[tuple[int, list[list[float]]]]) -> list[float]:
    """The box around the parts of the target polygons inside the image."""
    points = [p for value, poly in polygons if value == TARGET for p in clip_to_image(poly, size)]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def convert_reasonseg(src: Path, out: Path, images: Path, split: str, samples_per_shard: int,
                      strict: bool = False) -> dict:
    """Convert the annotations in folder ``src`` with their same-named pictures in ``images``."""
    for folder in (src, images):
        if not folder.is_dir():
            raise ConversionError(f"ReasonSeg folder {folder} not found; expected a folder of name.jpg + name.json")
    paired, unpaired = pair_files(src, images)
    with ShardSink(out, samples_per_shard, strict) as sink:
        for path in unpaired:
            sink.skip("unpaired", f"{path} (no image/annotation of the same name)", level=logging.WARNING)
        for name, image_path, json_path in progress(paired, "reasonseg"):
            where = f"ReasonSeg sample {name!r} ({json_path})"
            try:  # the mask is painted from the annotation, so an unreadable one is an unusable mask
                annotation = read_json(json_path, "ReasonSeg annotation")
                image, size = load_image(image_path, where, upright=True)
            except UnusableFile as err:
                sink.skip_unusable(split, where, err)
                continue
            if not isinstance(annotation, dict):
                raise ConversionError(f"{where}: expected an object with 'text', 'is_sentence' and 'shapes'")
            questions = read_questions(annotation, where)
            polygons = read_shapes(annotation, size, where)
            if not any(value == TARGET for value, _ in polygons):
                raise ConversionError(f"{where}: no target polygon; expected at least one shape labelled other "
                                      f"than 'flag' or 'ignore'")
            mask = target_mask(size, polygons)
            if mask.getbbox() is None:
                raise ConversionError(f"{where}: the ignore polygons cover every target pixel; expected a target "
                                      f"region left in the mask")
            record = {
                "question": questions[0], "answer": "", "task": "seg", "rationale": None,
                "steps": [{"text": STEP_TEXT, "box": target_box(size, polygons)}],
                "meta": {"source": "reasonseg", "name": name, "questions": questions[1:],
                         "is_sentence": bool(annotation.get("is_sentence", False)),
                         "ignore_polygons": [poly for value, poly in polygons if value == IGNORE]},
            }
            sink.write(split, name, image, size, record, where, mask)
        return sink.finish()
