# What every mmpetl training run adds to an MMDetection/MMPretrain config:
# the freezing optimizer constructor and the parameter hooks.
custom_hooks = [
    dict(type='mmpetl.ParamReportHook'),  # table of trainable/frozen groups
    dict(type='mmpetl.FrozenCheckHook'),  # frozen weights bit-identical
    # `<ckpt>_tuner.pth` beside every checkpoint: trainable tensors + meta
    dict(type='mmpetl.TunerCheckpointHook'),
    # stop at a NaN/inf loss before that step is checkpointed
    dict(type='mmpetl.NonFiniteLossHook'),
    # init='activations' prefixes from two training batches, before step 1
    dict(type='mmpetl.TunerInitHook'),
    # tuner scales, prefix shares, update sizes; warns about inert tuners
    dict(type='mmpetl.TunerHealthHook', interval=50),
]
# Import mmpetl when the config is read, before MMDetection's models are:
# this also lets MMDetection's own tools/train.py run these configs, and
# keeps a user's `transformers` from breaking `import mmdet.models`.
custom_imports = dict(imports=['mmpetl'], allow_failed_imports=False)
