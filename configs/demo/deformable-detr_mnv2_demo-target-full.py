# Target domain, full fine-tuning: the source detector (load_from) trained
# end to end on the target classes (Sandal ... Ankle boot, coloured
# garments). The reference the PETL runs compare with. The other target
# configs inherit data, schedule and load_from from this one.
_base_ = './deformable-detr_mnv2_demo-source.py'

# the source checkpoint has every weight (the backbone's included)
model = dict(backbone=dict(pretrained=False))

data_root = 'data/petl_demo/'
metainfo = dict(classes=('Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'))
train_dataloader = dict(
    dataset=dict(metainfo=metainfo, ann_file='target/train.json'))
val_dataloader = dict(
    dataset=dict(metainfo=metainfo, ann_file='target/val.json'))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'target/val.json')
test_evaluator = val_evaluator

max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=25),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=2e-4))
default_hooks = dict(checkpoint=dict(interval=max_iters))

# The source run's checkpoint (its work_dir is work_dirs/<config name>).
# The classifiers' shapes match (5 classes each) and are re-trained.
load_from = 'work_dirs/deformable-detr_mnv2_demo-source/iter_400.pth'
