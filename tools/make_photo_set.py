"""A small LLaVA-format data set of real photographs, for trying the custom-data path offline.

The photos are the ones scikit-image ships inside its wheel (``skimage/data``: an astronaut, a cat,
a cup of coffee, a rocket, ...; no download), the questions and answers are written here and use
words the synthetic benchmark never uses, and some samples are multi-turn conversations. Writes
``OUT/train.json``, ``OUT/val.json`` (the same photos, asked again) and ``OUT/images/``::

    pip install scikit-image
    python tools/make_photo_set.py --out data/photos-src
    mmreason data convert llava data/photos-src/train.json --images data/photos-src/images --out data/photos
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# photo → conversation (human, gpt, human, gpt, …); the first question goes with the image
PHOTOS = {
    "astronaut.png": ["What is the person wearing?", "A white space suit.",
                      "What is behind her?", "An American flag."],
    "chelsea.png": ["What animal is this?", "A cat.", "What colour is its fur?", "Orange and grey with stripes."],
    "coffee.png": ["What is in the cup?", "Coffee with milk foam."],
    "rocket.jpg": ["What is on the launch pad?", "A rocket."],
    "motorcycle_left.png": ["What vehicle is shown?", "A motorcycle."],
    "hubble_deep_field.jpg": ["What does the picture show?", "Galaxies in deep space."],
    "retina.jpg": ["What part of the body is this?", "The retina of an eye."],
    "camera.png": ["What is the man holding?", "A camera on a tripod."],
    "coins.png": ["What objects are on the table?", "Old coins."],
    "moon.png": ["What is this?", "The surface of the moon with craters."],
}
VAL_QUESTIONS = {"astronaut.png": ("What is she wearing?", "A white space suit."),
                 "chelsea.png": ("Which animal is in the photo?", "A cat."),
                 "rocket.jpg": ("What stands on the launch pad?", "A rocket.")}


def conversation(turns: list[str]) -> list[dict]:
    out = []
    for i in range(0, len(turns), 2):
        question = f"<image>\n{turns[i]}" if i == 0 else turns[i]
        out += [{"from": "human", "value": question}, {"from": "gpt", "value": turns[i + 1]}]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for train.json, val.json and images/")
    args = parser.parse_args()
    import skimage
    from PIL import Image

    source = Path(skimage.__file__).parent / "data"
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.open(source / name).convert("RGB").save(out / "images" / (Path(name).stem + ".png"))
    train = [{"id": Path(n).stem, "image": Path(n).stem + ".png", "conversations": conversation(t)}
             for n, t in PHOTOS.items()]
    val = [{"id": f"{Path(n).stem}-val", "image": Path(n).stem + ".png", "conversations": conversation(list(qa))}
           for n, qa in VAL_QUESTIONS.items()]
    (out / "train.json").write_text(json.dumps(train, indent=1))
    (out / "val.json").write_text(json.dumps(val, indent=1))
    print(json.dumps({"train": len(train), "val": len(val), "folder": str(out)}))


if __name__ == "__main__":
    main()
