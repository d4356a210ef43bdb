"""N-way K-shot image classification tasks sampled on the device (GUIDE.md section 2, REFERENCE.md sections 4-5).

A split is one uint8 tensor (num_classes, examples_per_class, C, H, W), resident on the device; a task is a
pair of index tensors drawn from a seeded `torch.Generator`, gathered and converted to float in one go.
The loaders (omniglot.py, miniimagenet.py) also share the error types and the decoded-split cache below.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from reptile_exp.atomic import atomic_write
from reptile_exp.data.tasks import KEY_BYTES, TaskBatch, minibatch_schedule, schedule_bytes
from reptile_exp.errors import ConfigError, ReptileExpError


class DatasetError(ReptileExpError):
    """A data problem (missing, corrupt or unexpected files) that the entry point prints as one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # causes quoted from other libraries may span lines


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are not where they should be; the message says what to put where."""


@dataclass
class FewShotSplit:
    """All images of one split, uint8 (num_classes, examples_per_class, C, H, W), and the class names."""

    images: Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    @property
    def examples_per_class(self) -> int:
        return self.images.shape[1]


def too_many_ways(n_way: int, classes: int, split: str) -> ConfigError:
    """The error of a task with more classes than its split has."""
    return ConfigError(
        f"dataset.n_way={n_way} exceeds the {classes} classes of the {split!r} split; set dataset.n_way <= {classes}"
    )


class FewShotClassification:
    """N-way K-shot tasks over the classes of each split (REFERENCE.md section 4).

    Training tasks draw `train_shots` examples per class; evaluation tasks draw k_shot + 1 and hold one out
    per class as the query. Labels 0..N-1 follow the random order in which the classes were drawn.
    `scale` maps the stored uint8 values to floats: 1 for Omniglot (0/1), 1/255 for Mini-ImageNet.
    """

    kind = "classification"

    def __init__(self, splits: dict[str, FewShotSplit], n_way: int, k_shot: int, train_shots: int, scale: float = 1.0):
        self.splits = splits
        self.n_way, self.k_shot, self.train_shots = n_way, k_shot, train_shots
        self.scale = scale
        self.input_shape = tuple(splits["train"].images.shape[2:])
        # the evaluated splits are checked against their protocols (protocols.parse), each at its draw
        self._check("train", train_shots, "dataset.train_shots", f"dataset.train_shots={train_shots}")

    def to(self, device: torch.device | str) -> FewShotClassification:
        """Move every split's uint8 tensor to `device`; sampled tasks live there too."""
        for split in self.splits.values():
            split.images = split.images.to(device)
        return self

    def sample_train(
        self,
        num_tasks: int,
        steps: int,
        batch: int,
        generator: torch.Generator,
        replacement: bool = False,
        query_shots: int = 0,
    ) -> TaskBatch:
        """Training tasks: n_way classes x train_shots examples, inner minibatches, optional query examples."""
        shots = self.train_shots + query_shots
        self._check(
            "train", shots, "dataset.train_shots", f"dataset.train_shots={self.train_shots} (+{query_shots} query)"
        )
        x = self._draw("train", num_tasks, shots, generator)
        support, query = x[:, :, : self.train_shots], x[:, :, self.train_shots :]
        n = self.n_way * self.train_shots
        batches = minibatch_schedule(num_tasks, n, steps, batch, generator, replacement).to(x.device, non_blocking=True)
        x_query = y_query = None
        if query_shots > 0:
            x_query, y_query = self._flatten(query)
        return TaskBatch(*self._flatten(support), batches, x_query, y_query)

    def sample_eval(
        self,
        num_tasks: int,
        steps: int,
        batch: int,
        generator: torch.Generator,
        split: str = "test",
        replacement: bool = False,
    ) -> TaskBatch:
        """Evaluation tasks from `split`: k_shot support examples and exactly one query per class; the inner
        minibatches drawn as in training (`replacement`, as the official code's evaluation)."""
        if split not in self.splits:
            raise ConfigError(f"split={split!r} does not exist; choose one of {sorted(self.splits)}")
        self._check(split, self.k_shot + 1, "dataset.k_shot", f"dataset.k_shot={self.k_shot} (+1 query)")
        x = self._draw(split, num_tasks, self.k_shot + 1, generator)
        x_support, y_support = self._flatten(x[:, :, : self.k_shot])
        x_query, y_query = self._flatten(x[:, :, self.k_shot :])
        batches = minibatch_schedule(
            num_tasks, self.n_way * self.k_shot, steps, batch, generator, replacement, evaluation=True
        )
        batches = batches.to(x.device, non_blocking=True)
        return TaskBatch(x_support, y_support, batches, x_query, y_query)

    def draw_bytes(
        self, steps: int, batch: int, query_shots: int = 0, replacement: bool = False, evaluation: bool = False
    ) -> int:
        """The memory one task's draw passes through (from the shapes: a check must not draw): the random keys of
        its classes and examples (a test task: of the largest split), its images gathered as uint8 and as float32
        (before they are split into support and query), the minibatch schedule over the support (tasks.schedule_bytes);
        a test task also the float32 images and int64 labels it returns (a training task's: fits.sampled_bytes)."""
        names = list(self.splits) if evaluation else ["train"]
        keys = max(self.splits[n].num_classes + self.n_way * self.splits[n].examples_per_class for n in names)
        shots = self.k_shot + 1 if evaluation else self.train_shots + query_shots
        support = self.n_way * (self.k_shot if evaluation else self.train_shots)
        drawn = KEY_BYTES * keys + 5 * self.n_way * shots * math.prod(self.input_shape)
        drawn += schedule_bytes(support, steps, batch, replacement)
        return drawn + (self.n_way * shots * (4 * math.prod(self.input_shape) + 8) if evaluation else 0)

    def _check(self, split: str, shots: int, key: str, asked: str) -> None:
        """One-line ConfigError when a task cannot be drawn from `split` without repeating classes or examples."""
        s = self.splits[split]
        if self.n_way > s.num_classes:
            raise too_many_ways(self.n_way, s.num_classes, split)
        if shots > s.examples_per_class:
            raise ConfigError(
                f"{asked} needs {shots} distinct examples per class but the {split!r} split has "
                f"{s.examples_per_class}; lower {key}"
            )

    def _draw(self, split: str, num_tasks: int, shots: int, generator: torch.Generator) -> Tensor:
        """Float images (T, n_way, shots, C, H, W): distinct classes per task, distinct examples per class."""
        images = self.splits[split].images
        num_classes, per_class = images.shape[:2]
        # the top-k of i.i.d. uniform keys, in order, is a uniformly random ordered k-subset (topk beats argsort)
        g = generator.device
        classes = torch.rand(num_tasks, num_classes, generator=generator, device=g).topk(self.n_way).indices
        examples = torch.rand(num_tasks, self.n_way, per_class, generator=generator, device=g).topk(shots).indices
        # drawn on the CPU generator: non-blocking host-to-device copies (safe from pageable memory, no GPU sync)
        classes, examples = classes.to(images.device, non_blocking=True), examples.to(images.device, non_blocking=True)
        x = images[classes.unsqueeze(2), examples].float()
        return x.mul_(self.scale) if self.scale != 1 else x

    @staticmethod
    def _flatten(x: Tensor) -> tuple[Tensor, Tensor]:
        """(T, N, shots, ...) -> class-major inputs (T, N * shots, ...) and int64 labels (T, N * shots)."""
        num_tasks, n_way, shots = x.shape[:3]
        y = torch.arange(n_way, device=x.device).repeat_interleave(shots).repeat(num_tasks, 1)
        return x.flatten(1, 2), y


