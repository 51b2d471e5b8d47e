"""UniPT: universal parallel tuning (Diao et al., 2023).

A light network *beside* the frozen model reads the frozen model's per-layer
outputs, computed under ``torch.no_grad`` (no graph, no activations of the
frozen network kept by autograd), and produces what the heads consume.
Two variants (``PETLModel(parallel=dict(type='UniPT', variant=...))``):

``variant='official'`` (default): the authors' design (Paranioar/UniPT,
MDETR for the DETR family, CLIP4Clip for ViT), width ``d_s = d/2``. With
``mix(q, c) = (l1norm(relu(q c^T) * mask) + I) c`` (``I`` only where q and
c are the same tokens), ``D(x) = LN(Linear(x))`` and
``P(x) = LN(Linear(ReLU(Linear(x))))`` (d_s -> d -> d_s):

* DETR family. Layers read: every other layer and the last one (the
  official {1, 3, 5} + 6 of 6 layers; ``layers='all'``: every layer).
  Encoder side, over the encoder tokens of the levels with stride >=
  ``enc_min_stride`` (default 32: the authors' MDETR encoder sees one
  stride-32 map; multi-scale ones flattened, padding masked out)::

      A   = D_0(enc_last);  T_l = D_l(enc_l)
      c_l = softmax_l(gate(mean(A) * mean(T_l)))      per image
      S   = A + P(sum_l c_l m_l),  m_l = T_l  (encoder_mix=True: mix(A, T_l),
                                              an N_enc x N_enc mix)

  Decoder side, over the queries::

      T_l = D_l(dec_l) + LN(Linear(mix(D_l(dec_l), S, mask, no I)))
            (+ D'_l(local_l) with local_read=True, see below)
      F   = A + P(sum_l c_l mix(A, T_l)),  A = D_0(dec_last)
      out_l = LN(Linear(ReLU(T_l))),  out_last = LN(Linear(ReLU(F)))

    ``local_read=True`` (mmpetl's variant, Deformable DETR): each query
  also reads the frozen encoder memory where its decoder layer looks,
  ``local_l`` = the memory sampled bilinearly at that layer's reference
  point on every level (as MSDA samples, valid ratios applied), the
  levels averaged; ``D'_l`` as ``D``. The authors' queries read the
  image only through the global mix with ``S``. The sampling runs
  without autograd, so only the (L, B, Q, d) samples reach the network.

``output='replace'`` (official) feeds ``out`` to the heads instead of
  the frozen ``h``; ``output='residual'`` (mmpetl's default) feeds
  ``h + out`` with the final LN's affine weight and bias at zero, so the
  tuned model is exactly the frozen one at step 0 (the pretrained box
  regression keeps working). Decoder layers not read keep ``h``.
* ViT (CLIP4Clip): reads the embeddings and every block's output (13 for
  12 layers); ``D(x) = Linear(ReLU(x))``; the anchor is the backbone's
  output (class token, token mean, or tokens)::

      A = D_a(anchor);  T_l = D_l(h_l)
      m_l = mix(A, T_l, no I) + T_l[anchor's tokens];  c_l = softmax(gate)
      out = anchor + Linear(ReLU(sum_l c_l m_l))      (Linear = 0 if
                                                       output='residual')

``variant='v1'``: mmpetl's first design, decoder hidden states only::

    z_l     = D_l(LN_l(h_l))                        (B, N, r)  down, per layer
    m_{k,l} = z_l + softmax(z_k z_l^T / sqrt(r)) z_l           interaction
    a_{k,l} = softmax_{l <= k}(w^T m_{k,l} + b_l)   (B, N)     confidence
    g_k     = sum_{l <= k} a_{k,l} m_{k,l}          (B, N, r)  aggregation
    out_k   = h_k + U(act(g_k))                     (B, N, d)  up, U = 0 init

This file holds the networks alone, plain modules fed tensors. Which layers
feed them, where their outputs go and which forwards run without autograd
is model surgery: :mod:`mmpetl.models.parallel`.

Memory: the official network runs under activation checkpointing
(``checkpoint=True``): autograd keeps the frozen features it reads (kept
anyway) and its outputs, and recomputes the rest in backward; no
``N_enc x N_enc`` tensor exists unless ``encoder_mix=True``. The DETR form
reads the coarse encoder levels only (``enc_min_stride``), so the features
kept are a few percent of the fine levels'. The ViT form with
``features='recompute'`` keeps none: each layer enters the network only
through a small summary (its mix with the anchor and its token mean), so
the frozen ViT runs again and the network takes each layer's summary, and
in backward its gradient, as that layer finishes
(:meth:`UniPTViT.forward_streamed`).

v1 parameters (``L`` layers read, width ``d``, bottleneck ``r``)::

    (L+1)*d*r + (L+1)*r + 2*L*d + d + L     (without LN: no 2*L*d)
"""
import inspect
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmpetl.registry import TUNERS
from .base import BaseTuner, TunerHostError
from .common import build_activation, check_positive_int

