# BitFit (Ben Zaken et al.): no new modules; every bias of the model trains
# (list items are names or dotted suffixes: 'bias' selects every '*.bias').
tuners = []
extra_trainable = ['bias']
