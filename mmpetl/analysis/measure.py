"""Measure one config: parameters, checkpoint sizes, memory and time.

Runs in a process of its own (``tools/analysis_tools/petl_benchmark.py``
starts one per config), so that peak memory belongs to that config alone.
The model is built from the config with random weights (speed and memory do
not depend on their values) and trained on a synthetic batch of the
requested size through the real path: the config's optimizer-wrapper
constructor (only trainable parameters get optimizer state),
``model.train_step`` (data preprocessor, loss, backward, step; autocast
when AMP is on).

Memory (both count weights + gradients + optimizer state + activations):
  * CUDA: ``torch.cuda.max_memory_allocated`` over the training steps (the
    peak is reset after the model and optimizer are built).
  * CPU: PyTorch has no allocator statistics there, so the CPU analogue is
    computed from the profiler: the bytes of the tensors alive before a
    step (parameters, buffers, gradients, optimizer state) plus the peak of
    the running sum of every op's own allocations minus frees during one
    profiled step. The process's peak resident set above its post-import
    baseline (``VmHWM``) is recorded too; it also holds allocator caches
    and oneDNN workspaces, so it is not the number ratios are taken on.

What autograd keeps for backward: one more training forward (with the
loss, no backward) runs under ``saved_tensors_by_module``
(:mod:`mmpetl.analysis.saved_tensors`), which attributes every saved
tensor to the top-level module that saved it (``saved_by_module_mib``;
per layer in ``saved_by_layer_mib``; the inputs that activation
checkpointing holds in ``checkpoint_inputs_mib``, included in
``saved_total_mib``).

Inference latency of a PETL model is compared with its base model (the
inner model built without tuners) in the same process, the two timed in
alternation, so that machine noise and drift hit both alike; the ratio is
of the two medians. The same holds after merging LoRA / folding prefixes.
"""
import io
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from mmpetl.checkpoints import tuner_checkpoint
from .saved_tensors import saved_tensors_by_module

__all__ = ['measure_config', 'synthetic_batch', 'rss_mib', 'reset_peak_rss',
           'peak_rss_mib', 'cpu_tensor_peak_mib', 'deploy', 'median_time',
           'interleaved_medians', 'model_task', 'model_num_classes']


# -- memory --------------------------------------------------------------
def _status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Current resident set size (Linux; NaN elsewhere)."""
    kib = _status_kib('VmRSS')
    return float('nan') if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    kib = _status_kib('VmHWM')
    return float('nan') if kib is None else kib / 1024


# -- inputs --------------------------------------------------------------
def synthetic_batch(task: str, batch: int, size: Tuple[int, int],
                    num_classes: int, boxes_per_image: int = 6,
                    seed: int = 0) -> Dict:
    """A batch in the format the data preprocessor takes (uint8 images).

    ``size`` is (height, width); detection samples carry random boxes.
    """
    gen = torch.Generator().manual_seed(seed)
    height, width = size
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, height, width),
                                    generator=gen, dtype=torch.uint8))
        if task == 'detection':
            from mmdet.structures import DetDataSample
            from mmengine.structures import InstanceData
            sample = DetDataSample()
            sample.set_metainfo(dict(img_shape=(height, width),
                                     ori_shape=(height, width),
                                     scale_factor=(1.0, 1.0)))
            xy = torch.rand(boxes_per_image, 2, generator=gen) * 0.7
            wh = 0.05 + torch.rand(boxes_per_image, 2, generator=gen) * 0.25
            boxes = torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=1)
            boxes *= torch.tensor([width, height, width, height])
            sample.gt_instances = InstanceData(
                bboxes=boxes,
                labels=torch.randint(0, num_classes, (boxes_per_image, ),
                                     generator=gen))
        else:
            from mmpretrain.structures import DataSample
            sample = DataSample().set_gt_label(
                int(torch.randint(0, num_classes, (1, ), generator=gen)))
            sample.set_metainfo(dict(img_shape=(height, width)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type != 'cpu':
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def cpu_tensor_peak_mib(model: nn.Module, optimizer, fn: Callable[[], None]
                        ) -> float:
    """Peak MiB of live CPU tensors during one call of ``fn`` (a train step).

    What is alive before it (parameters, buffers, gradients, optimizer
    state) plus the peak of the running sum of the profiler's allocation
    and free records, in time order. Tensors allocated before the profile
    and freed inside it are not seen freeing (the profiler does not know
    their size): gradients are therefore expected to be ``None`` between
    steps, as MMEngine's ``OptimWrapper.update_params`` leaves them.
    """
    from torch.profiler import ProfilerActivity, profile
    state = [v for s in optimizer.state.values() for v in s.values()]
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    before = _tensor_bytes(list(model.parameters()) + list(model.buffers()) +
                           grads + state)
    with profile(activities=[ProfilerActivity.CPU],
                 profile_memory=True) as prof:
        fn()
    records = sorted((e.start_ns(), e.nbytes())
                     for e in prof.profiler.kineto_results.events()
                     if e.name() == '[memory]')
    current = peak = 0
    for _, nbytes in records:
        current += nbytes
        peak = max(peak, current)
    return (before + peak) / 2**20


# -- timing --------------------------------------------------------------
def median_time(fn: Callable[[], None], warmup: int, iters: int,
                sync: Callable[[], None]) -> Tuple[float, List[float]]:
    """Median wall time of ``fn`` in ms after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times), times


