"""dataset_leaves and metainfo_classes: the one walk over dataset wrappers,
on configs and on built datasets."""
from mmengine.config import ConfigDict
from mmengine.dataset import BaseDataset, ConcatDataset, RepeatDataset

from mmpetl.utils import dataset_leaves, metainfo_classes


def test_dataset_leaves_of_a_config_with_keys():
    a = ConfigDict(type='CocoDataset', data_root='a')
    b = ConfigDict(type='CocoDataset', data_root='b')
    c = ConfigDict(type='CocoDataset', data_root='c')
    cfg = ConfigDict(type='ConcatDataset', datasets=[
        dict(type='RepeatDataset', times=2, dataset=a),
        dict(type='ClassBalancedDataset', oversample_thr=0.1, dataset=dict(
            type='ConcatDataset', datasets=[b, c]))])
    leaves = dataset_leaves(cfg, 'test_dataloader.dataset')
    assert [k for k, _ in leaves] == [
        'test_dataloader.dataset.datasets[0].dataset',
        'test_dataloader.dataset.datasets[1].dataset.datasets[0]',
        'test_dataloader.dataset.datasets[1].dataset.datasets[1]']
    assert [d.data_root for _, d in leaves] == ['a', 'b', 'c']
    leaves[1][1].data_root = 'moved'  # the leaves are the config's own
    assert cfg.datasets[1].dataset.datasets[0].data_root == 'moved'


def test_dataset_leaves_of_plain_and_odd_inputs():
    plain = dict(type='CocoDataset')
    assert dataset_leaves(plain) == [('dataset', plain)]
    assert dataset_leaves(None) == [] and dataset_leaves('x') == []
    # a wrapper config holding a built dataset is itself the leaf
    built = BaseDataset(lazy_init=True)
    wrapper = dict(type='RepeatDataset', times=2, dataset=built)
    assert dataset_leaves(wrapper) == [('dataset', wrapper)]


class _Tiny(BaseDataset):
    METAINFO = dict(classes=('cat', 'dog'))

    def load_data_list(self):
        return [dict(x=0)]


def test_dataset_leaves_and_classes_of_built_datasets():
    first, second = _Tiny(), _Tiny()
    built = ConcatDataset([first, second])  # MMEngine's wrappers hold
    leaves = dataset_leaves(built)           # BaseDatasets only
    assert [d for _, d in leaves] == [first, second]
    assert [k for k, _ in leaves] == ['dataset.datasets[0]',
                                      'dataset.datasets[1]']
    assert dataset_leaves(RepeatDataset(first, 2)) == [
        ('dataset.dataset', first)]
    assert metainfo_classes(built) == ('cat', 'dog')
    assert metainfo_classes(first) == ('cat', 'dog')


def test_metainfo_classes_of_configs():
    assert metainfo_classes(dict(metainfo=dict(classes=['a', 'b']))) == (
        'a', 'b')
    assert metainfo_classes(dict(type='CocoDataset')) is None
    assert metainfo_classes(dict(metainfo=dict(classes='a'))) is None
    assert metainfo_classes(object()) is None
