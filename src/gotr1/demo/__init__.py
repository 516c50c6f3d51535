"""`gotr1 demo` and `gotr1 ablate`: the whole GoT-R1 recipe in the embedded world, on a laptop CPU.

- `config`: `DemoConfig` (full and ``--quick`` settings) and the small ``world-demo`` preset.
- `pipeline`: `run_demo` — world data -> image tokenizer -> SFT -> GRPO -> held-out benchmark of
  both models -> report; every stage caches its result in the run folder.
- `report`: `write_report` — report.html (SFT vs GRPO side by side, reward curves, category
  table, how the chains changed), the curve PNG drawn with PIL.
- `ablate`: `run_ablation` — the paper's reward ablations from one SFT checkpoint.

Importing this package does not import torch.
"""

from __future__ import annotations
