# ET-Deformable-DETR on COCO: Deformable DETR R50 (MMDetection 3.x) frozen,
# ETTA's tuners (parallel adapters in every FFN, scaled prefixes in every
# attention) and the heads trained. Start from a full Deformable DETR
# checkpoint at `load_from` (MMDetection's model zoo; or --cfg-options
# load_from=...). Tuner keys are reported as missing; that is expected.
#
# The method itself is configs/methods/etta_deformable-detr_r50_coco.py (one
# source of truth); this entry names the schedule its base trains with (16 GPUs
# x 2 images, 50 epochs), as MMDetection names configs.
_base_ = ['./methods/etta_deformable-detr_r50_coco.py']
