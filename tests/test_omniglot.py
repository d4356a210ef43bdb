"""Omniglot loader: layouts, the official split and rotations, cache, errors (REFERENCE.md section 4)."""

import io
import os
import random
import re
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from PIL import Image
from synthetic_data import ALPHABETS, SmallOmniglot, omniglot_pngs, png_bytes, write_omniglot

import reptile_exp.data.omniglot as omniglot
from reptile_exp import protocols
from reptile_exp.data.fewshot import DatasetError, DatasetNotFoundError
from reptile_exp.errors import ConfigError
from reptile_exp.experiment import build_dataset

REAL_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


@pytest.fixture(scope="module")
def pngs() -> dict[str, bytes]:
    return omniglot_pngs()


@pytest.fixture
def root(tmp_path, pngs) -> Path:
    return write_omniglot(tmp_path / "omniglot", pngs)


def reference_pixels(png: bytes, rotation: int = 0) -> np.ndarray:
    """The official code's image: PIL resize to 28x28 (nearest for 1-bit), then rotate."""
    return np.array(Image.open(io.BytesIO(png)).resize((28, 28)).rotate(rotation), dtype=np.uint8)


def official_split(pngs: dict[str, bytes], num_train: int = 30) -> tuple[list[str], list[str]]:
    """The official read_dataset + split_dataset: sorted alphabets, sorted characters, random.seed(0) shuffle."""
    chars = sorted({tuple(p.split("/")[1:3]) for p in pngs})
    state = random.getstate()
    random.seed(0)
    random.shuffle(chars)
    random.setstate(state)
    names = ["/".join(c) for c in chars]
    return names[:num_train], names[num_train:]


def no_decoding(*args):
    raise AssertionError("decoded although the cache is valid")


def drawings_of(pngs: dict[str, bytes], name: str) -> list[bytes]:
    return [pngs[p] for p in sorted(pngs) if "/".join(p.split("/")[1:3]) == name]


def test_random_instance_shuffle_equals_official_global_shuffle():
    state = random.getstate()
    random.seed(0)
    official = list(range(1623))
    random.shuffle(official)
    random.setstate(state)
    ours = list(range(1623))
    random.Random(0).shuffle(ours)
    assert ours == official


@pytest.mark.parametrize("layout", ["zip", "folders", "torchvision"])
def test_layouts_give_the_official_split(tmp_path, pngs, layout):
    ds = SmallOmniglot(str(write_omniglot(tmp_path / layout, pngs, layout)), n_way=5, k_shot=1)
    train, test = official_split(pngs)
    assert ds.splits["test"].class_names == test
    assert ds.splits["train"].class_names == [f"{n}/rot{r}" for n in train for r in (0, 90, 180, 270)]
    assert set(ds.splits) == {"train", "test"}
    assert ds.splits["train"].images.shape == (120, 20, 1, 28, 28)
    assert ds.splits["test"].images.shape == (10, 20, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28) and ds.splits["test"].images.dtype == torch.uint8
    assert sorted({n.split("/")[0] for n in train + test}) == sorted(ALPHABETS)


@pytest.mark.parametrize("layout", ["zip", "folders"])
def test_the_drawings_are_in_name_order_however_the_files_were_packed(tmp_path, pngs, layout):
    """A zip or folder written in reverse order decodes to the same images: example j of a class is its j-th drawing
    by file name, so one seed draws the same tasks from any packing of the data."""
    packed = SmallOmniglot(str(write_omniglot(tmp_path / "sorted", pngs, layout)), cache=False)
    backwards = dict(reversed(pngs.items()))
    reverse = SmallOmniglot(str(write_omniglot(tmp_path / "reverse", backwards, layout)), cache=False)
    for split in ("train", "test"):
        assert reverse.splits[split].class_names == packed.splits[split].class_names
        assert torch.equal(reverse.splits[split].images, packed.splits[split].images)


def test_macos_metadata_in_zips_is_ignored(root, pngs):
    with zipfile.ZipFile(root / "images_background.zip", "a") as z:
        name = sorted(p for p in pngs if p.startswith("images_background"))[0]
        z.writestr("__MACOSX/" + name.replace("/0", "/._0"), b"resource fork")
        z.writestr(name.replace("/0", "/._0"), b"resource fork")
    assert SmallOmniglot(str(root)).splits["test"].num_classes == 10


