# U-Tuning's MHA-U-Tuner: a parallel unified tuner beside every attention
# block only (out = Attn(x) + U(x)).
tuners = [dict(type='UTuner', presets=['attn'], bottleneck=64,
               form='parallel')]
extra_trainable = []
