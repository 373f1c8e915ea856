"""The workflow's planner: from a validated workflow config to the runs of the grid, their cct
configs and the paths of everything the workflow writes.

- :mod:`planner.layout`: the results tree, spelled once (:class:`~planner.layout.Run`,
  :class:`~planner.layout.Layout`);
- :mod:`planner.vocabulary`: the settings, the methods each allows, method order and display names;
- :mod:`planner.configs`: what a setting selects and the cct layers a run's config is merged from;
- :mod:`planner.grid`: grid expansion, run configs, canonical and alias runs, pre-flight checks;
- one module per special setting: :mod:`planner.multi_domain` (pairings, joint runs),
  :mod:`planner.weak_labels` (CAM configs, weak-label pipelines).

``workflow/`` is on ``sys.path`` for the Snakefile (``workflow/rules/common.smk``), on ``PYTHONPATH``
for the jobs (the same file's shell prefix) and for pytest (``pyproject.toml``). What the method
means comes from the ``cct`` package (:mod:`cct.methods`, :mod:`cct.model.perturbations`); no
module here imports torch.
"""
