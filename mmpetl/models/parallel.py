"""Networks beside the whole frozen model (UniPT): the model surgery.

``PETLModel(parallel=dict(type='UniPT', bottleneck=64))`` builds the network
(:class:`mmpetl.tuners.UniPT`, a plain module), attaches it to the inner
model as ``unipt`` and replaces two of the inner model's methods so that the
frozen part runs without autograd and the network's corrections reach the
heads:

* DETR / Deformable DETR: ``extract_feat`` (backbone + neck) and
  ``forward_transformer`` (encoder + decoder) run in ``torch.no_grad``.
  The official UniPT (default) reads the encoder layers' outputs (forward
  hooks on ``encoder.layers``; of Deformable DETR's multi-scale tokens,
  flattened as the encoder sees them, those of the levels with stride
  >= ``enc_min_stride``, copied out so that the full outputs are freed)
  with the encoder's ``key_padding_mask`` (a pre-hook on the encoder,
  which also reads the levels' ``spatial_shapes``) and the decoder's
  per-layer hidden states ``(L, B, num_queries, d)``; it rewrites the
  decoder layers it reads (every other + last) and the heads read those.
  With ``local_read`` (Deformable DETR) a pre-hook on the decoder also
  takes the memory, levels and valid ratios it is called with, and the
  network gets the memory sampled at each layer's reference points
  (:func:`sample_at_references`).
  ``variant='v1'`` reads the decoder states only; the bbox head supervises
  every layer (auxiliary losses), so by default each layer ``k`` gets its
  own correction from layers ``1..k`` (``all_layers=False``: only the last
  one).
* MMPretrain ``ImageClassifier`` with a ``VisionTransformer``:
  ``extract_feat`` runs the backbone in ``torch.no_grad``, capturing the
  embeddings (input of ``backbone.layers.0``, official only) and the
  outputs of ``backbone.layers.l`` (all tokens, before the final norm).
  The official network's anchor is the backbone's output (class token,
  token mean, feature map or raw tokens, as tokens); its output goes back
  in the same layout. With ``features='recompute'`` a training forward
  captures nothing: the backbone runs once for the anchor, then again
  (from the same random state) once per pass of the network, which takes
  each layer's output as it comes
  (:meth:`~mmpetl.tuners.unipt.UniPTViT.forward_streamed`); inference
  runs the one-pass path. v1 adds the last layer's token correction,
  brought to the backbone's output type, to the last backbone output.

The replaced methods are partials of module-level functions that look up
``host.unipt``: a deepcopy of the model (e.g. an EMA copy) calls the copied
network.

Only the network and the heads can train: a parameter of the frozen part
that is made trainable would never get a gradient, so
:func:`check_parallel_trainable` refuses it (other tuners included).

Limitations:

* In Deformable DETR with box refinement the decoder calls
  ``bbox_head.reg_branches`` to refine its reference points; under UniPT
  those calls run without autograd, so the regression branches learn only
  from the head's own predictions. MMDet already detaches the refined
  references between decoder layers, so the gradient lost is the one into
  the decoder-internal calls only.
* Two-stage Deformable DETR (its proposals come from head branches on the
  encoder output, which would never train) and DINO (denoising queries must
  not interact with the matching queries) are refused.
* A classifier with a neck is refused (the correction would have to pass
  through the frozen neck with autograd).
"""
import functools
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmpetl.injection import InjectedTuner, get_tuner_cls
from mmpetl.ops.msda import ms_deform_attn
from mmpetl.tuners import TunerHostError
from mmpetl.utils import class_names

__all__ = ['attach_parallel', 'check_parallel_trainable',
           'sample_at_references']


def _is_detr(model: nn.Module) -> bool:
    return hasattr(model, 'forward_transformer') and hasattr(
        model, 'decoder')


def _is_vit_classifier(model: nn.Module) -> bool:
    backbone = getattr(model, 'backbone', None)
    return ('ImageClassifier' in class_names(model) and backbone is not None
            and 'VisionTransformer' in class_names(backbone)
            and hasattr(backbone, 'layers'))


