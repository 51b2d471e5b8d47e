# etta on DINO 5-scale Swin-L: ET-DINO Swin-L (configs/et_dino_swin-l_coco.py)
# - etta.py's adapters and prefixes in every FFN and attention, the Swin
# backbone's included.
_base_ = ['../et_dino_swin-l_coco.py']
