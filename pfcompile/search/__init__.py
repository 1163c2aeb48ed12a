"""Hardware-aware compression search (``pfcompile run``): a search space from
the model's channel groups, a kernel-level latency model trained on device
measurements, strategies (hw, flops, uniform, random, tpe), an append-only
trial log with resume, and a JSON + HTML report."""

from pfcompile.search.api import run
from pfcompile.search.device_spec import DeviceSpec
from pfcompile.search.loop import SearchResult, SearchSettings, run_search
from pfcompile.search.run_config import RunConfig
from pfcompile.search.space import SearchSpace, build_space, compress
from pfcompile.search.strategies import STRATEGIES, Goal

__all__ = [
           "STRATEGIES",
           "DeviceSpec",
           "Goal",
           "RunConfig",
           "SearchResult",
           "SearchSettings",
           "SearchSpace",
           "build_space",
           "compress",
           "run",
           "run_search",
]
