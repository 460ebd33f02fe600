"""Tests for jaxopt_ft.data: offline builders, loading, subsets and batch iterators."""

import itertools
import os
import random
import socket

import mnist1d.data
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxopt_ft import data
from jaxopt_ft.data import builders

DIGITS_TEST_PER_CLASS = [45, 46, 44, 46, 45, 46, 45, 45, 43, 45]


class JaxoptFtTestImages(tfds.core.GeneratorBasedBuilder):
    """A tiny uint8 image dataset, prepared locally to exercise the generic TFDS reading path."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 1)}

    def _generate_examples(self, n, seed):
        images = self.images(n, seed)
        for i in range(n):
            yield i, {"image": images[i], "label": i % 3}

    @staticmethod
    def images(n, seed):
        rng = np.random.default_rng(seed)
        # Channels with different ranges, so per-channel statistics differ.
        return (rng.integers(0, 256, (n, 4, 4, 3)) // np.array([1, 2, 4])).astype(np.uint8)


def _block_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def mnist1d_reference():
    return mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())


def _toy(n=10, num_classes=3, feature_shape=(2,)):
    """Rows whose x encodes the row index, so selected rows can be identified."""
    index = np.arange(n, dtype=np.float32).reshape(n, *[1] * len(feature_shape))
    x = index * np.ones(feature_shape, np.float32)
    label = (np.arange(n) % num_classes).astype(np.int32)
    return data.Dataset(x=x, label=label, num_classes=num_classes, name="toy")


def _rows(batch):
    return batch["x"][:, 0].astype(int)


# Builders and loading.


def test_builtin_names_are_ours_in_the_tfds_registry():
    assert data.BUILTIN == ("mnist1d", "digits")
    assert tfds.builder_cls("mnist1d") is builders.Mnist1d
    assert tfds.builder_cls("digits") is builders.Digits


def test_prepare_and_load_without_network(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    np.random.seed(7)
    random.seed(7)
    expected_draws = (np.random.rand(), random.random())
    np.random.seed(7)
    random.seed(7)

    train = data.load("mnist1d", "train", data_dir=str(tmp_path))
    test = data.load("digits", "test", data_dir=str(tmp_path))

    assert train.x.shape == (4000, 40) and test.x.shape == (450, 8, 8, 1)
    for name in data.BUILTIN:
        files = sorted(os.listdir(tmp_path / name / "1.0.0"))
        assert f"{name}-train.array_record-00000-of-00001" in files
        assert f"{name}-test.array_record-00000-of-00001" in files
    # Generating mnist1d reseeds the global generators; the caller's streams must be untouched.
    assert (np.random.rand(), random.random()) == expected_draws


def test_mnist1d_equals_the_package_generation(data_dir, mnist1d_reference):
    ref = mnist1d_reference
    for split, x_key, y_key in [("train", "x", "y"), ("test", "x_test", "y_test")]:
        raw = builders.read("mnist1d", split, data_dir=data_dir)
        assert raw.x.dtype == np.float32 and raw.label.dtype == np.int32
        np.testing.assert_array_equal(raw.x, ref[x_key].astype(np.float32))
        np.testing.assert_array_equal(raw.label, ref[y_key])


def test_mnist1d_load_shapes_and_train_normalisation(data_dir, mnist1d_reference):
    train = data.load("mnist1d", "train", data_dir=data_dir)
    test = data.load("mnist1d", "test", data_dir=data_dir)
    assert train.x.shape == (4000, 40) and test.x.shape == (1000, 40)
    assert train.x.dtype == test.x.dtype == np.float32
    assert train.label.dtype == test.label.dtype == np.int32
    assert (train.num_classes, train.name) == (10, "mnist1d")
    raw_train = mnist1d_reference["x"].astype(np.float32)
    mean, std = raw_train.astype(np.float64).mean(), raw_train.astype(np.float64).std()
    raw_test = mnist1d_reference["x_test"].astype(np.float32)
    np.testing.assert_allclose(test.x, (raw_test - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([train.x.mean(), train.x.std()], [0.0, 1.0], atol=1e-5)
    np.testing.assert_array_equal(test.label, mnist1d_reference["y_test"])


def test_digits_split_is_stratified_and_documented(data_dir):
    train = data.load("digits", "train", data_dir=data_dir)
    test = data.load("digits", "test", data_dir=data_dir)
    assert train.x.shape == (1347, 8, 8, 1) and test.x.shape == (450, 8, 8, 1)
    assert train.x.dtype == np.float32 and train.label.dtype == np.int32
    assert np.bincount(test.label).tolist() == DIGITS_TEST_PER_CLASS
    assert np.bincount(train.label).tolist() == [133, 136, 133, 137, 136, 136, 136, 134, 131, 135]

    digits = load_digits()
    rows_train, rows_test = train_test_split(
        np.arange(1797), test_size=0.25, stratify=digits.target, random_state=0
    )
    for split, rows in [("train", np.sort(rows_train)), ("test", np.sort(rows_test))]:
        raw = builders.read("digits", split, data_dir=data_dir)
        assert raw.x.dtype == np.uint8
        np.testing.assert_array_equal(raw.x[..., 0], digits.images[rows].astype(np.uint8))
        np.testing.assert_array_equal(raw.label, digits.target[rows])

    scaled = digits.images[np.sort(rows_train)] / 16.0
    expected = (digits.images[np.sort(rows_test)] / 16.0 - scaled.mean()) / scaled.std()
    np.testing.assert_allclose(test.x[..., 0], expected, rtol=1e-5, atol=1e-5)


def test_split_slicing_uses_full_train_statistics(data_dir):
    train = data.load("digits", "train", data_dir=data_dir)
    part = data.load("digits", "train[:100]", data_dir=data_dir)
    np.testing.assert_array_equal(part.x, train.x[:100])
    np.testing.assert_array_equal(part.label, train.label[:100])
    assert len(data.load("mnist1d", "test[:25%]", data_dir=data_dir).label) == 250


def test_load_is_cached_and_read_only(data_dir):
    first = data.load("mnist1d", "test", data_dir=data_dir)
    assert data.load("mnist1d", "test", data_dir=data_dir) is first
    with pytest.raises(ValueError, match="read-only"):
        first.x[0, 0] = 1.0
    data.clear_cache()
    again = data.load("mnist1d", "test", data_dir=data_dir)
    assert again is not first
    np.testing.assert_array_equal(again.x, first.x)


def test_num_classes_and_input_shape(data_dir):
    assert data.num_classes("mnist1d", data_dir=data_dir) == 10
    assert data.input_shape("mnist1d", data_dir=data_dir) == (40,)
    assert data.input_shape("digits", data_dir=data_dir) == (8, 8, 1)
    # Known from TFDS's code: no prepared files needed.
    assert data.num_classes("cifar10", data_dir=data_dir) == 10
    assert data.input_shape("mnist", data_dir=data_dir) == (28, 28, 1)


@pytest.mark.parametrize("name", ["nope", "huggingface:mnist", "", "Mnist1D", None])
def test_unknown_dataset_name(name, data_dir):
    with pytest.raises(ValueError, match="Unknown dataset .*mnist1d, digits"):
        data.load(name, "train", data_dir=data_dir)


def test_builtin_dataset_with_a_version_is_refused(data_dir):
    with pytest.raises(ValueError, match="take no config or version; use 'mnist1d'"):
        data.load("mnist1d:1.0.0", "train", data_dir=data_dir)


@pytest.mark.parametrize("split", ["validation", "train[", "Train", "all"])
def test_unknown_split(split, data_dir):
    with pytest.raises(ValueError, match="Unknown split .*'train' or 'test'"):
        data.load("mnist1d", split, data_dir=data_dir)


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    with pytest.raises(ValueError) as info:
        data.load("mnist", "train", data_dir=str(tmp_path))
    message = str(info.value)
    assert "'mnist' is not prepared" in message
    assert f"tfds build mnist --data_dir={tmp_path} --file_format=array_record" in message
    assert not list(tmp_path.glob("mnist/*/*.array_record*"))


def test_prepared_tfds_dataset_normalised_per_channel(data_dir):
    JaxoptFtTestImages(data_dir=data_dir).download_and_prepare(file_format="array_record")
    train = data.load("jaxopt_ft_test_images", "train", data_dir=data_dir)
    test = data.load("jaxopt_ft_test_images", "test", data_dir=data_dir)
    assert train.x.shape == (30, 4, 4, 3) and test.x.shape == (9, 4, 4, 3)
    assert test.label.tolist() == [0, 1, 2] * 3 and test.num_classes == 3
    scaled = JaxoptFtTestImages.images(30, 0) / 255.0
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    assert std[0] > 1.5 * std[2]  # really per channel
    expected = (JaxoptFtTestImages.images(9, 1) / 255.0 - mean) / std
    np.testing.assert_allclose(test.x, expected, rtol=1e-5, atol=1e-5)


def test_mock_data_cifar10(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        train = data.load("cifar10", "train", data_dir=str(tmp_path))
        test = data.load("cifar10", "test", data_dir=str(tmp_path))
    for ds in (train, test):
        assert ds.x.shape == (12, 32, 32, 3) and ds.x.dtype == np.float32
        assert ds.label.shape == (12,) and ds.label.dtype == np.int32
        assert ds.label.min() >= 0 and ds.label.max() < 10
        assert (ds.num_classes, ds.name) == (10, "cifar10")
    np.testing.assert_allclose(train.x.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


# Batches.


def test_train_batches_resume_exactly():
    ds = _toy(n=23)
    steps = 20  # several epochs of 23 // 5 = 4 steps
    full = [_rows(b) for b in itertools.islice(data.train_batches(ds, batch_size=5, seed=3), steps)]
    for start in [1, 4, 7, 13]:
        resumed = data.train_batches(ds, batch_size=5, seed=3, start_step=start)
        for step in range(start, steps):
            np.testing.assert_array_equal(_rows(next(resumed)), full[step])
    for step in [0, 5, 19]:
        np.testing.assert_array_equal(
            _rows(data.batch_at(ds, batch_size=5, seed=3, step=step)), full[step]
        )


def test_train_batches_shuffle_each_epoch_without_repeats():
    ds = _toy(n=23)
    batches = list(itertools.islice(data.train_batches(ds, batch_size=5, seed=0), 8))
    assert all(b["x"].shape == (5, 2) and b["label"].dtype == np.int32 for b in batches)
    epoch0 = np.concatenate([_rows(b) for b in batches[:4]])
    epoch1 = np.concatenate([_rows(b) for b in batches[4:]])
    assert len(set(epoch0)) == 20 and len(set(epoch1)) == 20
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(batches[0]["label"], _rows(batches[0]) % 3)
    other_seed = data.batch_at(ds, batch_size=5, seed=1, step=0)
    assert not np.array_equal(_rows(other_seed), _rows(batches[0]))


@pytest.mark.parametrize("batch_size", [0, -1, 24])
def test_train_batches_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=f"batch_size={batch_size}"):
        data.train_batches(_toy(n=23), batch_size=batch_size, seed=0)


def test_train_batches_bad_seed_and_step():
    with pytest.raises(ValueError, match="seed=-1"):
        data.train_batches(_toy(), batch_size=2, seed=-1)
    with pytest.raises(ValueError, match="start_step=-2"):
        data.train_batches(_toy(), batch_size=2, seed=0, start_step=-2)


@pytest.mark.parametrize("n, batch_size, num_batches", [(10, 4, 3), (8, 4, 2), (3, 8, 1)])
def test_eval_batches_pad_and_mask(n, batch_size, num_batches):
    ds = _toy(n=n, feature_shape=(2, 3))
    batches = list(data.eval_batches(ds, batch_size=batch_size))
    assert len(batches) == num_batches
    for b in batches:
        assert b["x"].shape == (batch_size, 2, 3) and b["label"].shape == (batch_size,)
        assert b["mask"].dtype == np.float32 and b["label"].dtype == np.int32
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [1.0] * n + [0.0] * (num_batches * batch_size - n)
    real = mask.astype(bool)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches])[real], ds.x)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[real], ds.label)
    assert not np.concatenate([b["x"] for b in batches])[~real].any()


def test_eval_batches_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size=0"):
        data.eval_batches(_toy(), batch_size=0)


# Subsets.


def test_subset_per_class_is_exact_and_seeded(data_dir):
    train = data.load("digits", "train", data_dir=data_dir)
    small = data.subset(train, per_class=7, seed=0)
    assert np.bincount(small.label).tolist() == [7] * 10
    assert small.num_classes == 10 and small.x.shape == (70, 8, 8, 1)
    again = data.subset(train, per_class=7, seed=0)
    np.testing.assert_array_equal(again.x, small.x)
    other = data.subset(train, per_class=7, seed=1)
    assert not np.array_equal(other.x, small.x)


def test_subset_fraction_is_stratified(data_dir):
    train = data.load("digits", "train", data_dir=data_dir)
    counts = np.bincount(train.label)
    tenth = data.subset(train, fraction=0.1, seed=0)
    assert np.bincount(tenth.label).tolist() == [round(0.1 * c) for c in counts]
    assert data.subset(train, fraction=1.0, seed=5).x.shape == train.x.shape


def test_subset_classes_are_relabelled_in_order():
    ds = _toy(n=30, num_classes=10)
    picked = data.subset(ds, per_class=2, classes=[7, 5, 6], seed=0)
    assert picked.num_classes == 3 and picked.label.dtype == np.int32
    assert np.bincount(picked.label).tolist() == [2, 2, 2]
    original = picked.x[:, 0].astype(int) % 10
    np.testing.assert_array_equal(np.array([7, 5, 6])[picked.label], original)
    rows = picked.x[:, 0]
    assert np.all(np.diff(rows) > 0)  # original order kept
    everything = data.subset(ds, classes=range(5), seed=0)
    assert len(everything.label) == 15 and everything.num_classes == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fraction": 0.0}, r"fraction=0.0 is outside \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction=1.5 is outside \(0, 1\]"),
        ({"per_class": 0}, "per_class=0 must be an integer >= 1"),
        ({"per_class": 4}, "per_class=4 but class 0 .* has only 3 examples"),
        ({"fraction": 0.5, "per_class": 1}, "pass only one"),
        ({}, "fraction, per_class or classes"),
        ({"classes": [1, 1]}, r"classes=\[1, 1\] must be distinct ids in 0..2"),
        ({"classes": [3]}, r"classes=\[3\] must be distinct ids in 0..2"),
    ],
)
def test_subset_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.subset(_toy(n=9), seed=0, **kwargs)
