import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN

from mmpetl.tuners import ParallelAdapter


def make_ffn(dims=32, hidden=64):
    return FFN(embed_dims=dims, feedforward_channels=hidden,
               ffn_drop=0.0).eval()


def test_exact_at_init_and_formula_after():
    ffn = make_ffn()
    x = torch.randn(2, 5, 32)
    base = ffn(x)
    adapter = ParallelAdapter.from_host(ffn, bottleneck=8, scale=0.5)
    adapter.attach(ffn)
    assert torch.equal(ffn(x), base)  # up and biases are zero
    nn.init.normal_(adapter.branch.up.weight)
    manual = adapter.branch.up(torch.relu(adapter.branch.down(x)))
    torch.testing.assert_close(ffn(x), base + 0.5 * manual)


def test_identity_argument_is_kept():
    """Pre-norm layers (ViT) call ffn(ln(x), identity=x)."""
    ffn = make_ffn()
    x, identity = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    adapter = ParallelAdapter.from_host(ffn, bottleneck=4)
    adapter.attach(ffn)
    nn.init.normal_(adapter.branch.up.weight)
    expected = identity + ffn.layers(x) + adapter(x)
    torch.testing.assert_close(ffn(x, identity=identity), expected)


@pytest.mark.parametrize('layer_norm,learnable', [(False, False),
                                                  (True, True)])
def test_parameter_count_closed_form(layer_norm, learnable):
    d, b = 32, 12
    adapter = ParallelAdapter.from_host(make_ffn(d), bottleneck=b,
                                        layer_norm=layer_norm,
                                        learnable_scale=learnable)
    expected = 2 * d * b + b + d + (2 * d if layer_norm else 0) + int(
        learnable)
    assert adapter.num_train_params() == expected


def test_linear_host_and_gradients():
    lin = nn.Linear(16, 16)
    adapter = ParallelAdapter.from_host(lin, bottleneck=4,
                                        learnable_scale=True)
    adapter.attach(lin)
    lin(torch.randn(3, 16)).sum().backward()
    # zero-init up: `up` gets gradient at step 0, down does not yet
    assert adapter.branch.up.weight.grad.abs().sum() > 0
    assert adapter.scale.grad is not None


@pytest.mark.parametrize('bad', [0, -1, 3.0, '8'])
def test_bad_bottleneck(bad):
    with pytest.raises(ValueError, match='bottleneck'):
        ParallelAdapter.from_host(make_ffn(), bottleneck=bad)


def test_non_square_linear_is_refused():
    with pytest.raises(TypeError, match='d -> d'):
        ParallelAdapter.from_host(nn.Linear(4, 8), bottleneck=2)
