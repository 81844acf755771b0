"""Bridges to other training stacks, each imported only on use (the core never imports them).

``kdistill.integrations.hf_trainer``: :class:`DistillationTrainer`, a ``transformers.Trainer``.
"""
