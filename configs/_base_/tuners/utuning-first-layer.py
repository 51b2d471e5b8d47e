# U-Tuning's "first layer only": a Dual-U-Tuner in the first layer(s) alone
# (U-Tuning reports it matches the previous best with >10x fewer params).
tuners = [
    dict(type='UTuner', presets=['first_layer_attn', 'first_layer_ffn'],
         bottleneck=64, form='parallel'),
]
extra_trainable = []
