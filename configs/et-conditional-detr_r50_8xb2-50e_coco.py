# ET-Conditional-DETR on COCO: Conditional DETR R50 (MMDetection 3.x)
# frozen, ETTA's tuners and the heads trained. The decoder's
# ConditionalAttention takes the prefixes (cross-attention: P_k in its
# concatenated content+positional key space). Start from MMDetection's
# checkpoint at `load_from`.
#
# The method itself is configs/methods/etta_conditional-detr_r50_coco.py (one
# source of truth); this entry names the schedule its base trains with (8 GPUs
# x 2 images, 50 epochs), as MMDetection names configs.
_base_ = ['./methods/etta_conditional-detr_r50_coco.py']
