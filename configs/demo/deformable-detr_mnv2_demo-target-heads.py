# Target domain, heads only (linear-probe-like baseline): everything frozen
# except the detection heads (classifiers + box MLPs), no tuners.
_base_ = [
    './deformable-detr_mnv2_demo-target-full.py',
    '../_base_/petl_runtime.py',
]

detector = _base_.model
model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=detector,
    tuners=[],
    trainable=['bbox_head'])

optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(lr=1e-3))
