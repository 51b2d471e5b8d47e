"""Per-sample task routing (mmpetl.tuners.routing) on single tuners."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN

from mmpetl.tuners import ParallelAdapter, RoutingError, TaskGroups
from mmpetl.tuners.lora import LoRALinear
from mmpetl.tuners.routing import batch_dim_of, route_call, swapped

# fp32 "equal": a routed group runs its matmuls on a slice of the batch,
# which BLAS may block and sum in another order than the whole batch
# (measured up to 4e-6 on values ~1 on a 2-core Intel Xeon); a sample
# routed to the wrong task differs by O(1)
TOL = dict(rtol=1.3e-6, atol=1e-5)


def _tasks(tuner, count, seed=0):
    """``count`` random tensor sets for ``tuner`` (its state_dict keys)."""
    gen = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(v.shape, generator=gen)
             for k, v in tuner.state_dict().items()} for _ in range(count)]


def _alone(host, tuner, tensors, x):
    """What the host computes with one task's tensors loaded."""
    tuner.load_state_dict(tensors)
    with torch.no_grad():
        return host(x)


@pytest.mark.parametrize('rows_per_sample', [1, 3])
def test_adapter_routes_each_sample_through_its_task(rows_per_sample):
    """Samples 0, 2 -> task 0, sample 1 -> task 1, sample 3 -> task 2; a
    sample may hold several contiguous rows (Swin-like windows)."""
    host = nn.Linear(8, 8)
    tuner = ParallelAdapter.from_host(host, bottleneck=4)
    tuner.attach(host)
    tasks = _tasks(tuner, 3)
    x = torch.randn(4 * rows_per_sample, 5, 8)
    owner = [0, 1, 0, 2]
    tuner.routing = TaskGroups(4, [
        (torch.tensor([0, 2]), tasks[0], 'a'),
        (torch.tensor([1]), tasks[1], 'b'),
        (torch.tensor([3]), tasks[2], 'c')])
    with torch.no_grad():
        routed = host(x)
    tuner.routing = None
    for t in range(3):
        alone = _alone(host, tuner, tasks[t], x)
        for sample, task in enumerate(owner):
            rows = slice(sample * rows_per_sample,
                         (sample + 1) * rows_per_sample)
            if task == t:
                torch.testing.assert_close(routed[rows], alone[rows],
                                           **TOL)
    # the module's own tensors are back: the last task loaded
    assert all(torch.equal(tuner.state_dict()[k], v)
               for k, v in tasks[2].items())


def test_lora_routes_along_the_batch_dim_of_seq_first_tensors():
    """(L, B, d) tensors (torch attention's out_proj): dimension 1."""
    attn = nn.MultiheadAttention(8, 2)
    host = attn.out_proj
    assert batch_dim_of(host) == 1 and batch_dim_of(attn) == 1
    tuner = LoRALinear.from_host(host, rank=2)
    tuner.attach(host)
    tasks = _tasks(tuner, 2, seed=1)
    x = torch.randn(6, 3, 8)  # L=6, B=3
    tuner.routing = TaskGroups(3, [(torch.tensor([0, 2]), tasks[0], 'a'),
                                   (torch.tensor([1]), tasks[1], 'b')])
    with torch.no_grad():
        routed = host(x)
    tuner.routing = None
    first = _alone(host, tuner, tasks[0], x)
    second = _alone(host, tuner, tasks[1], x)
    torch.testing.assert_close(routed[:, [0, 2]], first[:, [0, 2]], **TOL)
    torch.testing.assert_close(routed[:, 1], second[:, 1], **TOL)


def test_batch_dims_of_hosts():
    assert batch_dim_of(FFN(embed_dims=8, feedforward_channels=16)) == 0
    assert batch_dim_of(nn.Linear(4, 4)) == 0
    seq_first = nn.Module()
    seq_first.batch_first = False
    assert batch_dim_of(seq_first) == 1


def test_swapped_restores_tensors_after_an_error():
    layer = nn.Linear(3, 2)
    weight = layer.weight.data_ptr(), layer.weight.detach().clone()
    with pytest.raises(KeyError):
        with swapped(layer, {'weight': torch.zeros(5, 3)}):
            assert layer.weight.shape == (5, 3)  # other shapes allowed
            raise KeyError('boom')
    assert layer.weight.data_ptr() == weight[0]  # the same storage
    assert torch.equal(layer.weight.detach(), weight[1])


def test_outputs_of_other_shapes_are_refused():
    layer = nn.Linear(3, 2)
    groups = TaskGroups(2, [
        (torch.tensor([0]), {'weight': torch.zeros(4, 3),
                             'bias': torch.zeros(4)}, 'a'),
        (torch.tensor([1]), {'weight': torch.zeros(2, 3),
                             'bias': torch.zeros(2)}, 'b')])
    with pytest.raises(RoutingError, match='outputs of different shapes'):
        route_call(layer, (torch.randn(2, 3), ), None, groups, layer, 0,
                   'bbox_head.fc_cls', in_dims=0)