def _check_detr(host: nn.Module) -> None:
    if 'DINO' in class_names(host) or hasattr(host, 'dn_query_generator'):
        raise TunerHostError(
            'UniPT does not support DINO-style denoising training: its '
            'interaction would mix denoising queries (built from the ground '
            'truth) into the matching queries.')
    if getattr(host, 'as_two_stage', False):
        raise TunerHostError(
            'UniPT does not support two-stage Deformable DETR: its '
            'proposals come from head branches applied to the encoder '
            'output, which runs without autograd and would never train. '
            'Set as_two_stage=False.')
    if not getattr(host.decoder, 'return_intermediate', True):
        raise TunerHostError(
            'UniPT reads every decoder layer: build the decoder with '
            'return_intermediate=True.')


def _check_vit(host: nn.Module) -> None:
    backbone = host.backbone
    if getattr(host, 'with_neck', False):
        raise TunerHostError(
            'UniPT on a classifier with a neck is not supported: the '
            'correction would have to pass through the frozen neck with '
            'autograd. Use a ViT classifier without a neck.')
    if max(backbone.out_indices) != len(backbone.layers) - 1:
        raise TunerHostError(
            'UniPT corrects the last ViT layer: the backbone must output it '
            '(out_indices must include -1).')


def attach_parallel(model: nn.Module, cfg: Dict) -> InjectedTuner:
    """Build a parallel network (UniPT) for ``model`` and wire it in.

    Args:
        model: the inner DETR-family detector or ViT classifier.
        cfg: ``dict(type='UniPT', **network_args)``, plus ``lr_mult`` and
            ``decay_mult`` as in tuner configs.
    """
    cfg = dict(cfg)
    type_name = cfg.pop('type', None)
    cls = get_tuner_cls(type_name)
    if not getattr(cls, 'is_parallel_network', False):
        raise TypeError(
            f'`parallel` takes a network beside the whole model (UniPT); '
            f'{type_name} attaches to modules: list it in `tuners`.')
    lr_mult, decay_mult = cfg.pop('lr_mult', 1.0), cfg.pop('decay_mult', 1.0)
    v1 = cfg.get('variant', 'official') == 'v1'
    if _is_detr(model):
        _check_detr(model)
        if v1:
            net = cls(model.embed_dims, model.decoder.num_layers, **cfg)
        elif cfg.get('local_read') and 'DeformableDETR' not in \
                class_names(model):
            raise TunerHostError(
                f'UniPT local_read samples the encoder memory at the '
                f"decoder's reference points, which "
                f'{type(model).__name__} does not have (Deformable DETR '
                f'does): drop local_read.')
        else:
            net = cls(model.embed_dims, model.decoder.num_layers,
                      num_encoder_layers=len(model.encoder.layers),
                      form='detr', **cfg)
        model.add_module(cls.attr_name, net)
        model.extract_feat = functools.partial(_frozen_extract_feat, model)
        model.forward_transformer = functools.partial(
            _detr_forward_transformer, model)
        net.head_name = 'bbox_head'
    elif _is_vit_classifier(model):
        _check_vit(model)
        backbone = model.backbone
        if v1:
            net = cls(backbone.embed_dims, len(backbone.layers), **cfg)
            net.all_layers = False  # a classifier's head reads the last
        else:  # the embeddings and every block
            net = cls(backbone.embed_dims, len(backbone.layers) + 1,
                      form='vit', **cfg)
        model.add_module(cls.attr_name, net)
        model.extract_feat = functools.partial(_vit_extract_feat, model)
        net.head_name = 'head'
    else:
        raise TunerHostError(
            f'{type_name} cannot tune a {type(model).__name__}: it supports '
            f'MMDet DETR / DeformableDETR (decoder hidden states) and '
            f'MMPretrain ImageClassifier with a VisionTransformer backbone.')
    net.lr_mult, net.decay_mult = float(lr_mult), float(decay_mult)
    return InjectedTuner('(model)', type(model).__name__, type_name, net)


