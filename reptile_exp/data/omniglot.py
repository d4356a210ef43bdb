"""Omniglot as the official Reptile code prepares it (REFERENCE.md section 4).

Both sets merged, alphabets and characters in sorted order, shuffled with `random.seed(0)`; the first 1200
characters train (each rotated by 0/90/180/270 degrees into 4 classes), the other 423 test. Images are the
1-bit PNGs resized to 28x28 (nearest neighbour), values 0/1 with background 1. The files are read from the
official zips, their extracted folders or torchvision's `omniglot-py/` layout, and checked by content, not by
md5 (GUIDE.md section 4: re-packed zips are fine). Decoded characters are cached next to the data.

dataset.download=true fetches the missing zips from URL, or from the base URL in the environment variable
REPTILE_EXP_OMNIGLOT_URL (a mirror; <base>/images_background.zip must exist); a download is kept only when it
arrived whole and is a zip.
"""

from __future__ import annotations

import io
import os
import random
import urllib.error
import urllib.request
import zipfile
import zlib
from contextlib import ExitStack
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
    too_many_ways,
)
from reptile_exp.errors import ConfigError

SETS = ("images_background", "images_evaluation")
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
URL_VARIABLE = "REPTILE_EXP_OMNIGLOT_URL"
SIZE = 28


