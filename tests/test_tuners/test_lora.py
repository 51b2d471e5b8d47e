import pytest
import torch
import torch.nn as nn

from mmpetl.tuners import LoRA, LoRAFusedAttention, LoRALinear


def randomise(tuner):
    nn.init.normal_(tuner.lora_B)


def test_linear_exact_at_init_merge_unmerge():
    lin = nn.Linear(12, 20)
    x = torch.randn(4, 12)
    base = lin(x)
    w0 = lin.weight.detach().clone()
    lora = LoRALinear.from_host(lin, rank=3, alpha=6)
    lora.attach(lin)
    assert torch.equal(lin(x), base)
    randomise(lora)
    tuned = lin(x)
    expected = base + 2.0 * x @ lora.lora_A.T @ lora.lora_B.T
    torch.testing.assert_close(tuned, expected)
    lora.merge()
    torch.testing.assert_close(lin(x), tuned, atol=1e-5, rtol=1e-5)
    lora.unmerge()
    torch.testing.assert_close(lin.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(lin(x), tuned)


def test_linear_count():
    lora = LoRALinear.from_host(nn.Linear(12, 20), rank=3)
    assert lora.num_train_params() == 3 * (12 + 20)


def test_fused_attention_exact_count_merge():
    mha = nn.MultiheadAttention(16, 4).eval()
    x = torch.randn(5, 2, 16)
    base, _ = mha(x, x, x)
    hosts = LoRA.resolve_hosts('attn', mha)
    assert [n for n, _ in hosts] == ['attn', 'attn.out_proj']
    tuners = [LoRA.from_host(h, rank=2, alpha=4) for _, h in hosts]
    assert isinstance(tuners[0], LoRAFusedAttention)
    for (_, host), tuner in zip(hosts, tuners):
        tuner.attach(host)
    assert sum(t.num_train_params() for t in tuners) == 4 * 16 * 2 + 2 * 16 * 2
    torch.testing.assert_close(mha(x, x, x)[0], base, atol=1e-6, rtol=1e-5)
    for tuner in tuners:
        randomise(tuner)
    tuned, _ = mha(x, x, x)
    assert not torch.allclose(tuned, base, atol=1e-3)
    for tuner in tuners:
        tuner.merge()
    torch.testing.assert_close(mha(x, x, x)[0], tuned, atol=1e-5, rtol=1e-4)
    # merged weights through torch's own fused kernel give the same result
    plain = nn.MultiheadAttention(16, 4).eval()
    plain.load_state_dict(
        {k: v for k, v in mha.state_dict().items() if 'lora' not in k})
    torch.testing.assert_close(plain(x, x, x)[0], tuned, atol=1e-5,
                               rtol=1e-4)


@pytest.mark.parametrize('bad', [0, -2, 1.5])
def test_bad_rank(bad):
    with pytest.raises(ValueError, match='rank'):
        LoRALinear.from_host(nn.Linear(4, 4), rank=bad)