def interleaved_medians(fns: List[Callable[[], None]], warmup: int,
                        iters: int, sync: Callable[[], None]) -> List[float]:
    """Median wall time in ms of each of ``fns``, timed in turn
    (``fns[0]``, ``fns[1]``, ..., ``fns[0]``, ...) so drift hits all."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: List[List[float]] = [[] for _ in fns]
    for i in range(iters):
        order = range(len(fns)) if i % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            sync()
            start = time.perf_counter()
            fns[k]()
            sync()
            times[k].append(1000.0 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def _gpu_busy_ms(fn: Callable[[], None], steps: int) -> float:
    """Mean time per step the GPU spent in kernels (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    total_us = 0.0
    for evt in prof.events():
        if getattr(evt, 'device_type', None) == torch.autograd.DeviceType.CUDA:
            total_us += evt.device_time_total  # a kernel or memcpy
    return total_us / 1000.0 / steps


# -- model facts -----------------------------------------------------------
def _serialized_mib(obj) -> float:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes / 2**20


def deploy(model: nn.Module) -> Dict:
    """Merge what can be merged for deployment
    (:meth:`~mmpetl.models.PETLModel.merge_for_deploy`: LoRA into the
    weights, prefix re-parametrisations folded) and count the parameters
    the deployed model still needs."""
    if not hasattr(model, 'merge_for_deploy'):  # a vanilla model
        return dict(deploy_params=sum(p.numel() for p in model.parameters()),
                    lora_merged=0, prefix_folded=0)
    report = model.merge_for_deploy()
    tuners = dict(model.tuner_modules())
    dropped = {id(p) for name in report['merged']
               for p in tuners[name].parameters()}
    params = sum(p.numel() for p in model.parameters()
                 if id(p) not in dropped)
    return dict(deploy_params=params, lora_merged=len(report['merged']),
                prefix_folded=len(report['folded']))


def model_task(model: nn.Module) -> str:
    """What a model does, for :func:`synthetic_batch`: ``'classification'``
    (a classifier: a ``head`` and no ``bbox_head``) or ``'detection'``.

    Args:
        model: a PETL model (its ``inner`` model is read) or a plain one.
    """
    inner = getattr(model, 'inner', model)
    return 'classification' if hasattr(inner, 'head') and not hasattr(
        inner, 'bbox_head') else 'detection'


def model_num_classes(model: nn.Module) -> int:
    """The class count of a model's head (``bbox_head.num_classes``, else
    ``head.num_classes``), for :func:`synthetic_batch`.

    Args:
        model: a PETL model (its ``inner`` model is read) or a plain one.
    """
    inner = getattr(model, 'inner', model)
    head = getattr(inner, 'bbox_head', None) or getattr(inner, 'head')
    return int(head.num_classes)


def build_base_model(cfg, device: torch.device,
                     weights_from: Optional[nn.Module] = None
                     ) -> Optional[nn.Module]:
    """The model a PETL config starts from, without tuners (eval mode);
    None for a config that is not a PETLModel. It gets the weights of
    ``weights_from`` (the tuned model) where their names match, so the two
    compute with the same values (denormals and the like cost CPU time)."""
    model_cfg = cfg.model
    if not str(model_cfg.get('type', '')).endswith('PETLModel'):
        return None
    from mmpetl.models import build_inner_model
    from mmpetl.utils import quiet_init_weights
    inner = dict(model_cfg['model'])
    if model_cfg.get('data_preprocessor') is not None:
        inner.setdefault('data_preprocessor', model_cfg['data_preprocessor'])
    base = build_inner_model(inner, model_cfg.get('scope'))
    quiet_init_weights(base)
    if weights_from is not None:
        own = base.state_dict()
        shared = {k: v for k, v in weights_from.state_dict().items()
                  if k in own and own[k].shape == v.shape}
        base.load_state_dict(shared, strict=False)
    return base.to(device).eval()


def build_model_and_optim(cfg, device: torch.device, amp: Optional[str]):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope

    from mmpetl.patches import apply_patches
    apply_patches()  # vanilla models too run MSDA as PETL models do
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if getattr(model, 'tuner_cfgs', None) is None:
        model.init_weights()  # a vanilla model (full fine-tuning configs)
    model.to(device)
    optim_cfg = cfg.optim_wrapper.copy()
    if amp:  # as tools/train.py --amp: no loss scaling for bf16
        optim_cfg['type'] = 'mmpetl.AmpOptimWrapper'
        optim_cfg['dtype'] = amp
    return model, build_optim_wrapper(model, optim_cfg)


def _forward_loss(model: nn.Module, optim, data: Dict):
    """The forward half of ``model.train_step``: preprocessor, loss (in
    the optimizer wrapper's autocast context); no backward, no step."""
    with optim.optim_context(model):
        batch = model.data_preprocessor(data, True)
        losses = model(**batch, mode='loss')
    return model.parse_losses(losses)[0]


def _check_amp(amp: Optional[str], cuda: bool) -> None:
    if amp and not cuda:
        raise RuntimeError(
            f'--amp {amp} needs a CUDA device: MMEngine\'s AmpOptimWrapper '
            f'runs on GPUs only. Drop --amp for CPU runs.')


def _size_facts(model: nn.Module) -> Dict:
    """Parameter counts and what one task stores: its tuner checkpoint (a
    PETL model that freezes something) or the full checkpoint."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    is_petl = getattr(model, 'tuner_cfgs', None) is not None
    full_mib = _serialized_mib({'state_dict': model.state_dict()})
    stored_mib = _serialized_mib(tuner_checkpoint(model)) if is_petl and \
        trainable < total else full_mib
    return dict(total_params=total, trainable_params=trainable,
                trainable_pct=100.0 * trainable / total,
                is_petl=is_petl and trainable < total,
                checkpoint_mib=stored_mib, full_checkpoint_mib=full_mib)


def _record_backbone_autograd(model: nn.Module, seen: List[bool]):
    """Append to ``seen``, per backbone forward, whether an output requires
    grad; returns the hook handle (None for a model without backbone)."""
    backbone = getattr(model, 'backbone', None)
    if backbone is None:
        return None

    def record(module, args, output):
        outs = output if isinstance(output, (tuple, list)) else [output]
        seen.append(any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in outs))
    return backbone.register_forward_hook(record)


def _measure_training(model: nn.Module, optim, data: Dict,
                      dev: torch.device, warmup: int, iters: int,
                      profile_steps: int, rss_libs: float
                      ) -> Tuple[Dict, List[float]]:
    """Step time, peak memory and GPU busy time of ``model.train_step``,
    and the loss of every step run here."""
    cuda = dev.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model.train()
    losses = []

    def step():
        log_vars = model.train_step(data, optim)
        losses.append(float(log_vars['loss']))

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    reset_peak_rss()
    rss_model = rss_mib()
    step_ms, step_times = median_time(step, warmup, iters, sync)
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
        peak_rss = None
    else:
        peak_rss = peak_rss_mib() - rss_libs
        peak = cpu_tensor_peak_mib(model, optim.optimizer, step)
    gpu_busy = _gpu_busy_ms(step, profile_steps) if cuda else None
    return dict(peak_mem_mib=peak, peak_rss_mib=peak_rss,
                model_rss_mib=None if cuda else rss_model - rss_libs,
                step_ms=step_ms, step_times_ms=step_times,
                gpu_busy_ms=gpu_busy), losses


def _measure_inference(cfg, model: nn.Module, data: Dict,
                       dev: torch.device, infer_iters: int
                       ) -> Tuple[Dict, Dict]:
    """``test_step`` latency of ``model`` beside its base model (timed in
    alternation), before and after :func:`deploy`; what :func:`deploy`
    returned."""
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    model.eval()
    base = build_base_model(cfg, dev, weights_from=model)

    def run(net):
        def call():
            with torch.no_grad():
                net.test_step(data)
        return call

    infer, infer_base = run(model), run(base) if base is not None else None
    infer_base_ms = infer_deployed_ms = infer_deployed_base_ms = None
    if base is None:  # a vanilla model: it is its own base
        infer_ms, _ = median_time(infer, 1, infer_iters, sync)
    else:
        infer_ms, infer_base_ms = interleaved_medians(
            [infer, infer_base], 1, infer_iters, sync)
    deployed = deploy(model)
    if base is not None and (deployed['lora_merged'] or
                             deployed['prefix_folded']):
        infer_deployed_ms, infer_deployed_base_ms = interleaved_medians(
            [infer, infer_base], 1, infer_iters, sync)
    return dict(infer_ms=infer_ms, infer_deployed_ms=infer_deployed_ms,
                infer_base_ms=infer_base_ms,
                infer_deployed_base_ms=infer_deployed_base_ms), deployed


def measure_config(cfg, device: str = 'cpu', batch: int = 1,
                   size: Tuple[int, int] = (320, 320), amp: Optional[str] = None,
                   warmup: int = 2, iters: int = 5, infer_iters: int = 5,
                   profile_steps: int = 3) -> Dict:
    """Every number of one benchmark row (see the module docstring)."""
    dev = torch.device(device)
    _check_amp(amp, dev.type == 'cuda')
    rss_libs = rss_mib()
    model, optim = build_model_and_optim(cfg, dev, amp)
    sizes = _size_facts(model)
    task = model_task(model)
    data = synthetic_batch(task, batch, size, model_num_classes(model))
    backbone_grad = []
    handle = _record_backbone_autograd(model, backbone_grad)
    train, losses = _measure_training(model, optim, data, dev, warmup,
                                      iters, profile_steps, rss_libs)
    if handle is not None:
        handle.remove()
    saved = saved_tensors_by_module(
        model, lambda: _forward_loss(model, optim, data))
    infer, deployed = _measure_inference(cfg, model, data, dev, infer_iters)
    return dict(
        task=task, device=str(dev), batch=batch, size=list(size),
        amp=amp or 'fp32', **sizes, **train, **infer,
        backbone_autograd=(any(backbone_grad) if backbone_grad else None),
        saved_by_module_mib=saved['by_module'],
        saved_by_layer_mib=saved['by_layer'],
        saved_total_mib=saved['total_mib'],
        checkpoint_inputs_mib=saved['checkpoint_inputs_mib'],
        checkpointed_layers=list(getattr(model, 'checkpointed_layers', [])),
        losses_finite=all(map(lambda v: v == v and abs(v) != float('inf'),
                              losses)),
        threads=torch.get_num_threads(), **deployed)
