# UniPT's first mmpetl design (variant='v1': decoder states only, width 64,
# a correction per decoder layer) on Deformable DETR R50: the memory-lean
# UniPT measured beside the authors' design in benchmarks/results/cpu/
# unipt_memory_800.md. Not a shipped method config (configs/methods/ has
# the authors' design as `unipt`).
_base_ = ['../../configs/_base_/archs/deformable-detr_r50_coco.py']
model = dict(
    tuners=[],
    parallel=dict(type='UniPT', variant='v1', bottleneck=64,
                  all_layers=True, lr_mult=2.0),
    trainable=_base_.heads)