def check_parallel_trainable(model: nn.Module, net: nn.Module) -> None:
    """Refuse trainable parameters the no-grad region would starve.

    Args:
        model (nn.Module): the model the network is attached to (or a
            module sharing its children, such as ``PETLModel``).
        net (nn.Module): the parallel network.

    Raises:
        ValueError: a trainable parameter outside the network and the head.
    """
    mine = {id(p) for p in net.parameters()}
    prefix = net.head_name + '.'
    starved = [
        n for n, p in model.named_parameters()
        if p.requires_grad and id(p) not in mine and not n.startswith(prefix)
    ]
    if starved:
        raise ValueError(
            f'UniPT runs everything before `{net.head_name}` without '
            f'autograd, so these trainable parameters would never get a '
            f'gradient: {starved[:5]}{" ..." if len(starved) > 5 else ""}'
            f' ({len(starved)} in all). Train only `{net.head_name}` '
            f'(trainable patterns) beside UniPT, without other tuners.')


# -- forwards installed on the host ------------------------------------------
def _frozen_extract_feat(host: nn.Module, batch_inputs: torch.Tensor):
    """Backbone + neck without autograd."""
    with torch.no_grad():
        return type(host).extract_feat(host, batch_inputs)


def _detr_forward_transformer(host: nn.Module, img_feats,
                              batch_data_samples=None) -> Dict:
    """Encoder + decoder without autograd, then the UniPT corrections.

    ``head_inputs['hidden_states']`` (L, B, num_queries, d) becomes
    ``h_k + U(act(g_k))`` for every k (or for the last only).
    """
    unipt = host.unipt
    if unipt.variant != 'v1':
        return _detr_forward_official(host, img_feats, batch_data_samples)
    with torch.no_grad():
        head_inputs = type(host).forward_transformer(host, img_feats,
                                                     batch_data_samples)
    hidden = head_inputs['hidden_states']
    if unipt.all_layers:
        hidden = unipt.add_change(hidden, unipt(hidden))
    else:
        last = hidden.shape[0] - 1
        hidden = torch.cat([hidden[:last], unipt.add_change(
            hidden[last:], unipt(hidden, [last]))])
    head_inputs['hidden_states'] = hidden
    return head_inputs


def _detr_forward_official(host: nn.Module, img_feats,
                           batch_data_samples=None) -> Dict:
    """Encoder + decoder without autograd, their layers' outputs and the
    encoder's key padding mask captured (the tokens of the levels the
    network reads, see :func:`_encoder_tokens`); the official UniPT's
    hidden states (decoder layers it reads rewritten) go to the heads."""
    encoder, unipt = host.encoder, host.unipt
    num = len(encoder.layers)
    # only the layers read are kept (None for the others), and of those
    # only the tokens read: the frozen forward holds no more than it must
    read = set(unipt.enc_layers + [num - 1]) if unipt.cross_attention \
        else set()
    captured: List[torch.Tensor] = []
    masks: List[torch.Tensor] = []
    select: List = []

    def keep_mask(module, args, kwargs):
        index = _encoder_tokens(unipt, kwargs, batch_data_samples)
        select.append(index)
        mask = kwargs.get('key_padding_mask')
        masks.append(mask if index is None or mask is None else
                     mask.index_select(1, index))

    def keep(i):
        def hook(module, args, out):
            if i not in read:
                captured.append(None)
            elif select and select[-1] is not None:
                captured.append(out.index_select(1, select[-1]))  # a copy
            else:
                captured.append(out)
        return hook

    decoder_kwargs: List[Dict] = []  # local_read: what MSDA samples from
    handles = [encoder.register_forward_pre_hook(keep_mask,
                                                 with_kwargs=True)]
    if getattr(unipt, 'local_read', False):
        handles.append(host.decoder.register_forward_pre_hook(
            lambda m, a, kw: decoder_kwargs.append(kw), with_kwargs=True))
    handles += [
        layer.register_forward_hook(keep(i))
        for i, layer in enumerate(encoder.layers)
    ]
    try:
        with torch.no_grad():
            head_inputs = type(host).forward_transformer(
                host, img_feats, batch_data_samples)
    finally:
        for handle in handles:
            handle.remove()
    if len(masks) != 1 or len(captured) != len(encoder.layers):
        raise TunerHostError(
            f'UniPT: expected one encoder call with {len(encoder.layers)} '
            f'layer outputs, got {len(masks)} calls and {len(captured)} '
            f'outputs; {type(host).__name__} runs its encoder differently '
            f"from DETR / Deformable DETR (variant='v1' reads the decoder "
            f'only).')
    hidden = head_inputs['hidden_states']
    local = None
    if getattr(unipt, 'local_read', False):
        if len(decoder_kwargs) != 1 or 'references' not in head_inputs:
            raise TunerHostError(
                f'UniPT local_read: expected one decoder call and the '
                f'reference points in the head inputs, got '
                f'{len(decoder_kwargs)} calls; {type(host).__name__} is '
                f'not a Deformable DETR: drop local_read.')
        with torch.no_grad():
            local = sample_at_references(
                decoder_kwargs[0], head_inputs['references'][:len(hidden)])
        decoder_kwargs.clear()  # the full memory is not held further
    new = unipt(captured, masks[0], hidden,
                **({} if local is None else dict(local=local)))
    if unipt.recording:
        unipt.record_change(hidden, new - hidden)
    head_inputs['hidden_states'] = new
    return head_inputs


