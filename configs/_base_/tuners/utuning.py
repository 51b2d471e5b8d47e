# U-Tuning's Dual-U-Tuner (the paper's best): a parallel unified tuner
# beside every attention block and every FFN (out = OP(x) + U(x)).
# form='sequential' gives the sequential variant (out = OP(x) + U(OP(x))).
tuners = [
    dict(type='UTuner', presets=['attn'], bottleneck=64, form='parallel'),
    dict(type='UTuner', presets=['ffn'], bottleneck=64, form='parallel'),
]
extra_trainable = []
