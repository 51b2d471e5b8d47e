# ET-DETR on COCO: DETR R50 (MMDetection 3.x) frozen, ETTA's tuners and the
# heads trained. Start from a full DETR checkpoint at `load_from`.
#
# The method itself is configs/methods/etta_detr_r50_coco.py (one source of
# truth); this entry names the schedule its base trains with (8 GPUs x 2
# images, 150 epochs), as MMDetection names configs.
_base_ = ['./methods/etta_detr_r50_coco.py']
