"""Theory checks: every alignment method on a world whose answer is known (THEORY.md beside this file).

``python -m engine.align.theory --world gaussian --methods nabla-r2d3 draft --beta 1 --steps 300``
"""

from .run import TheoryRun, TheorySetup, World
from .targets import GaussianChain, distances, resample_tilt, tilt_linear
from .world import (
           REWARDS,
           WORLDS,
           Mixture,
           SampleReward,
           SampleRewardPath,
           WorldModel,
           make_data,
)

__all__ = [
           "REWARDS",
           "WORLDS",
           "GaussianChain",
           "Mixture",
           "SampleReward",
           "SampleRewardPath",
           "TheoryRun",
           "TheorySetup",
           "World",
           "WorldModel",
           "distances",
           "make_data",
           "resample_tilt",
           "tilt_linear",
]
