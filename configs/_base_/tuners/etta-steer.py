# ETTA with steering prefixes, for the deformable DETR family (Deformable
# DETR, DINO): ETTA's parallel adapters beside every FFN, and its scaled
# prefixes acting where each attention decides. A variant of ETTA, named as
# such: the paper's prefix only adds values beside the attention.
#
# * deformable attention (encoder self-attention, decoder cross-attention):
#   form='steer+parallel': per head a = softmax(q P_k^T), s * a S added to
#   MSDA's sampling offsets and attention logits (where and how much it
#   samples, per query) plus ETTA's value branch s_v * W_o Attn(q, P_k, P_v);
# * multi-head attention (decoder self-attention): form='reweight+parallel':
#   q' = q + s * a P_q re-weights the frozen keys, plus the value branch.
#
# init='balanced' (their default): P_k = 0 and the value-like tensors
# centred over the prefixes: exact at init, every non-scale tensor gets a
# gradient at step 0 (docs/methods.md). The measured comparison with ETTA
# and LoRA at one budget: benchmarks/README.md (accuracy).
#
# Budget: ETTA's rule (mmpetl.injection.budget): the prefixes keep at most
# the paper's share of the tuner parameters (11.1 %: b=400, l=50 on ViT-B).
# The steering values cost 3*l*H*L*P per deformable attention (3,072 at
# l=8, 8 heads, 4 levels, 4 points), so at ~5 % of Deformable DETR R50 the
# rule gives l=8, b=296 (`tools/misc/plan_budget.py CONFIG --methods
# etta-steer --targets 5`; DINO 4-scale R50: b=201). Measured on the demo
# transfer at 5 %, 3 seeds: 0.259 mAP at l=8 vs 0.220 at ETTA's l=50 (which
# left the adapters b=53); benchmarks/README.md (accuracy).
tuners = [
    dict(type='ParallelAdapter', presets=['ffn'], bottleneck=296, scale=1.0),
    dict(type='ScaledPrefix', presets=['encoder_self_attn',
                                       'decoder_cross_attn'],
         num_prefix=8, form='steer+parallel'),
    dict(type='ScaledPrefix', presets=['decoder_self_attn'], num_prefix=8,
         form='reweight+parallel'),
]
extra_trainable = []
