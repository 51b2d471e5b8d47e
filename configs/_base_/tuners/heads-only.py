# Heads only (linear-probe-like baseline): nothing injected, the detection
# heads train.
tuners = []
extra_trainable = []
