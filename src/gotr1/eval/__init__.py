"""Benchmarks: T2I-CompBench and GenEval rules, their official folder layouts, prompt parsing.

- :mod:`gotr1.eval.evidence`: the :class:`EvidenceScorer` protocol (detect / yes_prob / colour)
  that supplies the evidence the official rules consume.
- :mod:`gotr1.eval.compbench`: T2I-CompBench's rules (2D spatial, numeracy, BLIP-VQA product,
  3-in-1), exact to the official scripts.
- :mod:`gotr1.eval.geneval`: GenEval's rules (include/exclude clauses, relative position, colour,
  summary), exact to the official evaluator.
- :mod:`gotr1.eval.prompt_parsing`: rule-based prompt parsing (no spaCy model needed).
- :mod:`gotr1.eval.layouts`: shipped prompt files, official image-folder layouts, result writers.
- :mod:`gotr1.eval.scorers`: evidence scorers — the world's pixel detector
  (:class:`~gotr1.eval.scorers.WorldEvidenceScorer`) and Qwen2.5-VL, local or over HTTP
  (:class:`~gotr1.eval.scorers.QwenEvidenceScorer`) — and batched scoring (``run_batched``).
- :mod:`gotr1.eval.generation`: sharded, resumable generation of benchmark images with a policy.
- :mod:`gotr1.eval.world_bench`: the world benchmark (``evaluate_world``) and world prompts phrased
  for the two official protocols.
- :mod:`gotr1.eval.commands`: ``gotr1 eval compbench|geneval|world``.

Importing this package is cheap (no torch).
"""

from gotr1.eval.evidence import Detection, EvidenceScorer, grid_to_pixels, pixels_to_grid

__all__ = ["Detection", "EvidenceScorer", "grid_to_pixels", "pixels_to_grid"]