__all__ = ['UniPT', 'UniPTV1', 'UniPTDetr', 'UniPTViT', 'mix',
           'read_layers']

VARIANTS = ('official', 'v1')
FEATURES = ('keep', 'recompute')
FORMS = ('detr', 'vit')


@TUNERS.register_module()
class UniPT(BaseTuner):
    """UniPT's parallel network; ``UniPT(...)`` builds the variant asked.

    ``UniPT(dims, num_layers, variant='official', form='detr', ...)`` is a
    :class:`UniPTDetr`, ``form='vit'`` a :class:`UniPTViT`,
    ``variant='v1'`` a :class:`UniPTV1`; see those for the arguments.
    Built by ``PETLModel(parallel=dict(type='UniPT', ...))``, not through
    ``tuners``: it attaches to the whole model.
    """

    attr_name = 'unipt'
    #: ``PETLModel`` builds it from ``parallel=``, beside the whole model.
    is_parallel_network = True
    variant = 'official'

    def __new__(cls, *args, variant: str = 'official', **kwargs):
        if cls is UniPT:
            if variant not in VARIANTS:
                raise ValueError(f'UniPT: variant must be one of {VARIANTS}'
                                 f', got {variant!r}')
            form = kwargs.get('form', 'detr')
            if variant == 'official' and form not in FORMS:
                raise ValueError(f'UniPT: form must be one of {FORMS}, got '
                                 f'{form!r}')
            v1_only = sorted({'all_layers', 'layer_norm', 'act'} & set(
                kwargs))
            if variant == 'official' and v1_only:
                raise ValueError(
                    f'UniPT: {v1_only} are arguments of the first mmpetl '
                    f"design: pass variant='v1' with them, or drop them for "
                    f"the official design (variant='official', the "
                    f'default).')
            cls = UniPTV1 if variant == 'v1' else (
                UniPTViT if form == 'vit' else UniPTDetr)
            foreign = sorted(set(kwargs) - set(
                inspect.signature(cls.__init__).parameters))
            if foreign and set(foreign) <= set(UniPT.extra_config_args):
                raise ValueError(
                    f'UniPT: {foreign} are not arguments of the '
                    f'{cls.variant} design for the model given '
                    f"(form={getattr(cls, 'form', None)!r}; "
                    f"features='recompute' is the ViT form's, "
                    f'enc_min_stride and the decoder arguments the DETR '
                    f"form's): drop them from `parallel`.")
        return super().__new__(cls)

    # -- construction -----------------------------------------------------
    @classmethod
    def resolve_hosts(cls, name, module, **tuner_kwargs):
        raise TunerHostError(
            'UniPT is a parallel network beside the whole model, not a '
            'tuner of one module: configure it with '
            "PETLModel(parallel=dict(type='UniPT')), not in `tuners`.")

    def _install(self, host: nn.Module) -> None:
        raise TunerHostError(
            'UniPT attaches to the whole model through '
            "PETLModel(parallel=dict(type='UniPT', ...)), which routes the "
            'frozen activations to it (mmpetl.models.parallel).')


# -- the official network's pieces --------------------------------------------
def mix(query: torch.Tensor, context: torch.Tensor,
        mask: Optional[torch.Tensor] = None, identity: bool = True,
        kind: str = 'relu_l1', eps: float = 1e-7) -> torch.Tensor:
    """UniPT's interaction ``(l1norm(relu(q c^T) * mask) + I) c``.

    Args:
        query (Tensor): (B, Nq, r).
        context (Tensor): (B, Nc, r).
        mask (Tensor, optional): (B, Nc), 1/True for the tokens to read.
        identity (bool): add ``c`` (needs Nq == Nc: the same tokens).
        kind (str): ``'relu_l1'`` (official) or ``'softmax'``
            (``softmax(q c^T / sqrt(r))``, mmpetl v1's).
    """
    if kind == 'softmax':
        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=query.dtype,
                               device=query.device).masked_fill(
                                   ~mask.bool(), float('-inf'))[:, None]
        out = F.scaled_dot_product_attention(query, context, context,
                                             attn_mask=bias)
    else:
        weights = torch.relu(query @ context.transpose(-1, -2))
        if mask is not None:
            weights = weights * mask[:, None].to(weights.dtype)
        weights = weights / (weights.sum(-1, keepdim=True) + eps)
        out = weights @ context
    return out + context if identity else out


