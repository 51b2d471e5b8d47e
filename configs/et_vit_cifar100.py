# ET-ViT on CIFAR-100 (ETTA's classification setting) with MMPretrain's
# CIFAR100 dataset and ImageClassifier: ViT-B/16 frozen, ETTA tuners and a
# new 100-class head trained. Put the CIFAR-100 python archive contents in
# data/cifar100 and an ImageNet-pretrained ViT-B/16 checkpoint at load_from.
_base_ = [
    'mmpretrain::_base_/models/vit-base-p16.py',
    'mmpretrain::_base_/datasets/cifar100_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
    './_base_/petl_runtime.py',
]

classifier = _base_.model
classifier.backbone.init_cfg = None
classifier.head.num_classes = 100

# ViT-B's FFNs are 3072 wide, its attention 768: ETTA's b~400 and l~50 fit
# as published.
model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=classifier,
    tuners=[
        dict(type='ParallelAdapter', presets=['ffn'], bottleneck=400),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=50),
    ],
    trainable=['head'])

# CIFAR images are 32x32: ViT-B/16 sees them at 224
train_pipeline = [
    dict(type='RandomResizedCrop', scale=224, backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='Resize', scale=224, backend='pillow'),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-3, weight_decay=0.05))
param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', T_max=200,
                       by_epoch=True)

load_from = 'checkpoints/vit-base-p16_in21k-pre-3rdparty_ft-64xb64_in1k-384_20210928-98e8652b.pth'  # noqa
