# Full fine-tuning of ViT-B/16 on CIFAR-100 (the reference): the PETL
# architecture config with every parameter trainable.
_base_ = ['../_base_/archs/vit-b16_cifar100.py']
model = dict(trainable=r'.*', tuners=[])
