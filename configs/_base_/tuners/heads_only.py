# Heads only (linear-probe-like baseline): nothing injected, the detection
# heads train.
tuners = []
trainable = ['bbox_head']
