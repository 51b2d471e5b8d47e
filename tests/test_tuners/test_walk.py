"""iter_tuners, tuner_parameter_ids and tuner_key_prefixes: tuners found
structurally, the one walk every room uses."""
import torch.nn as nn

from mmpetl.tuners import (LoRALinear, ParallelAdapter, iter_tuners,
                           tuner_key_prefixes, tuner_parameter_ids)


def _model():
    model = nn.Module()
    model.body = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model.body[0].lora = LoRALinear.from_host(model.body[0], rank=2)
    model.adapter = ParallelAdapter.from_host(model.body[1])
    model.again = model.adapter  # one tuner under two names
    model.head = nn.Linear(8, 2)
    return model


def test_iter_tuners_finds_each_tuner_once_in_module_order():
    model = _model()
    found = list(iter_tuners(model))
    assert [n for n, _ in found] == ['body.0.lora', 'adapter']
    assert [t for _, t in found] == [model.body[0].lora, model.adapter]
    assert list(iter_tuners(model.head)) == []
    assert list(iter_tuners(model.adapter)) == [('', model.adapter)]


def test_tuner_parameters_and_state_keys():
    model = _model()
    ids = tuner_parameter_ids(model)
    tuner_params = [p for _, t in iter_tuners(model) for p in t.parameters()]
    assert tuner_params and ids == {id(p) for p in tuner_params}
    assert not ids & {id(p) for p in model.head.parameters()}
    prefixes = tuner_key_prefixes(model)
    assert prefixes == ('body.0.lora.', 'adapter.')
    tuner_keys = {k for k in model.state_dict() if k.startswith(prefixes)}
    expected = {f'{n}.{k}' for n, t in iter_tuners(model)
                for k in t.state_dict()}
    assert tuner_keys == expected and tuner_keys
    assert tuner_key_prefixes(model.head) == ()