def _mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Token mean of (B, N, r), over the tokens ``mask`` keeps."""
    if mask is None:
        return x.mean(dim=1)
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def read_layers(num_layers: int, layers: str = 'every_other') -> List[int]:
    """0-based layers read beside the last (the anchor): every other one
    from the first (the official {1, 3, 5} of 6, 1-based), or all."""
    if layers == 'all':
        return list(range(num_layers - 1))
    if layers == 'every_other':
        return list(range(0, num_layers - 1, 2))
    raise ValueError(f"UniPT: layers must be 'every_other' or 'all', got "
                     f'{layers!r}')


def _proj(dims: int, width: int, norm: str) -> nn.Module:
    """``D``: Linear then LN (official), or LN then Linear (v1 order)."""
    if norm == 'after':
        return nn.Sequential(nn.Linear(dims, width), nn.LayerNorm(width))
    if norm == 'before':
        return nn.Sequential(nn.LayerNorm(dims), nn.Linear(dims, width))
    raise ValueError(f"UniPT: norm must be 'after' or 'before', got "
                     f'{norm!r}')


def _mlp(width: int, hidden: int, mlp: bool) -> nn.Module:
    """``P``: Linear -> ReLU -> Linear -> LN, or nothing (``mlp=False``)."""
    if not mlp:
        return nn.Identity()
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(),
                         nn.Linear(hidden, width), nn.LayerNorm(width))


class _Aggregate(nn.Module):
    """``A + P(sum_l c_l m_l)`` with per-image (or per-token) confidences
    ``c = softmax_l(gate(mean(A) * mean(T_l)))``."""

    def __init__(self, width: int, hidden: int, mlp: bool, gate: str):
        super().__init__()
        if gate not in ('image', 'token'):
            raise ValueError(f"UniPT: gate must be 'image' or 'token', got "
                             f'{gate!r}')
        self.per_image = gate == 'image'
        self.gate = nn.Linear(width, 1)
        self.proj = _mlp(width, hidden, mlp)

    def forward(self, anchor, targets, mixed, mask=None, residual=True):
        if self.per_image:
            return self.combine(anchor, [_mean(t, mask) for t in targets],
                                mixed, mask, residual)
        # per token: (B, n, N, 1)
        weights = torch.stack([self.gate(anchor * t) for t in targets],
                              dim=1).softmax(dim=1)
        merged = (weights * torch.stack(mixed, dim=1)).sum(dim=1)
        return anchor + self.proj(merged) if residual else self.proj(merged)

    def combine(self, anchor, target_means, mixed, mask=None,
                residual=True):
        """The per-image form from the targets' token means (B, r) alone:
        what a network that never holds every target at once needs."""
        a = _mean(anchor, mask)
        scores = torch.cat([self.gate(a * m) for m in target_means],
                           dim=1)  # (B, n)
        weights = scores.softmax(dim=1)[:, :, None, None]
        merged = (weights * torch.stack(mixed, dim=1)).sum(dim=1)
        return anchor + self.proj(merged) if residual else self.proj(merged)


def _official_args(variant, bottleneck, output, mix_kind, gate, layers):
    """Shared checks of the official networks' arguments."""
    if output not in ('replace', 'residual'):
        raise ValueError(f"UniPT: output must be 'replace' or 'residual', "
                         f'got {output!r}')
    if mix_kind not in ('relu_l1', 'softmax'):
        raise ValueError(f"UniPT: mix must be 'relu_l1' or 'softmax', got "
                         f'{mix_kind!r}')
    if bottleneck is not None:
        check_positive_int('bottleneck', bottleneck, 'UniPT')


