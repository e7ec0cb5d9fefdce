"""LISA ReasonSeg (``name.jpg`` + labelme-style ``name.json`` polygons) to ``seg`` shards.

The mask is 0 (background) / 255 (target). Polygons are painted as LISA does,
largest first, so a smaller "ignore" polygon inside a target removes those
pixels from the target and a smaller target inside an ignore region stays.
The ignore polygons themselves go to ``meta["ignore_polygons"]``: evaluation
ignores the pixels inside them where the mask is 0, which reproduces LISA's
ignore label. "flag" shapes are deprecated annotations and are dropped; any
other label counts as target, as in LISA.

The text answer is empty: the answer of a segmentation sample is its mask,
and each model family adds its own segmentation token to the target text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw

from .common import ConversionError, ShardSink, load_image, progress, read_json

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


def read_shapes(annotation: dict, where: str) -> list[tuple[int, list[list[float]]]]:
    """(TARGET or IGNORE, polygon) for every shape that is not a "flag"."""
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
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in points
        ):
            raise ConversionError(f"{where}: shapes[{i}] must be a polygon with 'points' [[x, y], ...] (at least "
                                  f"3), got {str(shape)[:80]!r}")
        polygons.append((IGNORE if "ignore" in label else TARGET, [[float(x), float(y)] for x, y in points]))
    return polygons


def polygon_area(points: list[list[float]]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def target_mask(size: tuple[int, int], polygons: list[tuple[int, list[list[float]]]]) -> Image.Image:
    """Paint the polygons largest first (outline included) and keep the target pixels as 255."""
    labels = Image.new("L", size, 0)
    draw = ImageDraw.Draw(labels)
    for value, points in sorted(polygons, key=lambda p: -polygon_area(p[1])):
        draw.polygon([tuple(p) for p in points], fill=value, outline=value)
    return labels.point(lambda v: 255 if v == TARGET else 0)


def target_box(size: tuple[int, int], polygons: list[tuple[int, list[list[float]]]]) -> list[float] | None:
    """The box around every target polygon, clamped to the image; None without targets."""
    points = [p for value, poly in polygons if value == TARGET for p in poly]
    if not points:
        return None
    width, height = size
    xs = [min(max(x, 0.0), float(width)) for x, _ in points]
    ys = [min(max(y, 0.0), float(height)) for _, y in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def convert_reasonseg(src: Path, out: Path, images: Path, split: str, samples_per_shard: int) -> dict:
    """Convert the annotations in folder ``src`` with their same-named pictures in ``images``."""
    for folder in (src, images):
        if not folder.is_dir():
            raise ConversionError(f"ReasonSeg folder {folder} not found; expected a folder of name.jpg + name.json")
    paired, unpaired = pair_files(src, images)
    sink = ShardSink(out, samples_per_shard)
    for path in unpaired:
        sink.skip("unpaired", f"{path} (no image/annotation of the same name)", level=logging.WARNING)
    for name, image_path, json_path in progress(paired, "reasonseg"):
        where = f"ReasonSeg sample {name!r} ({json_path})"
        annotation = read_json(json_path, "ReasonSeg annotation")
        if not isinstance(annotation, dict):
            raise ConversionError(f"{where}: expected an object with 'text', 'is_sentence' and 'shapes'")
        questions, polygons = read_questions(annotation, where), read_shapes(annotation, where)
        image, size = load_image(image_path, where, upright=True)
        box = target_box(size, polygons)
        record = {
            "question": questions[0], "answer": "", "task": "seg", "rationale": None,
            "steps": [{"text": STEP_TEXT, "box": box}] if box else [],
            "meta": {"source": "reasonseg", "name": name, "questions": questions[1:],
                     "is_sentence": bool(annotation.get("is_sentence", False)),
                     "ignore_polygons": [poly for value, poly in polygons if value == IGNORE]},
        }
        sink.write(split, name, image, size, record, where, target_mask(size, polygons))
    return sink.finish()