class Omniglot(FewShotClassification):
    """N-way K-shot Omniglot tasks (REFERENCE.md sections 4 and 6).

    val_characters > 0 moves the last val_characters of the 1200 training characters into an unrotated
    "val" split. The decoded characters are cached in cache_dir (default root/.reptile_exp_cache).
    """

    expected = (50, 1623, 20)  # alphabets, characters, drawings per character
    real_examples_per_class = expected[2]  # synthetic_like's splits hold no more
    image_shape, pixel_levels, pixel_scale = (1, SIZE, SIZE), 2, 1.0
    num_train = 1200

    @classmethod
    def split_classes(cls, n_way: int = 5, val_characters: int = 0) -> dict[str, int]:
        """Classes per split of the real data with these settings (ConfigError for settings it cannot split): 4
        rotations of each training character; the test characters; a val split of val_characters, if any."""
        if not 0 <= val_characters < cls.num_train:
            raise ConfigError(f"dataset.val_characters={val_characters} must be in [0, {cls.num_train})")
        if n_way > 4 * cls.num_train:  # no val_characters helps
            raise too_many_ways(n_way, 4 * cls.num_train, "train")
        left = 4 * (cls.num_train - val_characters)  # training classes: each character in 4 rotations
        most = cls.num_train - -(-n_way // 4)  # the most val characters that leave n_way training classes
        fix = f"set it to 0 (no val split of {n_way} characters leaves {n_way} training classes)"
        if 0 < val_characters < n_way:  # the val split's classes are these characters, unrotated
            fix = f"set it >= {n_way} (or 0: no val split)" if n_way <= most else fix
            raise ConfigError(
                f"dataset.val_characters={val_characters} is invalid: a val task needs dataset.n_way={n_way} of them; "
                + fix
            )
        if left < n_way:
            fix = f"set it <= {most}" if n_way <= most else fix
            raise ConfigError(
                f"dataset.val_characters={val_characters} is invalid: it leaves {left} training classes for "
                f"dataset.n_way={n_way}; {fix}"
            )
        val = {"val": val_characters} if val_characters else {}
        return {"train": left, **val, "test": cls.expected[1] - cls.num_train}

    def __init__(
        self,
        root: str,
        n_way: int = 5,
        k_shot: int = 1,
        train_shots: int = 10,
        val_characters: int = 0,
        download: bool = False,
        cache: bool = True,
        cache_dir: str | None = None,
    ):
        self.split_classes(n_way, val_characters)  # its checks, before any file is read
        root = Path(root).expanduser()
        sources = find_sources(root, download)
        path = cache_file(root, cache, cache_dir, "omniglot-v1.pt")
        key = fingerprint(sources, format="omniglot-v1", expected=list(self.expected))
        data = load_cache(path, key, {"images": ("names", (*self.expected[1:], SIZE, SIZE))})
        if data is None:
            data = decode(sources, self.expected)
            save_cache(path, key, data)
        splits = split_characters(data["images"], data["names"], self.num_train, val_characters)
        super().__init__(splits, n_way, k_shot, train_shots)


def missing_error(root: Path, missing: list[str], download_failure: str = "") -> DatasetNotFoundError:
    """The one-line "put the files here" error."""
    where = describe_root(root)
    fix = f"download failed ({download_failure})" if download_failure else "or set dataset.download=true"
    return DatasetNotFoundError(
        f"Omniglot not found: {', '.join(missing)} missing in {where}; put images_background.zip and "
        f"images_evaluation.zip from https://github.com/brendenlake/omniglot (python/) there, {fix}"
    )


def find_sources(root: Path, download: bool) -> list[Path]:
    """The zip or extracted folder of each set, downloading the zips if asked and needed."""

    def find(name: str) -> Path | None:
        candidates = [
            root / f"{name}.zip",
            root / name,
            root / "omniglot-py" / f"{name}.zip",
            root / "omniglot-py" / name,
        ]
        return next((p for p in candidates if p.exists()), None)

    missing = [f"{name}.zip" for name in SETS if find(name) is None]
    if missing and download:
        base = os.environ.get(URL_VARIABLE) or URL
        for name in missing:
            try:
                fetch(f"{base.rstrip('/')}/{name}", root / name)
            except DownloadError as e:
                raise missing_error(root, missing, str(e)) from None
        missing = [f"{name}.zip" for name in SETS if find(name) is None]
    if missing:
        raise missing_error(root, missing)
    return [find(name) for name in SETS]


class DownloadError(Exception):
    """Why a download failed, in a few words (missing_error puts it in its one line)."""


def fetch(url: str, path: Path) -> None:
    """Download url to path through path.part, renamed only once the whole file arrived and is a zip."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {path.parent} ({e.strerror}); set dataset.root to a writable one") from None
    part = path.with_name(path.name + ".part")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "reptile_exp"})
    except ValueError as e:  # no scheme (mirror.example/x): urllib's "unknown url type"
        raise DownloadError(f"{url} is not a URL ({e}); give it with its scheme, https://.. ({URL_VARIABLE})") from None
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as f:
            kind, size = response.headers.get_content_type(), response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
        got = part.stat().st_size
        if size is not None and got < int(size):
            raise DownloadError(f"{url} was cut off after {got} of {size} bytes; try again")
        if not zipfile.is_zipfile(part):
            what = "an HTML page (an error or login page?)" if kind == "text/html" else f"{got} bytes (truncated?)"
            raise DownloadError(f"{url} sent {what}, not a zip; check the URL ({URL_VARIABLE})")
        part.replace(path)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {url} ({e.reason})") from None
    except OSError as e:  # a timeout or a connection reset mid-transfer
        raise DownloadError(f"{url}: {e}") from None
    finally:
        part.unlink(missing_ok=True)


class Source:
    """The PNG files of one set, read from a zip (without extracting it) or from a folder; a context manager."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = None
        if path.suffix == ".zip":
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise DatasetError(f"{path} is not a readable zip ({e}); download it again") from None
            names = self.zip.namelist()
        else:
            names = [p.relative_to(path).as_posix() for p in path.rglob("*.png")]
        # .../alphabet/character/NNNN_DD.png, without macOS metadata (__MACOSX/, ._NNNN_DD.png)
        self.names = [
            n for n in names if n.endswith(".png") and n.count("/") >= 2 and "__MACOSX" not in n and "/." not in n
        ]

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        if self.zip is not None:
            self.zip.close()

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(name) if self.zip is not None else (self.path / name).read_bytes()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise DatasetError(f"{self.path} is corrupt at {name} ({e}); download it again") from None


def decode_png(data: bytes, where: str) -> np.ndarray:
    """A 1-bit PNG as a 28x28 uint8 array of 0/1 (background 1), nearest-neighbour resized like the official code."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot decode {where} ({e}); download the data again") from None
    if img.mode != "1":
        raise DatasetError(f"{where} is a mode {img.mode!r} image, Omniglot PNGs are 1-bit; download the data again")
    return np.asarray(img.resize((SIZE, SIZE), Image.NEAREST), dtype=np.uint8)


def decode(paths: list[Path], expected: tuple[int, int, int]) -> dict:
    """Every character's drawings, uint8 (characters, drawings, 28, 28), in sorted (alphabet, character) order."""
    with ExitStack() as stack:
        drawings = list_drawings([stack.enter_context(Source(p)) for p in paths], expected)
        images = np.empty((len(drawings), expected[2], SIZE, SIZE), dtype=np.uint8)
        with tqdm(total=images.shape[0] * images.shape[1], desc="Decoding Omniglot (once)", unit="img") as bar:
            for i, files in enumerate(drawings.values()):
                for j, (src, name) in enumerate(files):
                    images[i, j] = decode_png(src.read(name), f"{src.path}:{name}")
                bar.update(expected[2])
    return {"images": torch.from_numpy(images), "names": ["/".join(c) for c in drawings]}


def list_drawings(sources: list[Source], expected: tuple[int, int, int]) -> dict[tuple[str, str], list]:
    """{(alphabet, character): [(source, png name)]} sorted like the official code, checked against `expected`."""
    drawings: dict[tuple[str, str], list[tuple[Source, str]]] = {}
    for src in sources:
        for name in src.names:
            alphabet, character = name.split("/")[-3:-1]
            drawings.setdefault((alphabet, character), []).append((src, name))
    found = (len({a for a, _ in drawings}), len(drawings))
    if found != expected[:2]:
        raise DatasetError(
            f"Omniglot in {' + '.join(str(src.path) for src in sources)}: found {found[0]} alphabets and {found[1]} "
            f"characters, expected {expected[0]} and {expected[1]}; download the two zips again"
        )
    for char, files in drawings.items():
        if len(files) != expected[2]:
            raise DatasetError(
                f"Omniglot in {files[0][0].path}: {'/'.join(char)} has {len(files)} drawings, expected {expected[2]}; "
                f"download it again"
            )
    return {char: sorted(drawings[char], key=lambda f: f[1]) for char in sorted(drawings)}


def split_characters(images: torch.Tensor, names: list[str], num_train: int, val: int) -> dict[str, FewShotSplit]:
    """The official split: shuffle with random.seed(0), first num_train train (x4 rotations), the rest test."""
    order = list(range(len(names)))
    random.Random(0).shuffle(order)
    train, val_ids, test = order[: num_train - val], order[num_train - val : num_train], order[num_train:]

    def split(ids: list[int]) -> FewShotSplit:
        return FewShotSplit(images[ids].unsqueeze(2), [names[i] for i in ids])

    # np.rot90 turns counter-clockwise, like PIL's img.rotate(90 * r); classes are character-major like the official
    chars = images[train].numpy()
    rotated = torch.from_numpy(np.stack([np.rot90(chars, r, axes=(-2, -1)) for r in range(4)], axis=1))
    splits = {
        "train": FewShotSplit(
            rotated.flatten(0, 1).unsqueeze(2), [f"{names[i]}/rot{90 * r}" for i in train for r in range(4)]
        ),
        "test": split(test),
    }
    if val:
        splits["val"] = split(val_ids)
    return splits
