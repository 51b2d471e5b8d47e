# ET-Deformable-DETR on COCO: Deformable DETR R50 (MMDetection 3.x) frozen,
# ETTA's tuners (parallel adapters in every FFN, scaled prefixes in every
# attention) and the heads trained. Start from a full Deformable DETR
# checkpoint at `load_from` (MMDetection's model zoo; or --cfg-options
# load_from=...). Tuner keys are reported as missing; that is expected.
_base_ = [
    './_base_/archs/deformable_detr_r50_coco.py',
    './_base_/tuners/etta.py',
]
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
