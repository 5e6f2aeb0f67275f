"""U-Net instance segmentation (PyTorch): 3-class semantic output + seeded watershed.

The network predicts, per pixel, background / object interior / object boundary
(:mod:`.targets` turns label images into such targets and probabilities back into
instances). A model is a folder with ``config.json``, ``weights.pt`` (a state_dict)
and a ``model.json`` card (:mod:`.io`).

Modules: :mod:`.model` (architecture), :mod:`.targets` (numpy only), :mod:`.io`
(save/load), :mod:`.predict` (tiled inference, ``segment``), :mod:`.train`.
PyTorch is imported by ``model`` and inside the functions of the other modules, never
by this package itself, so importing it stays cheap.
"""
