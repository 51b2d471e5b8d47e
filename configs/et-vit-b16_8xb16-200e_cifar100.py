# ET-ViT on CIFAR-100 (ETTA's classification setting) with MMPretrain's
# CIFAR100 dataset and ImageClassifier: ViT-B/16 frozen, ETTA's tuners
# (configs/_base_/tuners/etta.py: adapters b=256 in every FFN, scaled
# prefixes l=50 in every attention, ~6.3% of the parameters, ETTA's
# budget) and a new 100-class head trained.
#
# The method itself is configs/methods/etta_vit-b16_cifar100.py (one source of
# truth); this entry names the schedule its base trains with (8 GPUs x 16
# images, 200 epochs), as MMDetection names configs.
_base_ = ['./methods/etta_vit-b16_cifar100.py']
