"""The offline demo: a synthetic source -> target detection transfer.

See :mod:`mmpetl.demo.synthetic_coco` (not imported here, so that
``python -m mmpetl.demo.synthetic_coco`` runs it cleanly).
"""
