"""UniPT: universal parallel tuning (Diao et al., 2023).

A light network *beside* the frozen model reads the frozen model's per-layer
outputs ``h_1..h_L`` (each ``(B, N, d)``), computed under ``torch.no_grad``,
so autograd keeps neither a graph nor activations of the frozen network,
and adds a correction to what the heads consume:

    z_l     = D_l(LN_l(h_l))                        (B, N, r)  down, per layer
    m_{k,l} = z_l + softmax(z_k z_l^T / sqrt(r)) z_l           interaction
    a_{k,l} = softmax_{l <= k}(w^T m_{k,l} + b_l)   (B, N)     confidence
    g_k     = sum_{l <= k} a_{k,l} m_{k,l}          (B, N, r)  aggregation
    out_k   = h_k + U(act(g_k))                     (B, N, d)  up, U = 0 init

``k`` is a layer whose output a head consumes. For ``k = L`` this is
UniPT's form: the final layer's tokens query every layer (interaction), a
per-token confidence weighs the layers (aggregation). ``U``'s weight and
bias start at zero, so the tuned model computes exactly the frozen model's
outputs at step 0.

Where it reads and writes (``PETLModel(parallel=dict(type='UniPT'))``):

* DETR / Deformable DETR: ``h_l`` are the decoder's per-layer hidden states
  (``return_intermediate=True``; ``(L, B, num_queries, d)``). The bbox head
  supervises every layer (auxiliary losses), so by default each layer ``k``
  gets its own ``out_k`` from layers ``1..k`` (``all_layers=False``: only
  the last one, the paper's single output). Backbone, neck, encoder and
  decoder run in ``torch.no_grad``.
* MMPretrain ``ImageClassifier`` with a ``VisionTransformer``: ``h_l`` are
  the outputs of ``backbone.layers.l`` (all tokens, before the final norm),
  ``k = L``, and ``U(act(g_L))`` is brought to the backbone's output type
  (class token, token mean, feature map or raw tokens) and added to the
  last backbone output. The backbone runs in ``torch.no_grad``.

Only the UniPT network and the heads can train: a parameter of the frozen
part that is made trainable would never get a gradient, so
:meth:`UniPT.check_trainable` refuses it (other tuners included).

Parameters (``L`` layers read, width ``d``, bottleneck ``r``)::

    L*(d*r + r)  +  2*L*d  +  (r + L)  +  (r*d + d)
      down D_l      LN_l     conf w, b_l   up U
    = (L+1)*d*r + (L+1)*r + 2*L*d + d + L     (without LN: no 2*L*d)

Memory: the UniPT branch keeps ``O(L*B*N*r)`` activations plus the
interaction's ``K*L*B*N*N`` attention weights (``K`` outputs), nothing of
the frozen network.

Limitations:

* The frozen part gets no gradient at all. In Deformable DETR with box
  refinement the decoder calls ``bbox_head.reg_branches`` to refine its
  reference points; under UniPT those calls run without autograd, so the
  regression branches learn only from the head's own predictions. MMDet
  already detaches the refined references between decoder layers, so the
  gradient lost is the one into the decoder-internal calls only, and those
  branches' outputs, once trained, do steer the (frozen) decoder's sampling.
* Two-stage Deformable DETR (its proposals come from head branches on the
  encoder output, which would never train) and DINO (denoising queries must
  not interact with the matching queries) are refused. Other DETR variants
  whose decoder returns stacked hidden states are untested.
* A classifier with a neck is refused (the correction would have to pass
  through the frozen neck with autograd).
"""
import functools
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmpetl.registry import TUNERS
from .adapter import check_positive_int
from .base import BaseTuner, TunerHostError

__all__ = ['UniPT']

_ACTS = {'relu': nn.ReLU, 'gelu': nn.GELU, 'silu': nn.SiLU}


def _mro_names(module: nn.Module) -> List[str]:
    return [c.__name__ for c in type(module).__mro__]


def _is_detr(model: nn.Module) -> bool:
    return hasattr(model, 'forward_transformer') and hasattr(
        model, 'decoder')


def _is_vit_classifier(model: nn.Module) -> bool:
    backbone = getattr(model, 'backbone', None)
    return ('ImageClassifier' in _mro_names(model) and backbone is not None
            and 'VisionTransformer' in _mro_names(backbone)
            and hasattr(backbone, 'layers'))


