# Target domain, ET-Deformable-DETR: the source detector frozen, ETTA's
# tuners (parallel FFN adapters + scaled prefixes in every attention) and
# the detection heads trained.
_base_ = [
    './deformable-detr_mnv2_demo-target-full.py',
    '../_base_/tuners/etta.py',
    '../_base_/petl_runtime.py',
]

# d = 128 here. ETTA's rule (give the FFN adapters as much of the budget as
# possible, but never wider than the layer) gives b = d = 128 (33k params
# per FFN); prefixes l = 32 (2*l*d = 8k per attention, 6 attentions).
# With the heads: 250k trainable of 5.0M, 4.96% (<= 10%).
tuners = [
    dict(type='ParallelAdapter', presets=['ffn'], bottleneck=128, scale=1.0),
    # ETTA's default form and init, spelled out (_base_/tuners/etta.py)
    dict(type='ScaledPrefix', presets=['attn'], num_prefix=32,
         form='parallel', init='scaled'),
]
detector = _base_.model
model = dict(
    _delete_=True,
    type='mmpetl.PETLModel',
    model=detector,
    tuners=tuners,
    trainable=['bbox_head'] + _base_.extra_trainable)

# PETL wants a higher lr than full fine-tuning: the tuners start at zero
# (exact base model) and must move far in few iterations.
optim_wrapper = dict(
    constructor='mmpetl.PETLOptimWrapperConstructor',
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(tuner_lr_mult=2.0))
