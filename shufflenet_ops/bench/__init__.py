"""Benchmarks of the fused grouped 1x1 conv + channel shuffle (``shufflenet-bench``).

- ``problem``: the layer shapes of ShuffleNet V1 as benchmark problems;
- ``providers``: every implementation compared, defined once;
- ``bytes_model``: the analytic memory traffic of each provider;
- ``timing``: medians and 20th/80th percentiles (torch.utils.benchmark on CPU,
  triton.testing.do_bench on GPU);
- ``roofline``: copy bandwidth and GEMM throughput measured in the same run;
- ``layers`` / ``networks``: the layer level, and the unit and whole-model levels;
- ``report``: markdown, CSV, JSON with provenance, PNG plots;
- ``__main__``: the CLI.
"""

from .bytes_model import bytes_moved, passes
from .problem import MODES, LayerProblem, shufflenet_problems
from .providers import LAYER_PROVIDERS, NETWORK_PROVIDERS

__all__ = ["LAYER_PROVIDERS", "MODES", "NETWORK_PROVIDERS", "LayerProblem", "bytes_moved", "passes",
           "shufflenet_problems"]
