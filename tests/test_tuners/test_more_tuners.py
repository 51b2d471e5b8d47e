"""Serial adapter, U-Tuner and VPT against their formulas."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention

from mmpetl.tuners import SerialAdapter, UTuner


def ffn(d=16):
    return FFN(embed_dims=d, feedforward_channels=32, ffn_drop=0.0).eval()


def test_serial_adapter_formula():
    host = ffn()
    x, identity = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    base = host(x, identity=identity)
    tuner = SerialAdapter.from_host(host, bottleneck=4, scale=0.5)
    tuner.attach(host)
    assert torch.equal(host(x, identity=identity), base)
    nn.init.normal_(tuner.branch.up.weight)
    m = host.layers(x)
    expected = identity + m + 0.5 * tuner.branch(m)
    torch.testing.assert_close(host(x, identity=identity), expected)
    assert tuner.num_train_params() == 2 * 16 * 4 + 4 + 16


@pytest.mark.parametrize('form', ['parallel', 'sequential'])
def test_utuner_on_attention(form):
    host = MultiheadAttention(16, 4, batch_first=True).eval()
    q, pos = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    base = host(q, query_pos=pos)
    tuner = UTuner.from_host(host, bottleneck=4, form=form)
    tuner.attach(host)
    assert torch.equal(host(query=q, query_pos=pos), base)
    nn.init.normal_(tuner.branch.up.weight)
    source = q if form == 'parallel' else base
    torch.testing.assert_close(host(query=q, query_pos=pos),
                               base + tuner.branch(source))


def test_utuner_bad_form():
    with pytest.raises(ValueError, match="'parallel' or 'sequential'"):
        UTuner.from_host(ffn(), form='serial')
