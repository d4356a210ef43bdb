"""Invariants of the device-resident N-way K-shot sampler (REFERENCE.md section 4)."""

import pytest
import torch
from conftest import GPU

from reptile_exp.data.fewshot import FewShotClassification, FewShotSplit

NUM_CLASSES, PER_CLASS = 12, 8


SPLITS = ("train", "val", "test")


def identity_splits(num_classes: int = NUM_CLASSES, per_class: int = PER_CLASS) -> dict[str, FewShotSplit]:
    """Images whose pixels spell out (class, example, split): pixel (0, 0) = class id, pixel (0, 1) = example id,
    pixel (1, 0) = the split's index in SPLITS (the splits' images differ only there)."""
    images = torch.zeros(num_classes, per_class, 1, 2, 2, dtype=torch.uint8)
    images[:, :, 0, 0, 0] = torch.arange(num_classes).unsqueeze(1)
    images[:, :, 0, 0, 1] = torch.arange(per_class)
    names = [f"c{i}" for i in range(num_classes)]
    splits = {s: FewShotSplit(images.clone(), names) for s in SPLITS}
    for i, s in enumerate(SPLITS):
        splits[s].images[:, :, 0, 1, 0] = i
    return splits


def split_of(x: torch.Tensor) -> set[str]:
    """The splits the images in (T, n, 1, 2, 2) come from."""
    return {SPLITS[i] for i in x[..., 0, 1, 0].long().unique().tolist()}


