# BitFit (Ben Zaken et al.): no new modules; every bias of the model trains
# (a string pattern is a full-name regex over parameter names).
tuners = []
extra_trainable = [r'.*\.bias']