def test_pixels_are_pil_resized_and_rotated(root, pngs):
    ds = SmallOmniglot(str(root))
    train, test = official_split(pngs)
    for i in (0, 7):
        for j, png in enumerate(drawings_of(pngs, test[i])[:3]):
            assert np.array_equal(ds.splits["test"].images[i, j, 0].numpy(), reference_pixels(png))
    for i in (0, 29):
        png = drawings_of(pngs, train[i])[5]
        for r in range(4):
            assert np.array_equal(ds.splits["train"].images[4 * i + r, 5, 0].numpy(), reference_pixels(png, 90 * r))
    values = ds.splits["train"].images
    assert set(values.unique().tolist()) == {0, 1} and values.float().mean() > 0.5, "0/1, background 1"


def test_val_characters_come_from_the_end_of_train_unrotated(root, pngs):
    ds = SmallOmniglot(str(root), val_characters=6)
    train, test = official_split(pngs)
    assert ds.splits["val"].class_names == train[24:]
    assert ds.splits["train"].class_names[::4] == [f"{n}/rot0" for n in train[:24]]
    assert ds.splits["test"].class_names == test
    assert ds.splits["val"].images.shape == (6, 20, 1, 28, 28)
    for i in (0, 5):  # the characters' drawings as decoded, not rotated
        for j in (0, 13):
            png = drawings_of(pngs, train[24 + i])[j]
            assert np.array_equal(ds.splits["val"].images[i, j, 0].numpy(), reference_pixels(png))
    with pytest.raises(ValueError, match="dataset.val_characters"):
        SmallOmniglot(str(root), val_characters=30)