def describe_root(root: Path) -> str:
    """dataset.root as an error line names it: the path, and what is wrong with it unless it is a folder."""
    if root.is_dir():
        return str(root)
    return f"{root} (a file, not a folder)" if root.exists() else f"{root} (which does not exist)"


def synthetic_like(
    loader: type, n_way: int, k_shot: int, train_shots: int, shots: int = 0, seed: int = 0, **settings
) -> FewShotClassification:
    """Random images of a loader's shape and pixel range, for smoke runs (`synthetic_data=true`, set by debug=smoke)
    where the real files are absent; nothing is learnable. The splits are the real data's with these settings
    (loader.split_classes(n_way=n_way, **settings) checks them as the real loader does; an n_way above a split's classes
    is refused as for the real data); each class holds 2 examples more than a task of the run draws (shots: the
    most, as MAML's query or a protocol's K draw them), at most the real data's (more are refused as for it)."""
    per_class = min(max(train_shots, k_shot + 1, shots) + 2, loader.real_examples_per_class)
    g = torch.Generator().manual_seed(seed)
    classes = loader.split_classes(n_way=n_way, **settings)

    def split(name: str) -> FewShotSplit:
        shape = (classes[name], per_class, *loader.image_shape)
        images = torch.randint(0, loader.pixel_levels, shape, generator=g, dtype=torch.uint8)
        return FewShotSplit(images, [f"{name}{i}" for i in range(shape[0])])

    splits = {name: split(name) for name in classes}
    return FewShotClassification(splits, n_way, k_shot, train_shots, scale=loader.pixel_scale)


