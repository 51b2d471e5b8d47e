# Standard prefix tuning (Li & Liang): s = 1 fixed, 50 prefixes in every
# attention.
tuners = [dict(type='PrefixTuning', presets=['attn'], num_prefix=50)]
extra_trainable = []
