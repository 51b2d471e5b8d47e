# Activation checkpointing (mmpetl.models.checkpointing): the encoder and
# decoder layers, tuners inside included, keep only their inputs and are
# recomputed in backward (one more forward of them per step, far less
# memory). A PETL config turns it on with this base and one line:
#
#   _base_ = [..., '../_base_/activation_checkpointing.py']
#   model = dict(
#       ..., activation_checkpointing=_base_.activation_checkpointing)
#
# (MMEngine refuses a `model` key in two bases of one config, hence a
# variable rather than `model = dict(...)` here.) Presets: encoder_layers,
# decoder_layers, backbone_stages (ResNet stages, ViT layers); module names
# work too. Nothing to recompute in a layer no gradient passes through (a
# frozen layer before the first tuner): it runs as is. The layers' forward
# keeps their dropout masks (CPU) and deformable attention outputs for the
# recomputation; dict(layers=[...], keep=[]) recomputes everything.
activation_checkpointing = ['encoder_layers', 'decoder_layers']
