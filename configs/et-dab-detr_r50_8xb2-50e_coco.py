# ET-DAB-DETR on COCO: DAB-DETR R50 (MMDetection 3.x) frozen, ETTA's tuners
# and the heads trained (decoder attention: ConditionalAttention, as in
# Conditional DETR). Start from MMDetection's checkpoint at `load_from`.
#
# The method itself is configs/methods/etta_dab-detr_r50_coco.py (one source of
# truth); this entry names the schedule its base trains with (8 GPUs x 2
# images, 50 epochs), as MMDetection names configs.
_base_ = ['./methods/etta_dab-detr_r50_coco.py']
