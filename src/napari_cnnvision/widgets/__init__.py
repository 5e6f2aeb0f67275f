"""Thin napari dock widgets. They gather inputs, start jobs in the compute worker from a
``thread_worker`` and turn results into layers via :mod:`napari_cnnvision.layers`.

Shared by every task widget (a new one reuses these instead of copying the Segment widget):
``_base.JobWidget`` (Run / Cancel, progress bar, busy state, a wrapping ``StatusLabel``, one way
to report errors, ``start_job``), ``_model_picker.ModelPicker`` (registry models of a task or a
folder; damaged folders reported), ``_results`` (find / replace in place / add / drop the
plugin's result layers) and ``_axes`` (axis orders a layer can be read with, and the guess).
"""
