# U-Tuning's sequential Dual-U-Tuner: the unified tuner after every
# attention block and FFN (out = OP(x) + U(OP(x))).
tuners = [dict(type='UTuner', presets=['attn', 'ffn'], bottleneck=64,
               form='sequential')]
extra_trainable = []
