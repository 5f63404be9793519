import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import (DataConfig, to_signed_unit, DataError, check_data_config, dataset_channels, dataset_fingerprint,
                        load_dataset, reference_uint8, resolve_root)


def test_digits_embedded_default():
    cfg = DataConfig()
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    x, y = train[0]
    assert x.shape == (1, 32, 32) and x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32
    assert 0 <= int(y) <= 9 and dataset_channels(cfg) == 1
    # Fixed, seeded split: same images every time, and train/test disjoint.
    again = load_dataset(cfg, "train")
    assert torch.equal(train.images, again.images)
    assert dataset_fingerprint(train.images) == dataset_fingerprint(again.images)
    assert dataset_fingerprint(train.images) != dataset_fingerprint(test.images)
    # Stratified: all ten classes in the test split.
    assert set(test.labels.tolist()) == set(range(10))


def test_hflip_switch_only_flips():
    ds = load_dataset(DataConfig(hflip=True), "train")
    torch.manual_seed(0)
    seen = {bool(torch.equal(ds[3][0], to_signed_unit(ds.images[3]))) for _ in range(20)}
    assert seen == {True, False}
    plain = load_dataset(DataConfig(hflip=False), "train")
    assert all(torch.equal(plain[3][0], plain[3][0]) for _ in range(3))


def _fake_cifar(root, n=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)
    return folder


def test_cifar10_from_python_batches(tmp_path):
    _fake_cifar(tmp_path)
    cfg = DataConfig(name="cifar10", root=str(tmp_path))
    assert check_data_config(cfg) == []
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    assert len(train) == 50 and len(test) == 10 and dataset_channels(cfg) == 3
    assert train[0][0].shape == (3, 32, 32)
    # The channel-major pickle layout: the first 1024 values are the red plane.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)["data"][0]
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(raw[:1024]))


def test_cifar10_missing_or_malformed_names_layout_and_key(tmp_path):
    cfg = DataConfig(name="cifar10", root=str(tmp_path))
    with pytest.raises(DataError, match="data.root") as e:
        load_dataset(cfg)
    assert "cifar-10-batches-py" in str(e.value)
    assert any("cifar-10-batches-py" in p for p in check_data_config(cfg))
    folder = _fake_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(cfg)
    with pytest.raises(DataError, match="needs data.root"):
        load_dataset(DataConfig(name="cifar10"))


def test_image_folder_centre_crop_resize(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(3):
        arr = np.zeros((40, 60, 3), np.uint8)
        arr[:, 10:50] = 200 + i  # the centre 40x40 square is bright, the side strips dark
        Image.fromarray(arr).save(tmp_path / "sub" / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    cfg = DataConfig(name="image-folder", root=str(tmp_path), resolution=16)
    ds = load_dataset(cfg)
    assert len(ds) == 3 and ds[0][0].shape == (3, 16, 16)
    ref = reference_uint8(ds)
    assert ref.shape == (3, 3, 16, 16) and ref.dtype == torch.uint8
    assert ref.min() >= 195  # the crop removed the dark strips


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_dataset(DataConfig(name="image-folder", root=str(tmp_path)))
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(DataConfig(name="image-folder", root=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="valid: digits, cifar10, image-folder"):
        load_dataset(DataConfig(name="mnist"))
    assert "power of two" in check_data_config(DataConfig(resolution=30))[0]


def test_root_from_wavebench_data_is_expanded_at_load_time_only(tmp_path, monkeypatch):
    _fake_cifar(tmp_path / "cifar10")
    monkeypatch.setenv("WAVEBENCH_DATA", str(tmp_path))
    cfg = DataConfig(name="cifar10", root="$WAVEBENCH_DATA/cifar10")
    assert resolve_root(cfg) == tmp_path / "cifar10"
    assert check_data_config(cfg) == [] and len(load_dataset(cfg, "test")) == 10
    assert cfg.root == "$WAVEBENCH_DATA/cifar10"  # the config keeps the portable form (the job hash uses it)
    # A missing data set under it names the key, what it resolved to and the expected layout.
    img = DataConfig(name="image-folder", root="$WAVEBENCH_DATA/stl10", resolution=8)
    (problem,) = check_data_config(img)
    assert f"data.root=$WAVEBENCH_DATA/stl10 (= {tmp_path / 'stl10'}) is not a folder" in problem
    with pytest.raises(DataError, match="WAVEBENCH_DATA/<data set preset>"):
        load_dataset(img)
    # Unset: an error naming the variable and the layout it should hold, never a literal "$WAVEBENCH_DATA" path.
    monkeypatch.delenv("WAVEBENCH_DATA")
    (problem,) = check_data_config(cfg)
    assert problem.startswith("data.root=$WAVEBENCH_DATA/cifar10 uses $WAVEBENCH_DATA, which is not set")
    assert "$WAVEBENCH_DATA/cifar10 = the folder containing cifar-10-batches-py" in problem
    with pytest.raises(DataError, match=r"\$WAVEBENCH_DATA, which is not set"):
        load_dataset(cfg)
    # Without data.root the error offers both ways.
    with pytest.raises(DataError, match="needs data.root.*WAVEBENCH_DATA"):
        load_dataset(DataConfig(name="image-folder"))
