"""Single-object localization (PyTorch): one box + class per image, frame or region.

A CNN backbone with a class head (cross-entropy) and a box head (L2 on normalized box
coordinates); total loss = CE + λ·L2. A model is a folder with ``config.json``,
``weights.pt`` (a state_dict) and a ``model.json`` card (task ``localize``, backend
``localizer``).

Modules: :mod:`.model` (architecture, box conversions), :mod:`.io` (save/load),
:mod:`.predict` (``localize``, the worker job), :mod:`.train` (the trainer).
PyTorch is imported by ``model`` and inside the functions of the other modules, never by this
package itself, so importing it stays cheap.
"""