# -- which arguments hold samples is declared, never guessed from sizes ----
def _two_tasks(tuner, seed=2):
    """Samples 0 -> task a, 1 -> task b (B = 2)."""
    tasks = _tasks(tuner, 2, seed=seed)
    return tasks, TaskGroups(2, [(torch.tensor([0]), tasks[0], 'a'),
                                 (torch.tensor([1]), tasks[1], 'b')])


@pytest.mark.parametrize('form', ['joint', 'parallel'])
def test_attend_passes_an_LS_mask_whole(form):
    """An ``(L, S)`` mask (broadcast over samples and heads) with L = B = 2:
    a size heuristic took its rows for samples and gave each sample one
    row of the mask for all its queries."""
    from mmpetl.tuners import ScaledPrefix
    mha = nn.MultiheadAttention(8, 2)
    tuner = ScaledPrefix.from_host(mha, num_prefix=3, init='random',
                                   init_std=1.0, form=form).eval()
    tasks, groups = _two_tasks(tuner)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, n, 4, generator=gen) for n in (2, 5, 5))
    mask = torch.zeros(2, 5)
    mask[0, :3] = float('-inf')  # query 0 sees keys 3, 4; query 1 all
    tuner.routing = groups
    with torch.no_grad():
        routed = tuner.attend(q, k, v, mask)
    tuner.routing = None
    for sample, tensors in enumerate(tasks):
        tuner.load_state_dict(tensors)
        with torch.no_grad():
            alone = tuner.attend(q, k, v, mask)
        torch.testing.assert_close(routed[sample], alone[sample], **TOL)
        if sample == 0:  # what cutting the mask's rows per sample gives
            with torch.no_grad():
                cut = tuner.attend(q[:1], k[:1], v[:1], mask[:1])
            assert (cut[0] - alone[0]).abs().max() > 1e-2


def test_non_batch_arguments_are_passed_whole():
    """``spatial_shapes`` (L, 2) and ``level_start_index`` (L,) with L = B:
    declared None, the routed function gets them whole."""
    layer = nn.Linear(4, 4)
    tasks = [{'weight': torch.randn(4, 4), 'bias': torch.randn(4)}
             for _ in range(2)]
    groups = TaskGroups(2, [(torch.tensor([0]), tasks[0], 'a'),
                            (torch.tensor([1]), tasks[1], 'b')])
    shapes = torch.tensor([[4, 4], [2, 2]])
    start = torch.tensor([0, 16])

    def fn(x, spatial_shapes, level_start_index=None):
        keys = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum()
        return layer(x) * keys + level_start_index.sum()

    x = torch.randn(2, 3, 4)
    routed = route_call(fn, (x, shapes), {'level_start_index': start},
                        groups, layer, 0, 'fn', in_dims=(0, None),
                        kwarg_dims={})
    for sample, tensors in enumerate(tasks):
        with swapped(layer, tensors), torch.no_grad():
            alone = fn(x, shapes, level_start_index=start)
        torch.testing.assert_close(routed[sample], alone[sample], **TOL)


def test_a_declared_argument_of_another_size_is_refused():
    groups = TaskGroups(2, [(torch.tensor([0]), {}, 'a'),
                            (torch.tensor([1]), {}, 'b')])
    with pytest.raises(RoutingError, match=r'declared to hold the 2 samples '
                       r'along dimension 0, but it has shape \(3, 4\)'):
        route_call(lambda x: x, (torch.randn(3, 4), ), None, groups,
                   nn.Identity(), 0, 'fn', in_dims=0)


def test_an_undeclared_per_sample_input_is_refused():
    """A function reading a per-sample input that was passed whole gives
    rows of the whole batch for one sample: refused, not stitched."""
    groups = TaskGroups(2, [(torch.tensor([0]), {}, 'a'),
                            (torch.tensor([1]), {}, 'b')])
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(RoutingError, match=r"task 'a' has 1 of the 2 "
                       r'samples but its routed output has 2 rows.*was '
                       r'passed whole'):
        route_call(lambda a, b: a + b, (x, y), None, groups,
                   nn.Identity(), 0, 'fn', in_dims=(0, None))


def test_serial_adapter_reads_identity_per_sample():
    """SerialAdapter's hook reads the FFN's identity (positional 1 or
    keyword): declared, it is cut with the samples."""
    from mmpetl.tuners import SerialAdapter
    ffn = FFN(embed_dims=8, feedforward_channels=16).eval()
    tuner = SerialAdapter.from_host(ffn, bottleneck=4)
    tuner.attach(ffn)
    tasks, groups = _two_tasks(tuner, seed=4)
    x, identity = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    tuner.routing = groups
    with torch.no_grad():
        routed = (ffn(x, identity), ffn(x, identity=identity))
    tuner.routing = None
    for sample, tensors in enumerate(tasks):
        tuner.load_state_dict(tensors)
        with torch.no_grad():
            alone = ffn(x, identity=identity)
        for out in routed:
            torch.testing.assert_close(out[sample], alone[sample], **TOL)
