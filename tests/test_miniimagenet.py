"""Mini-ImageNet loader: both distributed forms, safe pickles, cache, errors (REFERENCE.md section 4)."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_data import MINI_CLASSES, SmallMiniImageNet, mini_images, write_mini_csv, write_mini_pickles

import reptile_exp.data.miniimagenet as miniimagenet
from reptile_exp.data.fewshot import DatasetError, DatasetNotFoundError


@pytest.fixture(scope="module")
def images() -> dict:
    return mini_images()


def load(root, **kwargs) -> SmallMiniImageNet:
    """The synthetic splits have 2-4 classes of 6 images: smaller tasks than the defaults."""
    return SmallMiniImageNet(str(root), **{"n_way": 2, "train_shots": 3, **kwargs})


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def no_decoding(*args):
    raise AssertionError("decoded although the cache is valid")


def check_splits(ds, images):
    for split, classes in images.items():
        s = ds.splits[split]
        assert s.class_names == sorted(classes)
        assert s.images.shape == (MINI_CLASSES[split], 6, 3, 84, 84) and s.images.dtype == torch.uint8
    assert ds.input_shape == (3, 84, 84) and set(ds.splits) == {"train", "val", "test"}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_load_exactly(tmp_path, images, protocol):
    """Classes in sorted wnid order whatever order the pickle's class_dict holds them in (here: reversed)."""
    write_mini_pickles(tmp_path, {split: dict(reversed(c.items())) for split, c in images.items()}, protocol=protocol)
    ds = load(tmp_path)
    check_splits(ds, images)
    for split, classes in images.items():
        for c, label in enumerate(sorted(classes)):
            expected = torch.from_numpy(np.stack(classes[label])).permute(0, 3, 1, 2)
            assert torch.equal(ds.splits[split].images[c], expected)


def test_csv_images_are_resized_whole_and_grouped_by_label(tmp_path, images):
    tables = write_mini_csv(tmp_path, images)
    ds = load(tmp_path)
    check_splits(ds, images)
    for split in ("train", "test"):
        label = sorted(images[split])[1]
        files = [r["filename"] for r in tables[split] if r["label"] == label]  # csv order within a class
        for j, name in enumerate(files):
            with Image.open(tmp_path / "images" / name) as img:
                expected = np.asarray(img.convert("RGB").resize((84, 84), Image.NEAREST))
            got = ds.splits[split].images[1, j].permute(1, 2, 0).numpy()
            assert np.array_equal(got, expected)


def test_tasks_are_scaled_to_unit_range(tmp_path, images):
    write_mini_pickles(tmp_path, images)
    ds = load(tmp_path, k_shot=5)
    tb = ds.sample_eval(4, 2, 5, torch.Generator().manual_seed(0), split="test")
    assert tb.x.shape == (4, 10, 3, 84, 84) and tb.x_query.shape == (4, 2, 3, 84, 84)
    assert tb.x.dtype == torch.float32 and 0 <= tb.x.min() and tb.x.max() <= 1
    stored = ds.splits["test"].images.float() / 255
    assert any(torch.allclose(tb.x_query[0, 0], img) for img in stored.flatten(0, 1))


def test_unexpected_class_counts_warn(tmp_path, images):
    write_mini_pickles(tmp_path, images)
    with pytest.warns(UserWarning, match="64"):
        miniimagenet.MiniImageNet(str(tmp_path), n_way=2, train_shots=3)


def test_csv_cache_is_reused_and_rebuilt_when_stale(tmp_path, images, monkeypatch):
    tables = write_mini_csv(tmp_path, images)
    first = load(tmp_path)
    cache = tmp_path / ".reptile_exp_cache" / "miniimagenet-v1.pt"
    mtime = cache.stat().st_mtime_ns
    with monkeypatch.context() as m:
        m.setattr(miniimagenet, "decode_jpeg", no_decoding)
        second = load(tmp_path)
    assert cache.stat().st_mtime_ns == mtime
    assert torch.equal(first.splits["train"].images, second.splits["train"].images)
    name = tables["val"][0]["filename"]
    Image.new("RGB", (84, 84), (255, 0, 0)).save(tmp_path / "images" / name)
    with pytest.warns(UserWarning, match="does not match"):
        third = load(tmp_path)
    c = third.splits["val"].class_names.index(tables["val"][0]["label"])
    assert (third.splits["val"].images[c, :, 0] > 240).all(dim=(1, 2)).any(), "the changed image was decoded"


