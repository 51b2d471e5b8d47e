# UniPT on Deformable DETR R50 reading the encoder tokens of every feature
# level (enc_min_stride=None; ~22,000 tokens per image at 800x1333),
# measured beside the shipped configs/methods/unipt_deformable-detr_r50_coco.py
# (the default enc_min_stride=32: the stride-32 and -64 levels, as the
# authors' MDETR reads one stride-32 map) in
# benchmarks/results/cpu/unipt_memory_800.md.
_base_ = ['../../configs/methods/unipt_deformable-detr_r50_coco.py']
model = dict(parallel=dict(enc_min_stride=None))