def cache_file(root: Path, cache: bool, cache_dir: str | None, name: str) -> Path | None:
    """Where a loader keeps its decoded splits: cache_dir (default root/.reptile_exp_cache) / name, or None."""
    if not cache:
        return None
    return Path(cache_dir).expanduser() / name if cache_dir else root / ".reptile_exp_cache" / name


def fingerprint(paths: list[Path], **params) -> str:
    """Digest of the source files (names, sizes, mtimes; folders walked) and of the decoding parameters."""
    entries = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            entries.append([f.relative_to(path.parent).as_posix(), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": entries, "params": params}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def load_cache(path: Path | None, key: str, layout: dict[str, tuple[str, tuple]]) -> dict | None:
    """The cached payload if `path` holds one for `key` laid out as `layout` says ({images entry: (its class names'
    entry, the images' uint8 shape, None for any size)}); None (with a warning if stale or damaged) otherwise."""
    if path is None or not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is rebuilt, whatever the reason
        warnings.warn(f"cache {path} is unreadable ({type(e).__name__}); rebuilding it", stacklevel=3)
        return None
    if not isinstance(saved, dict) or saved.get("key") != key or not isinstance(saved.get("data"), dict):
        warnings.warn(f"cache {path} does not match the source files; rebuilding it", stacklevel=3)
        return None
    if damage := next(filter(None, (_damage(saved["data"], *entry) for entry in layout.items())), None):
        warnings.warn(f"cache {path} is damaged ({damage}); rebuilding it", stacklevel=3)
        return None
    return saved["data"]


def _damage(data: dict, images: str, names_shape: tuple[str, tuple]) -> str | None:
    """What is wrong with a cached split: its images not a uint8 tensor of the shape, its names not one per class."""
    names, shape = names_shape
    found = data.get(images)
    if not (
        isinstance(found, Tensor)
        and found.dtype == torch.uint8
        and found.dim() == len(shape)
        and all(want is None or want == got for want, got in zip(shape, found.shape))
    ):
        wanted = ", ".join("N" if n is None else str(n) for n in shape)
        got = f"{str(found.dtype).removeprefix('torch.')} {tuple(found.shape)}" if isinstance(found, Tensor) else None
        return f"{images!r} is {got or type(found).__name__}, expected uint8 ({wanted})"
    listed = data.get(names)
    if not (isinstance(listed, list) and len(listed) == len(found) and all(isinstance(n, str) for n in listed)):
        return f"{names!r} does not name the {len(found)} classes of {images!r}"
    return None


def save_cache(path: Path | None, key: str, data: dict) -> None:
    """Write `data` atomically (parallel runs may share the cache); warn and go on if `path` is not writable."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save({"key": key, "data": data}, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports some unwritable paths as RuntimeError
        warnings.warn(f"cannot write cache {path} ({e}); continuing without a cache", stacklevel=3)
