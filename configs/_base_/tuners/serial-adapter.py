# Serial (Houlsby) adapters after every FFN's MLP, before its residual.
tuners = [dict(type='SerialAdapter', presets=['ffn'], bottleneck=64)]
extra_trainable = []
