"""Benchmarks of the fused grouped 1x1 conv + channel shuffle (``shufflenet-bench``, the
project's one benchmark harness: CPU and GPU, layers to whole programs).

- ``problem``: the layer shapes of ShuffleNet V1 as benchmark problems, and the
  kernel-level set with both placements of the shuffle;
- ``providers``: every implementation compared, defined once, with the input builder;
- ``bytes_model``: the analytic memory traffic of each provider (the one bytes model);
- ``timing``: medians and 20th/80th percentiles (torch.utils.benchmark on CPU,
  triton.testing.do_bench on GPU) and CUDA-graph replay times;
- ``roofline``: copy bandwidth and GEMM throughput measured in the same run;
- ``layers`` / ``networks``: the layer level, and the unit and whole-model levels;
- ``provenance``: the one record of where and how a measurement was taken;
- ``report``: markdown, CSV, JSON, PNG plots;
- ``kernels``, ``profiling``, ``host_overhead``, ``train``: the subcommands beside the main
  run (GPU kernel timing; ncu and profile-step; host time per call; training);
- ``cli`` / ``__main__``: the CLI.
"""

from .bytes_model import bytes_moved, passes
from .problem import MODES, LayerProblem, shufflenet_problems
from .providers import LAYER_PROVIDERS, NETWORK_PROVIDERS

__all__ = ["LAYER_PROVIDERS", "MODES", "NETWORK_PROVIDERS", "LayerProblem", "bytes_moved", "passes",
           "shufflenet_problems"]
