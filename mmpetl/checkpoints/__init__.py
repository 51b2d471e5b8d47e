"""Tuner checkpoints: the format, the base they belong to, applying them to
a base, exporting merged plain checkpoints, model-zoo publishing."""
from .apply import (apply_tuner_checkpoint, check_tuner_fits,
                    load_tuner_state)
from .base import (PIN_KEYS, PIN_SHA, BaseMismatchError, ShapeMismatchError,
                   UnpinnedTunerError, base_meta, base_sha256, check_base,
                   check_shapes, content_pin, file_digests, frozen_digests,
                   keys_hash, model_pin, state_dict_of, tensor_digests)
from .export import (NotMergeableError, build_tuned_model, export_checkpoint,
                     plain_config, write_plain_config)
from .format import (MARKER, load_tuner_checkpoint, save_tuner_checkpoint,
                     tuner_checkpoint, write_tuner_checkpoint)
from .publish import publish_checkpoint

__all__ = [
    'apply_tuner_checkpoint', 'load_tuner_state', 'check_tuner_fits',
    'BaseMismatchError', 'ShapeMismatchError', 'base_meta', 'base_sha256',
    'check_base', 'check_shapes', 'keys_hash', 'state_dict_of',
    'UnpinnedTunerError', 'content_pin', 'file_digests', 'frozen_digests',
    'model_pin', 'tensor_digests', 'PIN_SHA', 'PIN_KEYS',
    'NotMergeableError', 'build_tuned_model', 'export_checkpoint', 'MARKER',
    'load_tuner_checkpoint', 'save_tuner_checkpoint', 'tuner_checkpoint',
    'write_tuner_checkpoint', 'publish_checkpoint', 'plain_config',
    'write_plain_config'
]
