# VPT-deep (ViT only): 10 new prompt tokens before every transformer layer.
tuners = [dict(type='VPT', presets=['backbone'], num_prompts=10, deep=True)]
extra_trainable = []
