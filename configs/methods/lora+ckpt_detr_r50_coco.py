# lora on detr_r50_coco, encoder and decoder layers checkpointed
# (recomputed in backward): see configs/_base_/activation_checkpointing.py
_base_ = ['./lora_detr_r50_coco.py',
          '../_base_/activation_checkpointing.py']
model = dict(activation_checkpointing=_base_.activation_checkpointing)
