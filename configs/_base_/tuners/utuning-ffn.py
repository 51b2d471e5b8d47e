# U-Tuning's FFN-U-Tuner: a parallel unified tuner beside every FFN only
# (out = FFN(x) + U(x)).
tuners = [dict(type='UTuner', presets=['ffn'], bottleneck=64,
               form='parallel')]
extra_trainable = []
