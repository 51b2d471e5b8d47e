# VPT-shallow (ViT only): 10 prompt tokens before the first layer.
tuners = [dict(type='VPT', presets=['backbone'], num_prompts=10, deep=False)]
extra_trainable = []
