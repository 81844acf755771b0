"""Bring scripts and configs from the seed article's two earlier libraries to kdistill.

- :mod:`kdistill.compat.textbrewer`: TextBrewer 0.2.1's ``GeneralDistiller``, ``MultiTaskDistiller``,
  ``BasicTrainer``, ``TrainingConfig``, ``DistillationConfig`` … — change the import line, keep the script.
- :mod:`kdistill.compat.knowledge_distillation`: the KnowledgeDistillation library's
  ``KnowledgeDistiller``, ``MultiLayerBasedDistillationLoss``, ``MultiLayerBasedDistillationEvaluator``.
- :mod:`kdistill.compat.yaml_import`: their config shapes read as native kdistill configs
  (``detect_and_convert``), with a note showing the native YAML.
- :mod:`kdistill.compat.legacy`: :class:`LegacyOutputs`, how the old tuple-unpacking adaptors
  (``last_hidden_state, pooler_output, hidden_states, attentions = outputs``) run on today's
  ``transformers``.

Both libraries' loops run on kdistill's :class:`~kdistill.Distiller`: each configured layer
match becomes a :class:`~kdistill.Match` with a kdistill loss; docs/compat.md has the mapping.
"""

from kdistill.compat.legacy import HookedAttentions, LegacyCaller, LegacyOutputs

__all__ = ["HookedAttentions", "LegacyCaller", "LegacyOutputs"]
