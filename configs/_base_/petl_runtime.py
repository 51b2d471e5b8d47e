# What every mmpetl training run adds to an MMDetection/MMPretrain config:
# the freezing optimizer constructor and the parameter hooks.
custom_hooks = [
    dict(type='mmpetl.ParamReportHook'),  # table of trainable/frozen groups
    dict(type='mmpetl.FrozenCheckHook'),  # frozen weights bit-identical
]