def test_csv_cache_with_damaged_content_is_rebuilt(tmp_path, images):
    """A cache with the right key but a split of other image sizes, or names that miss a class, is decoded again."""
    write_mini_csv(tmp_path, images)
    first = load(tmp_path)
    cache = tmp_path / ".reptile_exp_cache" / "miniimagenet-v1.pt"
    saved = torch.load(cache, weights_only=True)
    data = {**saved["data"], "val": saved["data"]["val"][:, :, :, :42], "test_names": saved["data"]["test_names"][1:]}
    torch.save({**saved, "data": data}, cache)
    with pytest.warns(UserWarning, match="is damaged"):
        second = load(tmp_path)
    for split in ("val", "test"):
        assert torch.equal(first.splits[split].images, second.splits[split].images)
        assert first.splits[split].class_names == second.splits[split].class_names


def test_pickles_win_over_csv(tmp_path, images, monkeypatch):
    write_mini_csv(tmp_path, images)
    write_mini_pickles(tmp_path, images)
    monkeypatch.setattr(miniimagenet, "decode_jpeg", no_decoding)
    load(tmp_path)
    assert not (tmp_path / ".reptile_exp_cache").exists()


class Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.makedirs, (self.target,)


def test_hostile_pickle_is_refused(tmp_path, images):
    write_mini_pickles(tmp_path, images)
    target = tmp_path / "pwned"
    path = tmp_path / "mini-imagenet-cache-val.pkl"
    path.write_bytes(pickle.dumps({"image_data": Exploit(str(target)), "class_dict": {}}))
    with pytest.raises(DatasetError, match="mini-imagenet-cache-val.pkl.*refusing to load") as err:
        load(tmp_path)
    one_line(err)
    assert not target.exists()


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        ("truncated", "cannot read"),
        ("wrong shape", "'image_data' is not a uint8 array"),
        ("uneven classes", "classes have different numbers of images"),
    ],
)
def test_bad_pickle_names_the_file_and_the_damage(tmp_path, images, damage, phrase):
    write_mini_pickles(tmp_path, images)
    path = tmp_path / "mini-imagenet-cache-test.pkl"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1000])
    else:  # each damage alone: the other fields are valid
        classes = {"a": [0, 1, 2], "b": [3, 4]} if damage == "uneven classes" else {"a": [0, 1, 2], "b": [3, 4, 5]}
        size = 32 if damage == "wrong shape" else 84
        path.write_bytes(pickle.dumps({"image_data": np.zeros((18, size, size, 3), np.uint8), "class_dict": classes}))
    with pytest.raises(DatasetError, match="mini-imagenet-cache-test.pkl") as err:
        load(tmp_path)
    one_line(err)
    assert phrase in str(err.value) and "download it again" in str(err.value)


@pytest.mark.parametrize("download", [False, True])
def test_missing_root_lists_both_layouts(tmp_path, download):
    with pytest.raises(DatasetNotFoundError) as err:
        load(tmp_path / "nowhere", download=download)
    message = one_line(err)
    assert isinstance(err.value, FileNotFoundError)
    assert "mini-imagenet-cache-{train,val,test}.pkl" in message and "train.csv" in message
    assert ("no working official download" in message) == download


def test_partial_pickles_name_the_missing_one(tmp_path, images):
    write_mini_pickles(tmp_path, images)
    (tmp_path / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(DatasetNotFoundError, match="mini-imagenet-cache-val.pkl missing") as err:
        load(tmp_path)
    one_line(err)


@pytest.mark.parametrize("damage", ["truncated", "missing", "bad header", "uneven classes"])
def test_bad_csv_form_names_the_file(tmp_path, images, damage):
    tables = write_mini_csv(tmp_path, images)
    name = tables["test"][2]["filename"]
    image = tmp_path / "images" / name
    if damage == "truncated":
        image.write_bytes(image.read_bytes()[:300])
        culprit = name
    elif damage == "missing":
        image.unlink()
        culprit = name
    else:
        table = tmp_path / "test.csv"
        lines = table.read_text().splitlines()
        lines = ["file,class", *lines[1:]] if damage == "bad header" else lines[:-1]
        table.write_text("\n".join(lines) + "\n")
        culprit = "test.csv"
    with pytest.raises(DatasetError, match=culprit) as err:
        load(tmp_path, cache=False)
    one_line(err)
    assert isinstance(err.value, FileNotFoundError) == (damage == "missing")