def _refusal(dataset, n_way: int, val: int) -> str | None:
    try:
        dataset.split_classes(n_way, val)
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("dataset", [SmallOmniglot, omniglot.Omniglot], ids=["small", "real-counts"])
def test_every_split_refusal_names_a_fix_that_is_accepted(dataset):
    """Each (n_way, val_characters) that split_classes refuses names the key to change and a value; following the
    fixes splits, each key changed at most once (no fix that cannot hold, as 'set it <= -23800' for n_way=100000, or
    'set it <= 22' that a val split then refuses)."""
    n = dataset.num_train
    ways = sorted({1, 2, 5, n // 2, n - 1, n, n + 1, 2 * n, 4 * n - 1, 4 * n, 4 * n + 1, 25 * n})
    vals = sorted({0, 1, 4, 5, n // 3, n // 2, n - 3, n - 1})
    refused = 0
    for setting in ((n_way, val) for n_way in ways for val in vals):
        refused += _refusal(dataset, *setting) is not None
        changed = set()
        while message := _refusal(dataset, *setting):
            fix = re.search(r"set (dataset\.n_way|it) (<=|>=|to) (-?\d+)", message)
            assert fix and fix[1] not in changed, message
            changed.add(fix[1])
            setting = (int(fix[3]), setting[1]) if fix[1] == "dataset.n_way" else (setting[0], int(fix[3]))
            assert setting[0] >= 1 and 0 <= setting[1] < n, message
    assert refused >= 10


def test_sampled_tasks_use_the_omniglot_splits(root):
    """Training tasks are images of the (rotated) train split, evaluation tasks (the default split) of the test
    split, none of the other's."""
    ds = SmallOmniglot(str(root), n_way=5, k_shot=1, train_shots=10)

    def images(x: torch.Tensor) -> list[bytes]:
        return [img.to(torch.uint8).numpy().tobytes() for img in x.reshape(-1, 28, 28)]

    train, test = (set(images(ds.splits[s].images)) for s in ("train", "test"))
    assert not train & test
    tb = ds.sample_train(3, 5, 10, torch.Generator().manual_seed(0))
    assert tb.x.shape == (3, 50, 1, 28, 28) and set(tb.x.unique().tolist()) == {0.0, 1.0}
    assert set(images(tb.x)) <= train
    tb = ds.sample_eval(3, 50, 5, torch.Generator().manual_seed(0))
    assert tb.x.shape == (3, 5, 1, 28, 28) and tb.x_query.shape == (3, 5, 1, 28, 28)
    assert set(images(tb.x)) | set(images(tb.x_query)) <= test


def test_cache_is_reused_without_decoding(root, monkeypatch):
    first = SmallOmniglot(str(root))
    cache = root / ".reptile_exp_cache" / "omniglot-v1.pt"
    mtime = cache.stat().st_mtime_ns
    monkeypatch.setattr(omniglot, "decode_png", no_decoding)
    second = SmallOmniglot(str(root), val_characters=5)
    assert cache.stat().st_mtime_ns == mtime
    assert torch.equal(first.splits["test"].images, second.splits["test"].images)


def test_stale_cache_is_rebuilt(root, pngs):
    SmallOmniglot(str(root))
    name = sorted(p for p in pngs if p.startswith("images_evaluation"))[0]
    changed = {**pngs, name: png_bytes(~np.eye(105, dtype=bool))}
    write_omniglot(root, changed)
    with pytest.warns(UserWarning, match="does not match"):
        ds = SmallOmniglot(str(root))
    char = "/".join(name.split("/")[1:3])
    split = "test" if char in ds.splits["test"].class_names else "train"
    names = [n.removesuffix("/rot0") for n in ds.splits[split].class_names]
    assert np.array_equal(ds.splits[split].images[names.index(char), 0, 0].numpy(), reference_pixels(changed[name]))


def test_a_source_replaced_with_one_of_its_size_invalidates_the_cache(root):
    """The cache key holds each source's mtime, not only its size: the same bytes touched (as a same-size replacement
    would leave them) are decoded again."""
    SmallOmniglot(str(root))
    source = root / "images_evaluation.zip"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="does not match"):
        SmallOmniglot(str(root))


def test_a_cache_decoded_for_other_counts_is_not_reused(root):
    """The cache key holds the counts the loader expects: a loader expecting one more character decodes the zips
    again and names the mismatch, instead of serving the cache built for 40."""
    SmallOmniglot(str(root))

    class OneMoreCharacter(SmallOmniglot):
        expected = (4, 41, 20)

    with pytest.warns(UserWarning, match="does not match"), pytest.raises(DatasetError, match="expected 4 and 41"):
        OneMoreCharacter(str(root))


def test_corrupt_cache_is_rebuilt(root):
    first = SmallOmniglot(str(root))
    cache = root / ".reptile_exp_cache" / "omniglot-v1.pt"
    cache.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        second = SmallOmniglot(str(root))
    assert torch.equal(first.splits["train"].images, second.splits["train"].images)
    assert cache.stat().st_size > 1000


DAMAGES = {  # a cache with the right key whose content another program (or a crash) left wrong
    "fewer_characters": lambda d: {**d, "images": d["images"][:10], "names": d["names"][:10]},
    "more_names": lambda d: {**d, "names": d["names"] + d["names"][:20]},
    "one_drawing_each": lambda d: {**d, "images": d["images"][:, 0].clone()},
    "fewer_drawings": lambda d: {**d, "images": d["images"][:, :3].clone()},
    "float_pixels": lambda d: {**d, "images": d["images"].float()},
    "no_names": lambda d: {"images": d["images"]},
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES)
def test_a_cache_with_damaged_content_is_rebuilt(root, damage):
    """The content is checked against the counts the loader expects, not only the key: a damaged cache is decoded
    again (it was an IndexError, a KeyError, or a run on 10 characters) and written whole."""
    first = SmallOmniglot(str(root))
    cache = root / ".reptile_exp_cache" / "omniglot-v1.pt"
    saved = torch.load(cache, weights_only=True)
    torch.save({**saved, "data": damage(saved["data"])}, cache)
    with pytest.warns(UserWarning, match="is damaged"):
        second = SmallOmniglot(str(root))
    for split in ("train", "test"):
        assert torch.equal(first.splits[split].images, second.splits[split].images)
    assert torch.equal(torch.load(cache, weights_only=True)["data"]["images"], saved["data"]["images"])


def test_unwritable_cache_falls_back_to_no_cache(root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="cannot write cache"):
        ds = SmallOmniglot(str(root), cache_dir=str(blocker / "cache"))
    assert ds.splits["test"].num_classes == 10


def test_cache_can_be_disabled_or_moved(root, tmp_path):
    SmallOmniglot(str(root), cache=False)
    assert not (root / ".reptile_exp_cache").exists()
    SmallOmniglot(str(root), cache_dir=str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "omniglot-v1.pt").is_file()


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_root_names_the_files_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        SmallOmniglot(str(tmp_path / "nowhere"))
    message = one_line(err)
    assert isinstance(err.value, FileNotFoundError)
    assert "images_background.zip" in message and "images_evaluation.zip" in message
    assert "dataset.download=true" in message and "does not exist" in message


def test_one_missing_zip_is_named(root):
    (root / "images_evaluation.zip").unlink()
    with pytest.raises(DatasetNotFoundError, match="images_evaluation.zip missing") as err:
        SmallOmniglot(str(root))
    one_line(err)


class ZipServer(ThreadingHTTPServer):
    """http.server on 127.0.0.1 (a free port, in a thread): routes[path] = (status, content type, body, declared
    length); `requests` lists the paths asked for. A declared length above len(body) cuts the transfer short."""

    def __init__(self):
        self.routes: dict[str, tuple[int, str, bytes, int]] = {}
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), ZipHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ZipHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        status, kind, body, length = self.server.routes.get(self.path, (404, "text/plain", b"404: Not Found", 14))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A local server the real download code fetches from (REPTILE_EXP_OMNIGLOT_URL points at it)."""
    httpd = ZipServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(omniglot.URL_VARIABLE, httpd.url + "/omniglot/")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(server: ZipServer, name: str, body: bytes, kind: str = "application/zip", length: int | None = None):
    server.routes[f"/omniglot/{name}"] = (200, kind, body, len(body) if length is None else length)


def test_download_fetches_the_missing_zips_once(tmp_path, pngs, server):
    source = write_omniglot(tmp_path / "source", pngs)
    for name in ("images_background.zip", "images_evaluation.zip"):
        serve(server, name, (source / name).read_bytes())
    root = tmp_path / "root"
    ds = SmallOmniglot(str(root), download=True)
    assert server.requests == ["/omniglot/images_background.zip", "/omniglot/images_evaluation.zip"]
    assert (root / "images_background.zip").read_bytes() == (source / "images_background.zip").read_bytes()
    assert torch.equal(ds.splits["test"].images, SmallOmniglot(str(source), cache=False).splits["test"].images)
    SmallOmniglot(str(root), download=True)
    assert len(server.requests) == 2  # found on disk: not fetched again
    assert sorted(p.name for p in root.iterdir()) == [".reptile_exp_cache", *(f"{s}.zip" for s in omniglot.SETS)]


@pytest.mark.parametrize(
    "damage,phrase",
    [
        ("html", "sent an HTML page (an error or login page?), not a zip; check the URL (REPTILE_EXP_OMNIGLOT_URL)"),
        ("cut", "images_background.zip was cut off after 3000 of"),
        ("truncated", "images_background.zip sent 3000 bytes (truncated?), not a zip"),
        ("missing", "images_background.zip answered HTTP 404 Not Found"),
    ],
)
def test_a_failed_download_is_one_line_and_leaves_no_file(tmp_path, pngs, server, damage, phrase):
    """An HTML page, a connection cut off before Content-Length, a truncated zip sent whole, a 404."""
    zipped = (write_omniglot(tmp_path / "source", pngs) / "images_background.zip").read_bytes()
    if damage == "html":
        serve(server, "images_background.zip", b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html")
    elif damage == "cut":
        serve(server, "images_background.zip", zipped[:3000], length=len(zipped))
    elif damage == "truncated":
        serve(server, "images_background.zip", zipped[:3000])
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFoundError) as err:
        SmallOmniglot(str(root), download=True)
    message = one_line(err)
    assert phrase in message and server.url in message
    assert "download failed" in message and "put images_background.zip and images_evaluation.zip" in message
    assert list(root.iterdir()) == []  # nothing half-downloaded that a re-run would take for the data


def test_unreachable_server_says_where_to_put_the_files(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(omniglot.URL_VARIABLE, f"http://127.0.0.1:{port}/")
    with pytest.raises(DatasetNotFoundError, match="download failed") as err:
        SmallOmniglot(str(tmp_path), download=True)
    message = one_line(err)
    assert f"cannot reach http://127.0.0.1:{port}/images_background.zip" in message
    assert "images_background.zip" in message and str(tmp_path) in message


@pytest.mark.parametrize(
    ("url", "where", "phrase"),
    [
        ("mirror.example/omniglot/", "root", "is not a URL (unknown url type"),  # no scheme
        ("http://127.0.0.1:9/", "a_file/root", "cannot create"),  # a root under a file
    ],
)
def test_a_download_that_cannot_start_is_one_line(tmp_path, monkeypatch, url, where, phrase):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(omniglot.URL_VARIABLE, url)
    with pytest.raises(DatasetNotFoundError, match="download failed") as err:
        SmallOmniglot(str(tmp_path / where), download=True)
    assert phrase in one_line(err)


def test_truncated_zip_names_the_file(root):
    path = root / "images_background.zip"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="images_background.zip") as err:
        SmallOmniglot(str(root))
    one_line(err)


@pytest.mark.parametrize("damage", ["truncated", "grayscale"])
def test_bad_png_names_the_file(tmp_path, pngs, damage):
    name = sorted(p for p in pngs if p.startswith("images_evaluation"))[3]
    bad = dict(pngs)
    if damage == "truncated":
        bad[name] = pngs[name][: len(pngs[name]) // 2]
    else:
        buf = io.BytesIO()
        Image.open(io.BytesIO(pngs[name])).convert("L").save(buf, format="PNG")
        bad[name] = buf.getvalue()
    with pytest.raises(DatasetError, match=name) as err:
        SmallOmniglot(str(write_omniglot(tmp_path, bad)), cache=False)
    one_line(err)


def test_corrupt_zip_member_names_the_member(root):
    path = root / "images_evaluation.zip"
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".png"))
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode())  # local header + name, no extra field
    data[start : start + 40] = bytes(40)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=info.filename) as err:
        SmallOmniglot(str(root), cache=False)
    one_line(err)


@pytest.mark.parametrize("drop", ["character", "drawing"])
def test_unexpected_content_says_found_versus_expected(tmp_path, pngs, drop):
    victim = sorted(pngs)[0].rsplit("/", 1)[0]
    kept = {p: d for p, d in pngs.items() if not (p.startswith(victim + "/") and (drop == "character" or "_20" in p))}
    with pytest.raises(DatasetError, match="expected") as err:
        SmallOmniglot(str(write_omniglot(tmp_path, kept)), cache=False)
    message = one_line(err)
    assert ("39 characters" in message) if drop == "character" else ("19 drawings" in message)


def test_real_omniglot(tmp_path, monkeypatch):
    if not (REAL_OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"the real Omniglot zips are not in {REAL_OMNIGLOT}")
    start = time.perf_counter()
    ds = omniglot.Omniglot(str(REAL_OMNIGLOT), cache_dir=str(tmp_path))  # the shared folder stays untouched
    decode_s = time.perf_counter() - start
    assert len(ds.splits["train"].class_names) // 4 + len(ds.splits["test"].class_names) == 1623
    assert ds.splits["train"].images.shape == (4800, 20, 1, 28, 28)
    assert ds.splits["test"].images.shape == (423, 20, 1, 28, 28)
    assert len({n.split("/")[0] for n in ds.splits["train"].class_names + ds.splits["test"].class_names}) == 50
    monkeypatch.setattr(omniglot, "decode_png", no_decoding)
    start = time.perf_counter()
    again = omniglot.Omniglot(str(REAL_OMNIGLOT), cache_dir=str(tmp_path))
    reload_s = time.perf_counter() - start
    assert torch.equal(ds.splits["test"].images, again.splits["test"].images)
    print(f"real Omniglot: decode {decode_s:.2f} s, cache reload {reload_s:.2f} s")


SETTINGS = {  # SmallOmniglot: 30 training characters (120 classes), 10 test characters, 20 drawings each
    "val_too_few": ["dataset.val_characters=1"],
    "val_too_many": ["dataset.val_characters=29"],
    "val_out_of_range": ["dataset.val_characters=30"],
    "val": ["dataset.val_characters=5", "eval_splits=[val,test]"],
    "no_val": ["eval_splits=[val,test]"],
    "maml_query": ["algorithm=maml", "algorithm.query_shots=10"],
    "maml_query_too_many": ["algorithm=maml", "algorithm.query_shots=11"],
    "fomaml_tail": ["algorithm=fomaml", "algorithm.tail_shots=10"],
    "protocol_shots": ["protocols=[{k_shot:1},{k_shot:19}]"],
    "protocol_shots_too_many": ["protocols=[{k_shot:20}]"],
}


@pytest.mark.parametrize("overrides", SETTINGS.values(), ids=SETTINGS)
def test_synthetic_data_splits_and_refuses_as_the_real_data_does(root, tmp_path, overrides):
    """synthetic_data=true builds the splits the real data has with these settings and refuses what it refuses
    (the val_characters checks, a split it lacks, a MAML query or a protocol's K beyond its drawings), and no more."""

    def outcome(*source: str) -> dict | str:
        """The class count of each split built (after a training and a test task of each setting), or the error."""
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose("train", [*given, *source])
        try:
            dataset = build_dataset(cfg)
            listed = protocols.parse(cfg, dataset)
            held_out = max(cfg.algorithm.get(key, 0) for key in ("query_shots", "tail_shots"))
            dataset.sample_train(2, 1, 1, torch.Generator(), query_shots=held_out)
            for p, split in ((p, split) for p in listed for split in cfg.eval_splits):
                dataset.k_shot = p.k_shot
                dataset.sample_eval(2, 1, 1, torch.Generator(), split)
        except ConfigError as e:
            return str(e)
        return {name: s.num_classes for name, s in dataset.splits.items()}

    given = ["experiment=omniglot_5w1s", "dataset._target_=synthetic_data.SmallOmniglot", *overrides]
    real = outcome(f"dataset.root={root}", f"dataset.cache_dir={tmp_path}")
    assert outcome("synthetic_data=true") == real
