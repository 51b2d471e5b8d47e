# ET-ViT on CIFAR-100 (ETTA's classification setting) with MMPretrain's
# CIFAR100 dataset and ImageClassifier: ViT-B/16 frozen, ETTA's tuners and
# a new 100-class head trained. ViT-B's FFNs are 3072 wide and its
# attention 768: ETTA's b~400 and l~50 fit as published.
_base_ = ['./_base_/archs/vit-b16_cifar100.py']
model = dict(
    tuners=[
        dict(type='ParallelAdapter', presets=['ffn'], bottleneck=400),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=50),
    ],
    trainable=_base_.heads)
