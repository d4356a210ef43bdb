"""Tiny synthetic datasets in every on-disk layout the few-shot loaders read (tests only)."""

from __future__ import annotations

import csv
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from reptile_exp.data.miniimagenet import MiniImageNet
from reptile_exp.data.omniglot import Omniglot

# Unsorted on purpose: the loader must sort alphabets across both sets. The first half is "background".
ALPHABETS = ("Tifinagh", "Bengali", "ULOG", "Angelic")
SMALL_OMNIGLOT = (4, 40, 20)  # alphabets, characters, drawings per character
MINI_CLASSES = {"train": 4, "val": 2, "test": 3}


class SmallOmniglot(Omniglot):
    """Omniglot with the counts of `omniglot_pngs()`: 40 characters, 30 of them for training."""

    expected = SMALL_OMNIGLOT
    num_train = 30


class SmallMiniImageNet(MiniImageNet):
    """Mini-ImageNet with the class counts of the synthetic splits (no "unexpected counts" warning)."""

    expected_classes = MINI_CLASSES


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def omniglot_pngs(characters: int = 40, drawings: int = 20, seed: int = 0) -> dict[str, bytes]:
    """{path inside the official zips: 1-bit 105x105 PNG}, e.g. images_background/Tifinagh/character01/0001_01.png.

    Each drawing is a few random black (0) blocks on a white (1) background, so its rotations all differ.
    """
    rng = np.random.default_rng(seed)
    files = {}
    alphabets = len(ALPHABETS)
    per_alphabet = characters // alphabets
    for c in range(characters):
        a, number = divmod(c, per_alphabet)
        top = "images_background" if a < alphabets // 2 else "images_evaluation"
        for d in range(drawings):
            pixels = np.ones((105, 105), dtype=bool)
            for y, x in rng.integers(0, 90, size=(6, 2)):
                pixels[y : y + rng.integers(4, 16), x : x + rng.integers(4, 16)] = False
            files[f"{top}/{ALPHABETS[a]}/character{number + 1:02d}/{c + 1:04d}_{d + 1:02d}.png"] = png_bytes(pixels)
    return files


def write_omniglot(root: Path, files: dict[str, bytes], layout: str = "zip") -> Path:
    """Write `files` as the two zips (with directory entries), extracted folders, or torchvision's omniglot-py/."""
    root.mkdir(parents=True, exist_ok=True)
    if layout == "zip":
        for top in ("images_background", "images_evaluation"):
            with zipfile.ZipFile(root / f"{top}.zip", "w", zipfile.ZIP_DEFLATED) as z:
                dirs = sorted({p.rsplit("/", i)[0] + "/" for p in files if p.startswith(top) for i in (1, 2, 3)})
                for d in dirs:
                    z.writestr(d, "")
                for path, data in files.items():
                    if path.startswith(top):
                        z.writestr(path, data)
        return root
    base = root / "omniglot-py" if layout == "torchvision" else root
    for path, data in files.items():
        (base / path).parent.mkdir(parents=True, exist_ok=True)
        (base / path).write_bytes(data)
    return root


def mini_images(per_class: int = 6, seed: int = 0) -> dict[str, dict[str, list[np.ndarray]]]:
    """{split: {wnid: [uint8 (84, 84, 3) images]}} with the class counts of MINI_CLASSES."""
    rng = np.random.default_rng(seed)
    return {
        split: {
            f"n{split_id}{c:07d}": [rng.integers(0, 256, (84, 84, 3), dtype=np.uint8) for _ in range(per_class)]
            for c in range(count)
        }
        for split_id, (split, count) in enumerate(MINI_CLASSES.items())
    }


def write_mini_csv(root: Path, images: dict, seed: int = 0) -> dict[str, list[dict]]:
    """images/*.jpg plus train/val/test.csv (rows shuffled across classes); sizes vary, one image is grayscale."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    tables = {}
    for split, classes in images.items():
        rows = []
        for label, arrays in classes.items():
            for i, array in enumerate(arrays):
                name = f"{label}{i:08d}.jpg"
                img = Image.fromarray(array).resize((100 + 7 * i, 90))
                (img.convert("L") if i == 1 else img).save(root / "images" / name, quality=90)
                rows.append({"filename": name, "label": label})
        rows = [rows[i] for i in rng.permutation(len(rows))]
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["filename", "label"])
            writer.writeheader()
            writer.writerows(rows)
        tables[split] = rows
    return tables


def write_mini_pickles(root: Path, images: dict, protocol: int = 4, seed: int = 0) -> None:
    """mini-imagenet-cache-{split}.pkl: {'image_data': (N, 84, 84, 3) uint8, 'class_dict': {wnid: [indices]}}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, classes in images.items():
        arrays = [a for label in classes for a in classes[label]]
        order = rng.permutation(len(arrays))  # image_data is stored shuffled; class_dict points into it
        position = np.argsort(order)
        per_class = len(arrays) // len(classes)
        class_dict = {
            label: [int(position[c * per_class + i]) for i in range(per_class)] for c, label in enumerate(classes)
        }
        data = {"image_data": np.stack(arrays)[order], "class_dict": class_dict}
        with (root / f"mini-imagenet-cache-{split}.pkl").open("wb") as f:
            pickle.dump(data, f, protocol=protocol)