@TUNERS.register_module()
class UniPT(BaseTuner):
    """UniPT's parallel network over L layers of width d.

    Built by ``PETLModel(parallel=dict(type='UniPT', bottleneck=64))``, not
    through ``tuners``: it attaches to the whole model.

    Args:
        dims (int): layer width d.
        num_layers (int): layers L whose outputs it reads.
        bottleneck (int): the low width r.
        layer_norm (bool): LayerNorm (affine) on each ``h_l`` before its
            down-projection; the layers' scales differ (ViT layers return
            the un-normalised residual stream).
        act (str): ``'relu'``, ``'gelu'`` or ``'silu'`` before ``U``.
        all_layers (bool): DETR family: correct every decoder layer's
            output (each with layers ``1..k``); ``False`` corrects only the
            last. Classifiers always correct the last layer only.
    """

    attr_name = 'unipt'
    #: ``PETLModel`` builds it from ``parallel=``, beside the whole model.
    is_parallel_network = True

    def __init__(self, dims: int, num_layers: int, bottleneck: int = 64,
                 layer_norm: bool = True, act: str = 'gelu',
                 all_layers: bool = True) -> None:
        super().__init__()
        check_positive_int('bottleneck', bottleneck, 'UniPT')
        check_positive_int('num_layers', num_layers, 'UniPT')
        if act not in _ACTS:
            raise ValueError(f'UniPT: `act` must be one of {list(_ACTS)}, '
                             f'got {act!r}')
        self.dims, self.num_layers = dims, num_layers
        self.bottleneck, self.all_layers = bottleneck, all_layers
        self.norms = nn.ModuleList(
            nn.LayerNorm(dims) if layer_norm else nn.Identity()
            for _ in range(num_layers))
        self.downs = nn.ModuleList(
            nn.Linear(dims, bottleneck) for _ in range(num_layers))
        self.confidence = nn.Linear(bottleneck, 1, bias=False)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.act = _ACTS[act]()
        self.up = nn.Linear(bottleneck, dims)
        for down in self.downs:
            nn.init.zeros_(down.bias)  # weight: nn.Linear's kaiming init
        # uniform confidences at init; the zero U makes the branch add 0
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    # -- construction -----------------------------------------------------
    @classmethod
    def resolve_hosts(cls, name, module, **tuner_kwargs):
        raise TunerHostError(
            'UniPT is a parallel network beside the whole model, not a '
            'tuner of one module: configure it with '
            "PETLModel(parallel=dict(type='UniPT', bottleneck=64)), not in "
            '`tuners`.')

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'UniPT':
        """Size UniPT for a DETR-family detector or a ViT classifier."""
        if _is_detr(host):
            _check_detr(host)
            return cls(host.embed_dims, host.decoder.num_layers, **kwargs)
        if _is_vit_classifier(host):
            _check_vit(host)
            backbone = host.backbone
            return cls(backbone.embed_dims, len(backbone.layers), **kwargs)
        raise TunerHostError(
            f'UniPT cannot tune a {type(host).__name__}: it supports MMDet '
            f'DETR / DeformableDETR (decoder hidden states) and MMPretrain '
            f'ImageClassifier with a VisionTransformer backbone.')

    def _install(self, host: nn.Module) -> None:
        # partials of module-level functions that look up `host.unipt`: a
        # deepcopy of the model (e.g. an EMA copy) calls the copied UniPT
        if _is_detr(host):
            self.head_name = 'bbox_head'
            host.extract_feat = functools.partial(_frozen_extract_feat, host)
            host.forward_transformer = functools.partial(
                _detr_forward_transformer, host)
        else:
            self.head_name = 'head'
            self.all_layers = False  # a classifier's head reads the last
            host.extract_feat = functools.partial(_vit_extract_feat, host)

    def check_trainable(self, model: nn.Module) -> None:
        """Refuse trainable parameters the no-grad region would starve.

        Args:
            model (nn.Module): the model UniPT is attached to (or a module
                sharing its children, such as ``PETLModel``).

        Raises:
            ValueError: a trainable parameter outside UniPT and the head.
        """
        mine = {id(p) for p in self.parameters()}
        prefix = self.head_name + '.'
        starved = [
            n for n, p in model.named_parameters()
            if p.requires_grad and id(p) not in mine
            and not n.startswith(prefix)
        ]
        if starved:
            raise ValueError(
                f'UniPT runs everything before `{self.head_name}` without '
                f'autograd, so these trainable parameters would never get a '
                f'gradient: {starved[:5]}{" ..." if len(starved) > 5 else ""}'
                f' ({len(starved)} in all). Train only `{self.head_name}` '
                f'(trainable patterns) beside UniPT, without other tuners.')

    # -- the network ------------------------------------------------------
    def forward(self, feats: torch.Tensor,
                outputs: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The corrections ``U(act(g_k))`` for the layers ``k`` in outputs.

        Args:
            feats (Tensor): per-layer outputs ``h_1..h_L`` of the frozen
                model, shape (L, B, N, d), without autograd history.
            outputs (Sequence[int], optional): 0-based layers ``k`` to
                correct; all L layers if None.

        Returns:
            Tensor: shape (K, B, N, d), K = len(outputs); row i is what to
            add to ``h_{outputs[i]}``.
        """
        num_layers = feats.shape[0]
        if num_layers != self.num_layers:
            raise ValueError(f'UniPT was built for {self.num_layers} layers, '
                             f'got features of {num_layers}')
        outputs = list(range(num_layers)) if outputs is None else list(
            outputs)
        z = torch.stack([
            down(norm(h))
            for h, norm, down in zip(feats, self.norms, self.downs)
        ])  # (L, B, N, r)
        query = z[outputs].unsqueeze(1)  # (K, 1, B, N, r)
        logits = query @ z.unsqueeze(0).transpose(-1, -2) / math.sqrt(
            self.bottleneck)  # (K, L, B, N, N)
        mixed = z.unsqueeze(0) + logits.softmax(-1) @ z.unsqueeze(0)
        score = self.confidence(mixed).squeeze(-1) + self.layer_logits.view(
            1, -1, 1, 1)  # (K, L, B, N)
        later = (torch.arange(num_layers, device=z.device).view(1, -1) >
                 torch.as_tensor(outputs, device=z.device).view(-1, 1))
        score = score.masked_fill(later.view(*later.shape, 1, 1),
                                  float('-inf'))
        weight = score.softmax(dim=1)  # over layers l <= k
        agg = (weight.unsqueeze(-1) * mixed).sum(dim=1)  # (K, B, N, r)
        return self.up(self.act(agg))

    def describe(self) -> Dict[str, object]:
        return dict(layers=self.num_layers, bottleneck=self.bottleneck,
                    outputs='all' if self.all_layers else 'last')


# -- host checks -------------------------------------------------------------
def _check_detr(host: nn.Module) -> None:
    if 'DINO' in _mro_names(host) or hasattr(host, 'dn_query_generator'):
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
    with torch.no_grad():
        head_inputs = type(host).forward_transformer(host, img_feats,
                                                     batch_data_samples)
    unipt = host.unipt
    hidden = head_inputs['hidden_states']
    if unipt.all_layers:
        hidden = hidden + unipt(hidden)
    else:
        last = hidden.shape[0] - 1
        hidden = torch.cat([hidden[:last], hidden[last:] + unipt(hidden,
                                                                 [last])])
    head_inputs['hidden_states'] = hidden
    return head_inputs


def _vit_extract_feat(host: nn.Module, inputs: torch.Tensor,
                      stage: str = 'neck'):
    """ViT backbone without autograd (layer outputs captured), the UniPT
    correction added to the last backbone output."""
    backbone = host.backbone
    captured: List[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda m, a, out: captured.append(out))
        for layer in backbone.layers
    ]
    try:
        with torch.no_grad():
            outs = backbone(inputs)
    finally:
        for handle in handles:
            handle.remove()
    unipt = host.unipt
    last = len(captured) - 1
    delta = unipt(torch.stack(captured), [last])[0]  # (B, N, d)
    outs = tuple(outs[:-1]) + (outs[-1] + _as_output(backbone, delta,
                                                     outs[-1]), )
    assert stage in ('backbone', 'neck', 'pre_logits'), stage
    if stage in ('backbone', 'neck'):  # no neck (checked)
        return outs
    return host.head.pre_logits(outs)


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