def ids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id, example id) of every image in (T, n, 1, 2, 2)."""
    return x[..., 0, 0, 0].long(), x[..., 0, 0, 1].long()


@pytest.fixture
def data() -> FewShotClassification:
    return FewShotClassification(identity_splits(), n_way=5, k_shot=2, train_shots=3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_task_structure(x, y, shots, x_query=None, query_shots=0):
    """Distinct classes per task, label j = one class, distinct examples per class (support + query)."""
    num_tasks, n_way = y.shape[0], y.shape[1] // shots
    assert torch.equal(y, torch.arange(n_way).repeat_interleave(shots).expand(num_tasks, -1))
    cls, ex = ids(x.view(num_tasks, n_way, shots, *x.shape[2:]))
    assert (cls == cls[:, :, :1]).all(), "every example of a label comes from one class"
    for t in range(num_tasks):
        assert len(set(cls[t, :, 0].tolist())) == n_way, "classes of a task are distinct"
    if x_query is not None:
        q_cls, q_ex = ids(x_query.view(num_tasks, n_way, query_shots, *x.shape[2:]))
        assert torch.equal(q_cls, cls[:, :, :1].expand(-1, -1, query_shots)), "query j comes from label j's class"
        ex = torch.cat([ex, q_ex], dim=2)
    per_class = ex.sort(dim=2).values
    assert (per_class[..., 1:] != per_class[..., :-1]).all(), "examples of a class are distinct (query included)"


def test_train_tasks(data):
    tb = data.sample_train(num_tasks=40, steps=7, batch=4, generator=gen())
    assert tb.x.shape == (40, 15, 1, 2, 2) and tb.x.dtype == torch.float32
    assert tb.y.shape == (40, 15) and tb.y.dtype == torch.int64
    assert tb.x_query is None and tb.y_query is None
    assert tb.batches.shape == (40, 7, 4) and 0 <= tb.batches.min() and tb.batches.max() < 15
    check_task_structure(tb.x, tb.y, shots=3)
    assert split_of(tb.x) == {"train"}


def test_train_tasks_with_query_shots(data):
    tb = data.sample_train(num_tasks=40, steps=2, batch=15, generator=gen(), replacement=True, query_shots=4)
    assert tb.x_query.shape == (40, 20, 1, 2, 2)
    assert torch.equal(tb.y_query, torch.arange(5).repeat_interleave(4).expand(40, -1))
    check_task_structure(tb.x, tb.y, shots=3, x_query=tb.x_query, query_shots=4)
    assert split_of(tb.x) == split_of(tb.x_query) == {"train"}


def test_eval_tasks_hold_out_one_query_per_class(data):
    tb = data.sample_eval(num_tasks=50, steps=9, batch=3, generator=gen(), split="test")
    assert tb.x.shape == (50, 10, 1, 2, 2) and tb.x_query.shape == (50, 5, 1, 2, 2)
    assert torch.equal(tb.y_query, torch.arange(5).expand(50, -1))
    assert tb.batches.shape == (50, 9, 3) and 0 <= tb.batches.min() and tb.batches.max() < 10
    check_task_structure(tb.x, tb.y, shots=2, x_query=tb.x_query, query_shots=1)
    assert split_of(tb.x) == split_of(tb.x_query) == {"test"}
    val = data.sample_eval(num_tasks=5, steps=1, batch=1, generator=gen(), split="val")
    assert split_of(val.x) == split_of(val.x_query) == {"val"}


def test_labels_follow_a_random_class_order(data):
    tb = data.sample_eval(num_tasks=200, steps=1, batch=1, generator=gen(), split="val")
    cls = ids(tb.x_query)[0]
    sorted_tasks = (cls[:, 1:] > cls[:, :-1]).all(dim=1).float().mean().item()
    assert sorted_tasks < 0.05, "label j must not be the j-th smallest class"
    assert set(cls.flatten().tolist()) == set(range(NUM_CLASSES)), "every class is drawn"
    assert split_of(tb.x_query) == {"val"}


def test_same_seed_same_tasks_different_seed_different_tasks(data):
    a, b, c = (data.sample_train(8, 5, 4, gen(s), query_shots=1) for s in (3, 3, 4))
    for field in ("x", "y", "batches", "x_query", "y_query"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.x, c.x) and not torch.equal(a.batches, c.batches)
    e1, e2 = data.sample_eval(8, 5, 4, gen(3)), data.sample_eval(8, 5, 4, gen(3))
    assert torch.equal(e1.x, e2.x) and torch.equal(e1.x_query, e2.x_query) and torch.equal(e1.batches, e2.batches)


def test_scale_converts_after_gathering():
    splits = identity_splits()
    data = FewShotClassification(splits, n_way=3, k_shot=1, train_shots=2, scale=1 / 255)
    tb = data.sample_eval(4, 1, 1, gen())
    cls, ex = ids(torch.round(tb.x_query * 255).to(torch.uint8))
    assert tb.x_query.dtype == torch.float32 and tb.x_query.max() <= 1
    # every query image is the stored test image its pixels name, scaled: whole images, from the right split
    assert torch.equal(tb.x_query, splits["test"].images[cls, ex].float() * (1 / 255))
    assert data.input_shape == (1, 2, 2) and data.kind == "classification"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n_way": 13, "k_shot": 1, "train_shots": 1}, "dataset.n_way=13"),
        ({"n_way": 5, "k_shot": 1, "train_shots": 9}, "dataset.train_shots"),
        ({"n_way": 5, "k_shot": 8, "train_shots": 1}, "dataset.k_shot"),
    ],
)
def test_impossible_tasks_raise_one_line_value_error(kwargs, key):
    """Training tasks are checked when the dataset is made; test tasks where they are drawn (protocols.parse checks
    the evaluated splits before a run: a split not evaluated may be smaller)."""
    with pytest.raises(ValueError, match=key) as err:
        FewShotClassification(identity_splits(), **kwargs).sample_eval(1, 1, 1, gen(), "test")
    assert "\n" not in str(err.value)


def test_sampling_errors(data):
    with pytest.raises(ValueError, match="query"):
        data.sample_train(2, 1, 1, gen(), query_shots=6)
    with pytest.raises(ValueError, match="split='nope'"):
        data.sample_eval(2, 1, 1, gen(), split="nope")


def test_to_moves_splits_and_returns_self(data):
    """Moved to the meta device (a device other than the CPU that every machine has; shapes without data): the
    splits live there and so do the tasks drawn with a CPU generator."""
    assert data.to("cpu") is data
    assert data.sample_train(2, 1, 1, gen()).x.device.type == "cpu"
    assert data.to("meta") is data
    assert {s.images.device.type for s in data.splits.values()} == {"meta"}
    for tb in (data.sample_train(2, 1, 1, gen()), data.sample_eval(2, 1, 1, gen())):
        assert {t.device.type for t in (tb.x, tb.y, tb.batches)} == {"meta"}


@pytest.mark.cuda
@pytest.mark.parametrize("generator_device", sorted({GPU, "cpu"}))
def test_tasks_on_gpu(generator_device):
    data = FewShotClassification(identity_splits(), n_way=5, k_shot=2, train_shots=3).to(GPU)
    assert data.splits["train"].images.device.type == GPU
    g = torch.Generator(device=generator_device).manual_seed(0)
    tb = data.sample_eval(30, 4, 3, g)
    assert {t.device.type for t in (tb.x, tb.x_query, tb.batches)} == {GPU}
    check_task_structure(tb.x.cpu(), tb.y.cpu(), 2, tb.x_query.cpu(), 1)


def test_each_class_of_a_task_draws_its_own_examples_uniformly():
    """3 of a class's 8 examples, for each of a task's 5 classes independently (two classes draw the same example ids
    with probability 1/C(8,3) = 1/56) and every example equally often (3/8 of the draws, within 4 standard errors)."""
    fewshot = FewShotClassification(identity_splits(per_class=8), n_way=5, k_shot=1, train_shots=3)
    tasks = fewshot.sample_train(2000, 1, 1, torch.Generator().manual_seed(0))
    examples = tasks.x[:, :, 0, 0, 1].long()  # (tasks, 15) example ids
    by_class = examples.gather(1, tasks.y.argsort(dim=1, stable=True)).view(2000, 5, 3).sort(-1).values
    assert (by_class[:, 0] == by_class[:, 1]).all(-1).double().mean() < 0.1
    share = torch.bincount(by_class.flatten(), minlength=8).double() / (2000 * 5)
    assert ((share - 3 / 8).abs() < 4 * (3 / 8 * 5 / 8 / (2000 * 5)) ** 0.5).all(), share