def sample_at_references(decoder_kwargs: Dict,
                         references: Sequence[torch.Tensor]
                         ) -> torch.Tensor:
    """The encoder memory where each decoder layer looks (UniPT's
    ``local_read``): per layer, multi-scale deformable attention with one
    head, one point per level at the layer's reference point (scaled by
    the levels' valid ratios, as MSDA places its grid) and equal level
    weights: the bilinear samples of every level, averaged.

    Args:
        decoder_kwargs (dict): the Deformable DETR decoder call's
            ``value`` (the memory, (B, N, d)), ``spatial_shapes``
            (levels, 2) and ``valid_ratios`` (B, levels, 2).
        references (Sequence[Tensor]): per decoder layer, its reference
            points (B, Q, 2), normalised to the valid image, or boxes
            (B, Q, 4) whose centres are used.

    Returns:
        Tensor: (L, B, Q, d).
    """
    memory = decoder_kwargs['value'][:, :, None]  # (B, N, 1 head, d)
    shapes = decoder_kwargs['spatial_shapes']
    ratios = decoder_kwargs['valid_ratios'][:, None]  # (B, 1, levels, 2)
    out = []
    for ref in references:
        # (B, Q, 1 head, levels, 1 point, 2)
        where = (ref[:, :, None, :2] * ratios)[:, :, None, :, None]
        weights = where.new_full(where.shape[:-1], 1.0 / len(shapes))
        out.append(ms_deform_attn(memory, shapes, where, weights))
    return torch.stack(out)


