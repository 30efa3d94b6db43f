from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.config import compose
from harness.core.errors import DataError
from tasks import create_task
from tests.fixtures import make_cifar10


def _task(root, *extra):
    # The generated pickles are not the official archive: skip its md5 check unless a test asks for it.
    return create_task(compose(["task=resnet56", f"data.root={root}", "data.check_integrity=false", *extra]))


def test_reads_the_real_cifar10_pickle_format(tmp_path):
    make_cifar10(tmp_path, per_batch=6, n_test=8)
    train, test = _task(tmp_path).datasets()
    assert (len(train), len(test)) == (30, 8)
    x, y = train[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < 10


def test_limits_give_fixed_subsets(tmp_path):
    make_cifar10(tmp_path)
    train, test = _task(tmp_path, "data.limit_train=7", "data.limit_val=3").datasets()
    assert (len(train), len(test)) == (7, 3)


def test_missing_data_names_path_and_both_fixes(tmp_path):
    with pytest.raises(DataError) as e:
        _task(tmp_path / "nowhere").datasets()
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "data.root=" in msg and "data.download=true" in msg


def test_corrupted_pickle_names_the_file(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        _task(tmp_path).datasets()


def test_config_has_the_paper_recipe():
    cfg = compose(["task=resnet56"])
    assert OmegaConf.to_container(cfg.train) | {} == OmegaConf.to_container(cfg.train)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay) == (160, 128, 0.1, 5e-4)
    assert list(cfg.train.milestones) == [80, 120]


def test_integrity_check_names_the_first_file_off_the_official_md5_and_the_fix(tmp_path):
    make_cifar10(tmp_path)
    with pytest.raises(DataError) as e:
        _task(tmp_path, "data.check_integrity=true").datasets()
    assert "data_batch_1" in str(e.value) and "data.check_integrity=false" in str(e.value)


def test_integrity_check_passes_files_that_match_the_md5_list(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import calculate_md5

    folder = make_cifar10(tmp_path)
    md5 = {p.name: calculate_md5(str(p)) for p in folder.iterdir()}
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    train, _ = _task(tmp_path, "data.check_integrity=true").datasets()
    assert len(train) == 50
    (folder / "data_batch_4").write_bytes((folder / "data_batch_4").read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match="data_batch_4"):
        _task(tmp_path, "data.check_integrity=true").datasets()


CIFAR10_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-dev"


@pytest.mark.skipif(not CIFAR10_DEV.is_dir(), reason=f"no real-image subset at {CIFAR10_DEV}")
def test_loads_the_real_cifar10_dev_subset_without_the_md5_check():
    train, val = _task(CIFAR10_DEV).datasets()
    assert (len(train), len(val)) == (4065, 1020)
    with pytest.raises(DataError, match="data.check_integrity=false"):
        _task(CIFAR10_DEV, "data.check_integrity=true").datasets()
