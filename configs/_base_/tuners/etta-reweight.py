# ETTA with re-weighting prefixes, for models whose attentions all have keys
# (DETR, Conditional DETR, DAB-DETR, ViT): ETTA's parallel adapters beside
# every FFN, and in every attention form='reweight+parallel': per head
# a = softmax(q P_k^T), q' = q + s * a P_q (a query-conditioned re-weighting
# of the frozen keys, which the paper's value-only prefix cannot do) plus
# ETTA's value branch s_v * Attn(q, P_k, P_v). A variant of ETTA, named as
# such. init='balanced' (the default of this form): exact at init, every
# non-scale tensor gets a gradient at step 0 (docs/methods.md). Measured
# against ETTA and LoRA at one budget: benchmarks/README.md (accuracy).
#
# Budget: ETTA's rule (mmpetl.injection.budget: the prefixes keep at most
# the paper's 11.1 % of the tuner parameters) at ~5 % of DETR R50 gives
# l=16, b=288 (`tools/misc/plan_budget.py CONFIG --methods etta-reweight
# --targets 5`; ViT-B/16: b=216; Conditional DETR: l=8, b=323).
tuners = [
    dict(type='ParallelAdapter', presets=['ffn'], bottleneck=288, scale=1.0),
    dict(type='ScaledPrefix', presets=['attn'], num_prefix=16,
         form='reweight+parallel'),
]
extra_trainable = []
