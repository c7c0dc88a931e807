"""ekd — token-level knowledge distillation of causal language models.

A teacher LM teaches a student LM; ekd decides token by token *where* the teacher's supervision goes
(selection policies), *how* it is delivered (dense, top-K or sampled targets) and *at what temperature*.
"""

__version__ = "0.1.0"
