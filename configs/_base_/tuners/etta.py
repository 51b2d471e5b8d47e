# ETTA (Efficient Transformer Tuning Architecture): a parallel adapter
# beside every FFN and scaled prefix tuning in every attention. Inherit it
# next to an architecture config and wrap the model in mmpetl.PETLModel
# with `tuners=_base_.tuners`.
#
# Bottleneck: ETTA's b~400 was tuned on ViT-L, whose FFNs are 1024 wide.
# DETR's layers are 256 wide: b=400 would be an expansion, not a
# bottleneck. ETTA's rule gives the FFN adapters as much of the budget as
# possible, so the default is the widest adapter that is still no wider
# than the layer, b = d = 256: with 50 prefixes in every attention and the
# heads trainable this is ~5% of Deformable DETR R50 (ETTA: 6.2% on
# DETR-R101). `tools/misc/plan_budget.py` picks b and l for other budgets.
tuners = [
    dict(type='ParallelAdapter', presets=['ffn'], bottleneck=256, scale=1.0),
    # Scaled prefixes in every attention: Attn + s * Attn(Q, P_k, P_v)
    # (form='parallel', exact at init: s = 1 learnable, P_v = 0, P_k at the
    # scale of the host's keys: init='scaled'); on deformable attention the
    # branch s * W_o * Attn(q, P_k, P_v). ETTA's own joint softmax is
    # form='joint'. The choice is measured in benchmarks/README.md (prefix
    # ablation): prefix-only, the parallel form learned more in both
    # transfers; in ETTA it was the best on detection, within noise on ViT.
    dict(type='ScaledPrefix', presets=['attn'], num_prefix=50,
         form='parallel', init='scaled'),
]
# Beyond the tuners and the heads (the architecture config names them),
# ETTA trains nothing.
extra_trainable = []
