# LoRA on the attention projections (fused q/k/v + out_proj of
# MultiheadAttention; value/output/offset Linears of deformable attention)
# and on the FFN Linears.
tuners = [dict(type='LoRA', presets=['attn', 'ffn'], rank=16, alpha=16)]
extra_trainable = []