def _xavier(module: nn.Module) -> None:
    """The official init: Xavier-uniform matrices, default biases."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class UniPTV1(UniPT):
    """mmpetl's first UniPT (``variant='v1'``): decoder hidden states only.

    Built by ``PETLModel(parallel=dict(type='UniPT', variant='v1',
    bottleneck=64))``, not through ``tuners``: it attaches to the whole
    model. The formula is the module docstring's "v1" block.

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

    variant = 'v1'

    def __init__(self, dims: int, num_layers: int, bottleneck: int = 64,
                 layer_norm: bool = True, act: str = 'gelu',
                 all_layers: bool = True, variant: str = 'v1',
                 form: Optional[str] = None) -> None:
        super().__init__()
        check_positive_int('bottleneck', bottleneck, 'UniPT')
        check_positive_int('num_layers', num_layers, 'UniPT')
        self.dims, self.num_layers = dims, num_layers
        self.bottleneck, self.all_layers = bottleneck, all_layers
        self.norms = nn.ModuleList(
            nn.LayerNorm(dims) if layer_norm else nn.Identity()
            for _ in range(num_layers))
        self.downs = nn.ModuleList(
            nn.Linear(dims, bottleneck) for _ in range(num_layers))
        self.confidence = nn.Linear(bottleneck, 1, bias=False)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.act = build_activation(act, 'UniPT')
        self.up = nn.Linear(bottleneck, dims)
        for down in self.downs:
            nn.init.zeros_(down.bias)  # weight: nn.Linear's kaiming init
        # uniform confidences at init; the zero U makes the branch add 0
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    # -- the network ------------------------------------------------------
    def forward(self, feats: Union[torch.Tensor, Sequence[torch.Tensor]],
                outputs: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The corrections ``U(act(g_k))`` for the layers ``k`` in outputs.

        Args:
            feats (Tensor | Sequence[Tensor]): per-layer outputs
                ``h_1..h_L`` of the frozen model, shape (L, B, N, d) or L
                tensors (B, N, d) (no stacked copy then), without autograd
                history.
            outputs (Sequence[int], optional): 0-based layers ``k`` to
                correct; all L layers if None.

        Returns:
            Tensor: shape (K, B, N, d), K = len(outputs); row i is what to
            add to ``h_{outputs[i]}``.
        """
        num_layers = len(feats)
        if num_layers != self.num_layers:
            raise ValueError(f'UniPT was built for {self.num_layers} layers, '
                             f'got features of {num_layers}')
        outputs = list(range(num_layers)) if outputs is None else list(
            outputs)
        z = torch.stack([
            self._down(h, norm, down)
            for h, norm, down in zip(feats, self.norms, self.downs)
        ])  # (L, B, N, r)
        aggs = []
        for k in outputs:  # only the layers l <= k enter output k
            keys = z[:k + 1]  # (k+1, B, N, r)
            query = z[k].expand_as(keys)
            # softmax(z_k z_l^T / sqrt(r)) z_l for every l <= k, without
            # keeping the (N, N) attention weights for backward
            mixed = keys + F.scaled_dot_product_attention(query, keys, keys)
            score = self.confidence(mixed).squeeze(-1) + \
                self.layer_logits[:k + 1].view(-1, 1, 1)  # (k+1, B, N)
            weight = score.softmax(dim=0)
            aggs.append((weight.unsqueeze(-1) * mixed).sum(dim=0))
        agg = torch.stack(aggs)  # (K, B, N, r)
        return self.up(self.act(agg))

    @staticmethod
    def _down(h: torch.Tensor, norm: nn.Module,
              down: nn.Module) -> torch.Tensor:
        """``D_l(LN_l(h_l))``. With autograd on, ``LN_l(h_l)`` (as large as
        the frozen features) is not kept for ``D_l``'s weight gradient but
        recomputed in backward from ``h_l``, which the LayerNorm keeps
        anyway: one ``(B, N, d)`` tensor per layer kept instead of two."""
        if not (torch.is_grad_enabled() and any(
                p.requires_grad for p in down.parameters())) or \
                isinstance(norm, nn.Identity):
            return down(norm(h))
        return checkpoint(lambda x: down(norm(x)), h, use_reentrant=False,
                          preserve_rng_state=False)

    def describe(self) -> Dict[str, object]:
        return dict(layers=self.num_layers, bottleneck=self.bottleneck,
                    outputs='all' if self.all_layers else 'last')


class UniPTDetr(UniPT):
    """The official UniPT for DETR-family detectors (MDETR's design).

    Args:
        dims (int): the transformer width d.
        num_layers (int): decoder layers L (>= 2).
        num_encoder_layers (int, optional): encoder layers (>= 2); L if None.
        bottleneck (int, optional): side width d_s; d // 2 if None.
        output (str): ``'residual'`` (default): ``h + out``, exact at init;
            ``'replace'`` (the authors'): ``out`` instead of ``h``.
        cross_attention (bool): the encoder side memory ``S`` and the
            decoder layers' cross-attention to it (False: decoder only).
        encoder_mix (bool): the encoder side mixes ``mix(A, T_l)`` over
            all encoder tokens as the authors do (``N_enc x N_enc``
            weights: memory grows with the square of the token count);
            False: ``m_l = T_l``.
        mlp (bool): the nonlinear ``P`` after aggregation and the final LN
            (False: ``P`` = identity, final ReLU -> Linear only).
        mix (str): ``'relu_l1'`` (official) or ``'softmax'``.
        gate (str): ``'image'`` (official, one confidence per image and
            layer) or ``'token'``.
        layers (str): ``'every_other'`` (official) or ``'all'``.
        norm (str): LayerNorm ``'after'`` (official) or ``'before'`` the
            down-projections.
        checkpoint (bool): recompute the network in backward (keeps only
            its inputs and outputs for backward).
        enc_min_stride (int, optional): read the encoder tokens of the
            feature levels whose stride is at least this (default 32: the
            authors' MDETR encoder sees one stride-32 map, ResNet's C5;
            Deformable DETR's finer levels, ~94 % of its tokens at
            800x1333, are left out of the side memory and never kept);
            None: every level. A single-scale encoder (DETR) is read
            whole. Applied by the model surgery
            (:mod:`mmpetl.models.parallel`), which knows the levels.
        local_read (bool): mmpetl's variant, not the authors': each
            decoder layer read also gets the encoder memory sampled at its
            reference points (module docstring); Deformable DETR only
            (the model surgery samples it, see
            :func:`mmpetl.models.parallel.sample_at_references`).
    """

    form = 'detr'

    def __init__(self, dims: int, num_layers: int,
                 num_encoder_layers: Optional[int] = None,
                 bottleneck: Optional[int] = None, output: str = 'residual',
                 cross_attention: bool = True, encoder_mix: bool = False,
                 mlp: bool = True, mix: str = 'relu_l1', gate: str = 'image',
                 layers: str = 'every_other', norm: str = 'after',
                 checkpoint: bool = True,
                 enc_min_stride: Optional[int] = 32,
                 local_read: bool = False,
                 variant: str = 'official', form: str = 'detr') -> None:
        super().__init__()
        _official_args(variant, bottleneck, output, mix, gate, layers)
        if enc_min_stride is not None:
            check_positive_int('enc_min_stride', enc_min_stride, 'UniPT')
        self.enc_min_stride = enc_min_stride
        num_encoder_layers = num_encoder_layers or num_layers
        for name, value in (('num_layers', num_layers),
                            ('num_encoder_layers', num_encoder_layers)):
            if value < 2:
                raise ValueError(
                    f'UniPT (official) reads layers beside the last one: it '
                    f'needs {name} >= 2, got {value}. Use variant=\'v1\' '
                    f'for a one-layer decoder.')
        width = bottleneck or dims // 2
        self.dims, self.num_layers, self.bottleneck = dims, num_layers, width
        self.num_encoder_layers = num_encoder_layers
        self.output, self.mix_kind = output, mix
        self.cross_attention, self.encoder_mix = cross_attention, encoder_mix
        self.use_checkpoint = checkpoint
        self.dec_layers = read_layers(num_layers, layers)
        self.enc_layers = read_layers(num_encoder_layers, layers)
        n = len(self.dec_layers)
        if cross_attention:
            self.enc_down0 = _proj(dims, width, norm)
            self.enc_downs = nn.ModuleList(
                _proj(dims, width, norm) for _ in self.enc_layers)
            self.enc_agg = _Aggregate(width, dims, mlp, gate)
            self.crossers = nn.ModuleList(
                nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))
                for _ in range(n))
        self.dec_down0 = _proj(dims, width, norm)
        self.dec_downs = nn.ModuleList(
            _proj(dims, width, norm) for _ in range(n))
        self.dec_agg = _Aggregate(width, dims, mlp, gate)
        self.local_read = local_read
        if local_read:
            self.local_downs = nn.ModuleList(
                _proj(dims, width, norm) for _ in range(n + 1))
        self.up = nn.Sequential(nn.ReLU(), nn.Linear(width, dims),
                                nn.LayerNorm(dims) if mlp else nn.Identity())
        _xavier(self)
        if output == 'residual':  # h + 0 at init
            last = self.up[-1] if mlp else self.up[1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def outputs(self) -> List[int]:
        """Decoder layers whose hidden states this network rewrites."""
        return self.dec_layers + [self.num_layers - 1]

    def forward(self, enc_feats: Sequence[torch.Tensor],
                enc_mask: Optional[torch.Tensor],
                dec_feats: Sequence[torch.Tensor],
                local: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The hidden states for the heads.

        Args:
            enc_feats (Sequence[Tensor]): the encoder layers' outputs, each
                (B, N, d) (multi-scale tokens flattened), no autograd;
                None for the layers not read (see ``enc_layers``).
            enc_mask (Tensor, optional): (B, N), True for padded tokens
                (MMDet's key padding mask); None: none padded.
            dec_feats (Tensor | Sequence[Tensor]): the decoder layers'
                hidden states, (L, B, Q, d).
            local (Tensor, optional): (L, B, Q, d), the encoder memory
                at each decoder layer's reference points, no autograd;
                required with ``local_read``, refused without.

        Returns:
            Tensor: (L, B, Q, d); the layers in :attr:`outputs` rewritten,
            the others as given.
        """
        if len(dec_feats) != self.num_layers or (
                self.cross_attention and
                len(enc_feats) != self.num_encoder_layers):
            raise ValueError(
                f'UniPT was built for {self.num_encoder_layers} encoder and '
                f'{self.num_layers} decoder layers, got '
                f'{len(enc_feats)} and {len(dec_feats)}')
        valid = None if enc_mask is None else ~enc_mask.bool()
        enc_in = ([enc_feats[i] for i in self.enc_layers] +
                  [enc_feats[-1]]) if self.cross_attention else []
        dec_in = [dec_feats[i] for i in self.outputs]
        if self.local_read != (local is not None):
            raise ValueError(
                f'UniPT built with local_read={self.local_read} was given '
                f"{'no' if local is None else 'the'} local samples: they "
                f'come with local_read=True only (the model surgery '
                f'samples them on Deformable DETR).')
        if local is not None:
            dec_in += [local[i] for i in self.outputs]
        args = (valid, len(enc_in), *enc_in, *dec_in)
        if self.use_checkpoint and torch.is_grad_enabled():
            new = checkpoint(self._side, *args, use_reentrant=False,
                             preserve_rng_state=False)
        else:
            new = self._side(*args)  # (n + 1, B, Q, d)
        rows = dict(zip(self.outputs, new.unbind(0)))
        return torch.stack([rows.get(i, h) for i, h in enumerate(dec_feats)])

    def _side(self, valid, num_enc, *feats) -> torch.Tensor:
        enc, dec = feats[:num_enc], feats[num_enc:]
        loc = None
        if self.local_read:  # the decoder states, then their samples
            half = len(dec) // 2
            dec, loc = dec[:half], dec[half:]
        memory = None
        if self.cross_attention:  # the side memory S from the encoder
            anchor = self.enc_down0(enc[-1])
            targets = [down(h) for down, h in zip(self.enc_downs, enc[:-1])]
            mixed = [mix(anchor, t, valid, True, self.mix_kind)
                     for t in targets] if self.encoder_mix else targets
            memory = self.enc_agg(anchor, targets, mixed, valid)
        anchor = self.dec_down0(dec[-1])
        if loc is not None:
            anchor = anchor + self.local_downs[-1](loc[-1])
        targets = []
        for i, (down, h) in enumerate(zip(self.dec_downs, dec[:-1])):
            t = down(h)
            if loc is not None:
                t = t + self.local_downs[i](loc[i])
            if memory is not None:  # each query reads the image
                t = t + self.crossers[i](
                    mix(t, memory, valid, False, self.mix_kind))
            targets.append(t)
        mixed = [mix(anchor, t, None, True, self.mix_kind) for t in targets]
        final = self.dec_agg(anchor, targets, mixed)
        out = self.up(torch.stack(targets + [final]))
        if self.output == 'residual':
            out = torch.stack(dec) + out
        return out

    def describe(self) -> Dict[str, object]:
        levels = 'all levels' if self.enc_min_stride is None else \
            f'stride >= {self.enc_min_stride}'
        return dict(variant='official', width=self.bottleneck,
                    output=self.output, reads=f'enc {self.enc_layers}+last '
                    f'({levels}), dec {self.dec_layers}+last' +
                    (', memory at the reference points' if self.local_read
                     else ''))


class UniPTViT(UniPT):
    """The official UniPT for ViT classifiers (CLIP4Clip's design).

    Args:
        dims (int): the ViT width d.
        num_layers (int): features read: the embeddings and every block's
            output (13 for 12 blocks).
        bottleneck (int, optional): side width; d // 2 if None (the
            authors used 512 for d = 768; d / 2 keeps the rule of the DETR
            form and a third fewer parameters: 13 per-layer projections
            dominate the count).
        output (str): ``'residual'`` (default): the up-projection starts
            at zero (exact at init); ``'replace'``: the authors' default
            init (their output adds the anchor too).
        mix (str): as :class:`UniPTDetr`; one confidence per image.
        checkpoint (bool): recompute the network in backward
            (``features='keep'``).
        features (str): ``'keep'`` (default): autograd keeps the frozen
            features read (every block's tokens) for the backward;
            ``'recompute'``: nothing of them is kept: the model surgery
            runs the frozen backbone three times (the anchor; each layer's
            side summary as that layer finishes; the same again in
            backward, each layer's gradient as it finishes, the random
            state replayed), so training memory stays at the heads-only
            floor for ~3x the frozen forward's compute. Same outputs and
            gradients (:meth:`forward_streamed`).
    """

    form = 'vit'

    def __init__(self, dims: int, num_layers: int,
                 bottleneck: Optional[int] = None, output: str = 'residual',
                 mix: str = 'relu_l1', checkpoint: bool = True,
                 features: str = 'keep', variant: str = 'official',
                 form: str = 'vit') -> None:
        super().__init__()
        _official_args(variant, bottleneck, output, mix, 'image', 'all')
        check_positive_int('num_layers', num_layers, 'UniPT')
        if features not in FEATURES:
            raise ValueError(f'UniPT: features must be one of {FEATURES}, '
                             f'got {features!r}')
        width = bottleneck or dims // 2
        self.dims, self.num_layers, self.bottleneck = dims, num_layers, width
        self.output, self.mix_kind = output, mix
        self.use_checkpoint, self.features = checkpoint, features
        self.anchor_down = nn.Sequential(nn.ReLU(), nn.Linear(dims, width))
        self.downs = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(dims, width))
            for _ in range(num_layers))
        self.agg = _Aggregate(width, dims, False, 'image')
        self.up = nn.Sequential(nn.ReLU(), nn.Linear(width, dims))
        if output == 'residual':
            nn.init.zeros_(self.up[1].weight)
            nn.init.zeros_(self.up[1].bias)

    def forward(self, feats: Sequence[torch.Tensor], anchor: torch.Tensor,
                align: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """``anchor + Linear(ReLU(sum_l c_l m_l))``.

        Args:
            feats (Sequence[Tensor]): L features (B, N, d), no autograd.
            anchor (Tensor): (B, Na, d), what the head reads, as tokens.
            align (callable): a layer's side tokens (B, N, r) -> the
                tokens matching the anchor's (B, Na, r) (its class token,
                token mean, or patch tokens), added to each mix.
        """
        if len(feats) != self.num_layers:
            raise ValueError(f'UniPT was built for {self.num_layers} '
                             f'layers, got features of {len(feats)}')
        fn = lambda a, *hs: self._side(a, align, hs)  # noqa: E731
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, anchor, *feats, use_reentrant=False,
                              preserve_rng_state=False)
        return fn(anchor, *feats)

    def forward_streamed(self, anchor: torch.Tensor,
                         align: Callable[[torch.Tensor], torch.Tensor],
                         stream: Callable[[Callable], None]) -> torch.Tensor:
        """What :meth:`forward` computes, from features that are never
        all alive at once (``features='recompute'``).

        Each layer enters only through its side summary: its mix with
        the anchor (B, Na, r) and its token mean (B, r). ``stream(take)``
        runs the frozen model once, calling ``take(l, h_l)`` as layer l's
        feature is ready (no autograd, the same values on every call);
        it runs once here and once more in backward, where each layer's
        gradient is taken as its feature comes back.

        Args:
            anchor (Tensor): (B, Na, d), as in :meth:`forward`.
            align (callable): as in :meth:`forward`.
            stream (callable): see above.
        """
        a = self.anchor_down(anchor)
        params = tuple(self.downs.parameters())
        if torch.is_grad_enabled() and (a.requires_grad or any(
                p.requires_grad for p in params)):
            ms, means = _StreamedLayers.apply(self, stream, align, a,
                                              *params)
        else:
            ms, means = _summaries(self, stream, align, a)
        return self._combine(anchor, a, ms.unbind(0), means.unbind(0))

    def layer_summary(self, index: int, a: torch.Tensor, h: torch.Tensor,
                      align: Callable) -> tuple:
        """Layer ``index``'s ``(m_l, mean(T_l))``: all the network needs
        of it, ``m_l = mix(A, T_l) + align(T_l)``, ``T_l = D_l(h_l)``."""
        t = self.downs[index](h)
        return (mix(a, t, None, False, self.mix_kind) + align(t),
                _mean(t, None))

    def _combine(self, anchor, a, ms, means):
        return anchor + self.up(self.agg.combine(a, means, ms,
                                                 residual=False))

    def _side(self, anchor, align, feats):
        a = self.anchor_down(anchor)
        parts = [self.layer_summary(i, a, h, align)
                 for i, h in enumerate(feats)]
        return self._combine(anchor, a, [m for m, _ in parts],
                             [mean for _, mean in parts])

    def describe(self) -> Dict[str, object]:
        return dict(variant='official', width=self.bottleneck,
                    output=self.output, layers=self.num_layers,
                    features=self.features)


def _summaries(net: UniPTViT, stream: Callable, align: Callable,
               a: torch.Tensor) -> tuple:
    """Every layer's side summary, stacked: (L, B, Na, r), (L, B, r)."""
    parts: Dict[int, tuple] = {}

    def take(index, h):
        parts[index] = net.layer_summary(index, a, h, align)

    stream(take)
    if sorted(parts) != list(range(net.num_layers)):
        raise ValueError(f'UniPT was built for {net.num_layers} layers, '
                         f'the frozen model gave features of layers '
                         f'{sorted(parts)}')
    return (torch.stack([parts[i][0] for i in range(net.num_layers)]),
            torch.stack([parts[i][1] for i in range(net.num_layers)]))


class _StreamedLayers(torch.autograd.Function):
    """The per-layer side summaries, their backward taken layer by layer
    as the frozen model runs again: no frozen feature is kept."""

    @staticmethod
    def forward(ctx, net, stream, align, a, *params):
        ctx.net, ctx.stream, ctx.align = net, stream, align
        ctx.save_for_backward(a)
        return _summaries(net, stream, align, a)

    @staticmethod
    def backward(ctx, grad_ms, grad_means):
        a, = ctx.saved_tensors
        net = ctx.net
        params = list(net.downs.parameters())
        slot = {id(p): i for i, p in enumerate(params)}
        grads: List[Optional[torch.Tensor]] = [None] * len(params)
        grad_a = torch.zeros_like(a)

        def take(index, h):
            mine = [p for p in net.downs[index].parameters()
                    if p.requires_grad]
            with torch.enable_grad():
                leaf = a.detach().requires_grad_()
                outs = net.layer_summary(index, leaf, h, ctx.align)
                got = torch.autograd.grad(
                    outs, [leaf] + mine,
                    (grad_ms[index], grad_means[index]), allow_unused=True)
            if got[0] is not None:
                grad_a.add_(got[0])
            for p, g in zip(mine, got[1:]):
                if g is not None:
                    grads[slot[id(p)]] = g

        ctx.stream(take)
        return (None, None, None, grad_a if ctx.needs_input_grad[3] else
                None, *grads)


def _config_args() -> tuple:
    """Every variant's arguments: what a ``UniPT`` config may name."""
    names = []
    for cls in (UniPTV1, UniPTDetr, UniPTViT):
        names += [n for n in inspect.signature(cls.__init__).parameters
                  if n not in ('self', 'dims', 'num_layers')]
    return tuple(dict.fromkeys(names))


UniPT.extra_config_args = _config_args()
# Every variant shows as its config type, ``UniPT``, in reports and error
# messages (``type(t).__name__``); ``__qualname__`` stays distinct for
# pickling.
for _cls in (UniPTV1, UniPTDetr, UniPTViT):
    _cls.__name__ = 'UniPT'
