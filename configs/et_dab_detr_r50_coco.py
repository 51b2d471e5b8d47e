# ET-DAB-DETR on COCO: DAB-DETR R50 (MMDetection 3.x) frozen, ETTA's tuners
# and the heads trained (decoder attention: ConditionalAttention, as in
# Conditional DETR). Start from MMDetection's checkpoint at `load_from`.
_base_ = [
    './_base_/archs/dab-detr_r50_coco.py',
    './_base_/tuners/etta.py',
]
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
