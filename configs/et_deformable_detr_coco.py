# ET-Deformable-DETR on COCO, the entry the README and the mission name:
# Deformable DETR R50 (MMDetection 3.x) frozen, ETTA's tuners (parallel
# adapters in every FFN, scaled prefixes in every attention) and the heads
# trained. Start from a full Deformable DETR checkpoint at `load_from`
# (MMDetection's model zoo; or --cfg-options load_from=...). Tuner keys are
# reported as missing; that is expected.
#
# The same config under MMDetection's naming scheme:
# configs/et-deformable-detr_r50_16xb2-50e_coco.py (which inherits the
# method, configs/methods/etta_deformable-detr_r50_coco.py).
_base_ = ['./et-deformable-detr_r50_16xb2-50e_coco.py']