def _encoder_tokens(unipt: nn.Module, kwargs: Dict, batch_data_samples
                    ) -> Optional[torch.Tensor]:
    """Indices of the flattened encoder tokens UniPT reads: those of the
    feature levels with stride >= ``unipt.enc_min_stride``; None: all (no
    minimum, or a single-scale encoder such as DETR's).

    A level of stride s over a padded batch of height H has ceil(H / s)
    rows; the levels' sizes come from the encoder call's
    ``spatial_shapes`` (Deformable DETR), H from the batch's
    ``batch_input_shape``.
    """
    min_stride = getattr(unipt, 'enc_min_stride', None)
    shapes = kwargs.get('spatial_shapes')
    if min_stride is None or shapes is None or len(shapes) < 2:
        return None
    if not batch_data_samples or 'batch_input_shape' not in \
            batch_data_samples[0].metainfo:
        raise TunerHostError(
            'UniPT: enc_min_stride needs the padded batch size '
            '(data samples with batch_input_shape, set by MMDet\'s '
            'DetDataPreprocessor); pass the data samples, or build UniPT '
            'with enc_min_stride=None to read every level.')
    height, width = batch_data_samples[0].metainfo['batch_input_shape']
    rows, cols = -(-height // min_stride), -(-width // min_stride)
    sizes = [(int(h), int(w)) for h, w in shapes.tolist()]
    start, ranges = 0, []
    for h, w in sizes:
        if h <= rows and w <= cols:
            ranges.append(torch.arange(start, start + h * w))
        start += h * w
    if not ranges:
        strides = [round(height / h) for h, _ in sizes]
        raise TunerHostError(
            f'UniPT: enc_min_stride={min_stride} selects no encoder level '
            f'(level strides ~{strides} for a {height}x{width} batch); '
            f'lower it, or set enc_min_stride=None to read every level.')
    if len(ranges) == len(sizes):
        return None
    return torch.cat(ranges).to(shapes.device)


def _frozen_vit(backbone: nn.Module, inputs: torch.Tensor,
                embeddings: bool):
    """The ViT backbone's outputs without autograd and what UniPT reads:
    every block's output, after the embeddings (the first block's input)
    when ``embeddings``."""
    captured: List[torch.Tensor] = []
    handles = [backbone.layers[0].register_forward_pre_hook(
        lambda m, args: captured.append(args[0]))] if embeddings else []
    handles += [
        layer.register_forward_hook(lambda m, a, out: captured.append(out))
        for layer in backbone.layers
    ]
    try:
        with torch.no_grad():
            outs = backbone(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return outs, captured


def _vit_extract_feat(host: nn.Module, inputs: torch.Tensor,
                      stage: str = 'neck'):
    """ViT backbone without autograd (layer outputs captured), the UniPT
    correction added to the last backbone output."""
    if host.unipt.variant != 'v1':
        return _vit_extract_feat_official(host, inputs, stage)
    backbone = host.backbone
    outs, captured = _frozen_vit(backbone, inputs, embeddings=False)
    unipt = host.unipt
    last = len(captured) - 1
    # the layer outputs as they are: a stacked copy would double them
    delta = unipt(captured, [last])[0]  # (B, N, d)
    outs = tuple(outs[:-1]) + (unipt.add_change(
        outs[-1], _as_output(backbone, delta, outs[-1])), )
    assert stage in ('backbone', 'neck', 'pre_logits'), stage
    if stage in ('backbone', 'neck'):  # no neck (checked)
        return outs
    return host.head.pre_logits(outs)


def _vit_extract_feat_official(host: nn.Module, inputs: torch.Tensor,
                               stage: str = 'neck'):
    """ViT backbone without autograd (the embeddings and every block's
    output captured); the official UniPT turns the last backbone output
    (its anchor) into what the head reads."""
    backbone, unipt = host.backbone, host.unipt
    align = functools.partial(_align, backbone)
    if getattr(unipt, 'features', 'keep') == 'recompute' and \
            torch.is_grad_enabled() and any(
                p.requires_grad for p in unipt.parameters()):
        # training: no feature kept for backward (inference keeps the
        # one-pass path: nothing is kept for a backward there anyway)
        rng = _rng_state(inputs.device)
        with torch.no_grad():  # the anchor; no feature kept
            outs = _compact(backbone(inputs))
        anchor = _as_tokens(backbone, outs[-1])
        new = unipt.forward_streamed(
            anchor, align,
            functools.partial(_stream_vit, backbone, inputs, rng))
    else:
        outs, captured = _frozen_vit(backbone, inputs, embeddings=True)
        outs = _compact(outs)
        anchor = _as_tokens(backbone, outs[-1])
        new = unipt(captured, anchor, align)
    if unipt.recording:
        unipt.record_change(anchor, new - anchor)
    out = _from_tokens(backbone, new, outs[-1])
    outs = tuple(outs[:-1]) + (out, )
    assert stage in ('backbone', 'neck', 'pre_logits'), stage
    if stage in ('backbone', 'neck'):  # no neck (checked)
        return outs
    return host.head.pre_logits(outs)


def _compact(outs: Sequence[torch.Tensor]) -> tuple:
    """The backbone's outputs, each in a storage of its own size.

    A ViT's ``cls_token`` output is ``x[:, 0]``, a view that keeps all
    of the last layer's (B, N, d) tokens alive; the side network holds
    the anchor while the frozen ViT runs again, so a view would keep a
    frozen feature at that pass's peak after all (74 MiB at batch 128 on
    ViT-B)."""
    return tuple(
        o.clone() if o.untyped_storage().nbytes() >
        o.numel() * o.element_size() else o for o in outs)


def _rng_state(device: torch.device) -> Dict:
    """The random state a frozen forward starts from (its dropout / drop
    path draws), to replay it."""
    state = dict(cpu=torch.get_rng_state())
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return dict(state, device=device)


def _stream_vit(backbone: nn.Module, inputs: torch.Tensor, rng: Dict,
                take) -> None:
    """Run the frozen ViT again, without autograd and from the random
    state ``rng`` (the same draws, so the same features), calling
    ``take(0, embeddings)`` and ``take(l + 1, output of block l)`` as each
    is ready; nothing is kept. The caller's random state is untouched."""
    device = rng['device']
    cuda = [device] if 'cuda' in rng else []
    handles = [backbone.layers[0].register_forward_pre_hook(
        lambda m, args: take(0, args[0]))]
    handles += [
        layer.register_forward_hook(
            lambda m, a, out, i=i: take(i + 1, out))
        for i, layer in enumerate(backbone.layers)
    ]
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            torch.set_rng_state(rng['cpu'])
            if cuda:
                torch.cuda.set_rng_state(rng['cuda'], device)
            backbone(inputs)
    finally:
        for handle in handles:
            handle.remove()


def _as_tokens(backbone: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The backbone's output as tokens (B, Na, d)."""
    if backbone.out_type in ('cls_token', 'avg_featmap'):
        return out.unsqueeze(1)
    if backbone.out_type == 'featmap':  # (B, d, h, w)
        return out.flatten(2).transpose(1, 2)
    if backbone.out_type == 'raw':
        return out
    raise TunerHostError(
        f'UniPT: unsupported ViT out_type {backbone.out_type!r}')


def _from_tokens(backbone: nn.Module, tokens: torch.Tensor,
                 like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_as_tokens`."""
    if backbone.out_type in ('cls_token', 'avg_featmap'):
        return tokens[:, 0]
    if backbone.out_type == 'featmap':
        return tokens.transpose(1, 2).reshape(like.shape)
    return tokens


def _align(backbone: nn.Module, side: torch.Tensor) -> torch.Tensor:
    """A layer's side tokens (B, N, r) matching the anchor's tokens: the
    class token, the patch-token mean, the patch tokens or all tokens."""
    extra = backbone.num_extra_tokens
    if backbone.out_type == 'cls_token':
        return side[:, :1]
    if backbone.out_type == 'avg_featmap':
        return side[:, extra:].mean(dim=1, keepdim=True)
    if backbone.out_type == 'featmap':
        return side[:, extra:]
    return side


def _as_output(backbone: nn.Module, delta: torch.Tensor,
               like: torch.Tensor) -> torch.Tensor:
    """Token corrections (B, N, d) in the backbone's ``out_type``."""
    out_type = backbone.out_type
    if out_type == 'raw':
        return delta
    if out_type == 'cls_token':
        return delta[:, 0]
    patches = delta[:, backbone.num_extra_tokens:]
    if out_type == 'avg_featmap':
        return patches.mean(dim=1)
    if out_type == 'featmap':  # (B, d, h, w)
        return patches.transpose(1, 2).reshape(like.shape)
    raise TunerHostError(f'UniPT: unsupported ViT out_type {out_type!r}')
