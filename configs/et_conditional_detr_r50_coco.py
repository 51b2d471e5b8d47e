# ET-Conditional-DETR on COCO: Conditional DETR R50 (MMDetection 3.x)
# frozen, ETTA's tuners and the heads trained. The decoder's
# ConditionalAttention takes the prefixes (cross-attention: P_k in its
# concatenated content+positional key space). Start from MMDetection's
# checkpoint at `load_from`.
_base_ = [
    './_base_/archs/conditional-detr_r50_coco.py',
    './_base_/tuners/etta.py',
]
model = dict(tuners=_base_.tuners,
             trainable=_base_.heads + _base_.extra_trainable)
