# ViT-B/16 (MMPretrain ImageClassifier) on CIFAR-100 in mmpetl.PETLModel,
# frozen, with a new 100-class head: a method config adds `tuners`. Put the
# CIFAR-100 python archive's contents (cifar-100-python/) in data/cifar100
# and an ImageNet-pretrained ViT-B/16 checkpoint at `load_from`.
_base_ = [
    'mmpretrain::_base_/models/vit-base-p16.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
    '../petl_runtime.py',
]

classifier = _base_.model
classifier.backbone.init_cfg = None
classifier.head.num_classes = 100
heads = ['head']

model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=classifier,
    tuners=[],
    trainable=heads)

# CIFAR images are 32x32: ViT-B/16 sees them at 224. No downloads: a
# missing dataset is an error naming the folder.
train_pipeline = [
    dict(type='RandomResizedCrop', scale=224, backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=224, backend='pillow'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    dataset=dict(pipeline=train_pipeline, download=False))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline, download=False))
test_dataloader = val_dataloader

optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.05))
param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', T_max=200,
                       by_epoch=True)

# load_from: the model-zoo URL the OpenMMLab metafile lists (MMEngine
# downloads it once into ~/.cache/torch/hub/checkpoints). Offline, point it
# at a local copy: --cfg-options load_from=checkpoints/<file>.pth; the tuner
# checkpoint pins the base by tensor content, so URL or file pin alike.
load_from = 'https://download.openmmlab.com/mmclassification/v0/vit/finetune/vit-base-p16_in21k-pre-3rdparty_ft-64xb64_in1k-384_20210928-98e8652b.pth'  # noqa
