"""Mini-ImageNet, the Ravi & Larochelle split (REFERENCE.md section 4).

Two distributed forms are read: the pickles mini-imagenet-cache-{train,val,test}.pkl (an image array
(N, 84, 84, 3) uint8 and a class -> indices dict), loaded with an unpickler that builds nothing but numpy
arrays; or images/ with train.csv, val.csv and test.csv (header filename,label), decoded once and cached.
Images are resized whole to 84x84 RGB with nearest neighbour (the official code's PIL default at the time),
stored uint8 (3, 84, 84) and divided by 255 after gathering. Classes are in sorted order, images in file order.
"""

from __future__ import annotations

import codecs
import csv
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from reptile_exp.data.fewshot import (
    DatasetError,
    DatasetNotFoundError,
    FewShotClassification,
    FewShotSplit,
    cache_file,
    describe_root,
    fingerprint,
    load_cache,
    save_cache,
)

SPLITS = ("train", "val", "test")
SIZE = 84


class MiniImageNet(FewShotClassification):
    """N-way K-shot Mini-ImageNet tasks (REFERENCE.md sections 4 and 6); splits train, val and test.

    There is no working official download: `download=True` only changes the error's wording.
    The images/ + CSV form is cached in cache_dir (default root/.reptile_exp_cache); the pickles are read
    directly (they are already decoded, a cache would only duplicate them).
    """

    expected_classes = {"train": 64, "val": 16, "test": 20}
    real_examples_per_class = 600  # images per class; synthetic_like's splits hold no more
    image_shape, pixel_levels, pixel_scale = (3, SIZE, SIZE), 256, 1 / 255

    @classmethod
    def split_classes(cls, **settings) -> dict[str, int]:
        """Classes per split of the real data (Ravi & Larochelle's split), whatever the settings."""
        return dict(cls.expected_classes)

    def __init__(
        self,
        root: str,
        n_way: int = 5,
        k_shot: int = 1,
        train_shots: int = 15,
        download: bool = False,
        cache: bool = True,
        cache_dir: str | None = None,
    ):
        root = Path(root).expanduser()
        pickles = {s: root / f"mini-imagenet-cache-{s}.pkl" for s in SPLITS}
        tables = {s: root / f"{s}.csv" for s in SPLITS}
        if all(p.is_file() for p in pickles.values()):
            splits = {s: read_pickle(p) for s, p in pickles.items()}
        elif all(p.is_file() for p in tables.values()) and (root / "images").is_dir():
            splits = read_images(root, tables, cache_file(root, cache, cache_dir, "miniimagenet-v1.pt"))
        else:
            raise missing_error(root, pickles, tables, download)
        found = {s: splits[s].num_classes for s in SPLITS}
        if found != self.expected_classes:
            warnings.warn(
                f"Mini-ImageNet in {root} has {found} classes per split, the Ravi & Larochelle split has "
                f"{self.expected_classes}",
                stacklevel=2,
            )
        super().__init__(splits, n_way, k_shot, train_shots, scale=self.pixel_scale)


def missing_error(root: Path, pickles: dict, tables: dict, download: bool) -> DatasetNotFoundError:
    """The one-line "put the files here" error, listing both accepted layouts."""
    form = [*pickles.values()] if any(p.exists() for p in pickles.values()) else [*tables.values(), root / "images"]
    missing = ", ".join(p.name for p in form if not p.exists()) or "images/ or the csv files"
    where = describe_root(root)
    note = "; there is no working official download" if download else ""
    return DatasetNotFoundError(
        f"Mini-ImageNet not found: {missing} missing in {where}; put either mini-imagenet-cache-{{train,val,test}}.pkl"
        f" or images/*.jpg with train.csv, val.csv, test.csv (header filename,label) there{note}"
    )


def numpy_globals() -> dict:
    """The globals a pickled numpy array refers to (protocols 2-5), under their numpy 1 and numpy 2 module names."""
    array = np.zeros(1, np.uint8)
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for f in (array.__reduce_ex__(2)[0], array.__reduce_ex__(5)[0], np.uint8(0).__reduce__()[0]):
        for package in ("numpy.core", "numpy._core"):
            allowed[(f"{package}.{f.__module__.rsplit('.', 1)[1]}", f.__name__)] = f
    return allowed


class ArrayUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays, and refuses every other global."""

    allowed = numpy_globals()

    def find_class(self, module: str, name: str):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return self.allowed[(module, name)]


def read_pickle(path: Path) -> FewShotSplit:
    """One split from a mini-imagenet-cache pickle; untrusted, so only numpy arrays may be built."""
    try:
        with path.open("rb") as f:
            data = ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a damaged or hostile pickle can fail in many ways; all mean "download it again"
        raise DatasetError(f"cannot read {path} ({type(e).__name__}: {e}); download it again") from None
    images = data.get("image_data") if isinstance(data, dict) else None
    classes = data.get("class_dict") if isinstance(data, dict) else None
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE, 3):
        raise DatasetError(f"{path}: 'image_data' is not a uint8 array (N, {SIZE}, {SIZE}, 3); download it again")
    if not isinstance(classes, dict) or not classes:
        raise DatasetError(f"{path}: 'class_dict' is not a class -> indices dict; download it again")
    names = sorted(classes)
    index = equal_sized(path, {c: list(classes[c]) for c in names})
    if index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= len(images):
        raise DatasetError(f"{path}: 'class_dict' indexes outside 'image_data'; download it again")
    return FewShotSplit(torch.from_numpy(images[index]).permute(0, 1, 4, 2, 3).contiguous(), names)


def equal_sized(path: Path, classes: dict[str, list]) -> np.ndarray:
    """The per-class lists as one (classes, examples) array; every class must have as many examples."""
    sizes = {len(v) for v in classes.values()}
    if len(sizes) != 1:
        raise DatasetError(f"{path}: classes have different numbers of images ({sorted(sizes)}); download it again")
    return np.array(list(classes.values()))


def read_images(root: Path, tables: dict[str, Path], cache: Path | None) -> dict[str, FewShotSplit]:
    """The images/ + csv form, decoded once and cached."""
    key = fingerprint([*tables.values(), root / "images"], format="miniimagenet-v1")
    data = load_cache(cache, key, {s: (f"{s}_names", (None, None, 3, SIZE, SIZE)) for s in SPLITS})
    if data is None:
        data = {}
        for split, table in tables.items():
            data[split], data[f"{split}_names"] = decode_split(root, table)
        save_cache(cache, key, data)
    return {s: FewShotSplit(data[s], data[f"{s}_names"]) for s in SPLITS}


def decode_split(root: Path, table: Path) -> tuple[torch.Tensor, list[str]]:
    """The images a csv lists, uint8 (classes, examples, 3, 84, 84), classes sorted by label."""
    try:
        with table.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [(row, reader.line_num) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {table} ({e}); download it again") from None
    if not rows or not {"filename", "label"} <= set(rows[0][0]):
        raise DatasetError(f"{table}: expected a header 'filename,label' and at least one row; download it again")
    classes: dict[str, list[str]] = {}
    for row, line in rows:
        if not row["filename"] or not row["label"]:  # DictReader fills a short row's missing fields with None
            raise DatasetError(f"{table}, line {line}: expected 'filename,label', got {row}; download it again")
        classes.setdefault(row["label"], []).append(row["filename"])
    names = sorted(classes)
    files = equal_sized(table, {c: classes[c] for c in names})
    images = np.empty((*files.shape, SIZE, SIZE, 3), dtype=np.uint8)
    for (i, j), name in tqdm(np.ndenumerate(files), total=files.size, desc=f"Decoding {table.name} (once)"):
        images[i, j] = decode_jpeg(root / "images" / name)
    return torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous(), names


def decode_jpeg(path: Path) -> np.ndarray:
    """An image file as uint8 (84, 84, 3): converted to RGB, resized whole with nearest neighbour."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.NEAREST))
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{path} is listed in a csv file but missing; download the images again") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot decode {path} ({e}); download it again") from None
