"""Multi-task widening (arXiv:1611.05377): the core of the method, not yet registered as a plugin.

- :mod:`plugins.multitask.model`: branched multi-task networks (:class:`TreeConfig`, :class:`BranchedNet`);
- :mod:`plugins.multitask.somp`: thin initialisation from a wide network by SOMP;
- :mod:`plugins.multitask.affinity`: per-example margins, task and branch affinity;
- :mod:`plugins.multitask.widening`: the top-down greedy widening decision and step.

Section numbers (§) refer to the research brief ``shared/research/multitask_widening.md`` (issue 12); the
paper's own text was not available to it, so no equation numbers of the paper are quoted. Where the brief
leaves room, each module's docstring says what was chosen.

The plugin is registered (hooks, ``DEFAULT_PLUGINS``) once it has recipes and a demo.
"""
