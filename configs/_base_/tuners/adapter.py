# Parallel adapters beside every FFN only (He et al.): ETTA without the
# prefixes. See etta.py for the choice of bottleneck.
tuners = [
    dict(type='ParallelAdapter', presets=['ffn'], bottleneck=256, scale=1.0),
]
extra_trainable = []
