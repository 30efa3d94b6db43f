import pytest
from omegaconf import OmegaConf

from harness.config import compose
from harness.errors import DataError
from tasks import create_task
from tests.fixtures import make_cifar10


def _task(root):
    return create_task(compose(["task=resnet56", f"data.root={root}"]))


def test_reads_the_real_cifar10_pickle_format(tmp_path):
    make_cifar10(tmp_path, per_batch=6, n_test=8)
    train, test = _task(tmp_path).datasets()
    assert (len(train), len(test)) == (30, 8)
    x, y = train[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < 10


def test_limits_give_fixed_subsets(tmp_path):
    make_cifar10(tmp_path)
    cfg = compose(["task=resnet56", f"data.root={tmp_path}", "data.limit_train=7", "data.limit_val=3"])
    train, test = create_task(cfg).datasets()
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
