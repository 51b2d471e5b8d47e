"""ViT as a detection backbone: MMPretrain's VisionTransformer inside an
MMDetection DETR, tuned in the backbone and in the transformer."""
import torch

from mmpetl.models import PETLModel, build_inner_model
from tests.conftest import det_batch, small_detr_cfg, tensor_outputs


def detr_with_vit_backbone():
    cfg = small_detr_cfg()
    cfg['backbone'] = dict(
        type='mmpretrain.VisionTransformer',
        arch=dict(embed_dims=64, num_layers=2, num_heads=4,
                  feedforward_channels=128),
        img_size=64, patch_size=16, out_type='featmap', drop_rate=0.0,
        init_cfg=None)
    cfg['neck']['in_channels'] = [64]
    return cfg


def test_etta_in_vit_backbone_and_transformer_exact_at_init():
    cfg = detr_with_vit_backbone()
    torch.manual_seed(0)
    vanilla = build_inner_model(cfg)
    vanilla.init_weights()
    tuners = [dict(type='ParallelAdapter',
                   presets=['backbone_ffn', 'ffn'], bottleneck=8),
              dict(type='LoRA', presets=['backbone_attn'], rank=2)]
    petl = PETLModel(model=cfg, tuners=tuners, trainable=['bbox_head'])
    result = petl.load_state_dict(vanilla.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    names = {n for n, _ in petl.tuner_modules()}
    assert 'backbone.layers.1.ffn.adapter' in names
    assert 'backbone.layers.0.attn.qkv.lora' in names
    assert 'encoder.layers.0.ffn.adapter' in names
    vanilla.eval(), petl.eval()
    with torch.no_grad():
        for a, b in zip(tensor_outputs(petl, 'detr'),
                        tensor_outputs(vanilla, 'detr')):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # ETTA's scaled prefixes go into the ViT backbone's attention too
    etta = PETLModel(model=cfg, trainable=['bbox_head'], tuners=[
        dict(type='ScaledPrefix', presets=['backbone_attn', 'attn'],
             num_prefix=4)])
    assert 'backbone.layers.0.attn.prefix' in {
        n for n, _ in etta.tuner_modules()}
    inputs, samples = det_batch()
    losses = etta(inputs, samples, mode='loss')
    loss, _ = etta.parse_losses(losses)
    loss.backward()
    prefix = etta.backbone.layers[0].attn.prefix
    assert prefix.prefix_k.grad is not None
