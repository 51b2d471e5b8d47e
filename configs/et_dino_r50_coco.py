# ET-DINO on COCO: DINO 4-scale R50 (MMDetection 3.x) frozen, ETTA's tuners
# (parallel adapters in every FFN, scaled prefixes in every attention:
# deformable and multi-head) and the heads trained, with DINO's denoising
# label embedding (new with new classes). Start from MMDetection's DINO
# checkpoint at `load_from`; tuner keys are reported missing, as expected.
_base_ = [
    './_base_/archs/dino-4scale_r50_coco.py',
    './_base_/tuners/etta.py',
]
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
