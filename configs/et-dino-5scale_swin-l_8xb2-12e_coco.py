# ET-DINO Swin-L on COCO: DINO 5-scale Swin-L (MMDetection 3.x, 57-58 AP)
# frozen, ETTA's tuners in the transformer and in the Swin backbone,
# the heads and DINO's label embedding trained. Start from
# MMDetection's DINO Swin-L checkpoint at `load_from`.
#
# The method itself is configs/methods/etta_dino-5scale_swin-l_coco.py (one
# source of truth); this entry names the schedule its base trains with (8 GPUs
# x 2 images, 12 epochs), as MMDetection names configs.
_base_ = ['./methods/etta_dino-5scale_swin-l_coco.py']
