# ET-DINO on COCO: DINO 4-scale R50 (MMDetection 3.x) frozen, ETTA's tuners
# (parallel adapters in every FFN, scaled prefixes in every attention:
# deformable and multi-head) and the heads trained, with DINO's denoising
# label embedding (new with new classes). Start from MMDetection's DINO
# checkpoint at `load_from`; tuner keys are reported missing, as expected.
#
# The method itself is configs/methods/etta_dino-4scale_r50_coco.py (one source
# of truth); this entry names the schedule its base trains with (8 GPUs x 2
# images, 12 epochs), as MMDetection names configs.
_base_ = ['./methods/etta_dino-4scale_r50_coco.py']
