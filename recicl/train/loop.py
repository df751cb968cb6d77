"""The Ray Train entry point, :func:`train_loop_per_worker`, which runs a worker's recipe.

The driver (:mod:`recicl.train.trainer`) hands this function to Ray Train; every worker then runs
a :class:`recicl.train.recipe.TrainRecipe`. The recipe is imported inside the function so that the
driver (and the CLI) import this module without torch or Ray Train. The plan, the checkpointed
state and the fault hook are :mod:`recicl.train.contract`, below both this module and the
recipe (which used to import them from here: a cycle).
"""

from __future__ import annotations

from typing import Any

from recicl.config import ReciclConfig
from recicl.train.contract import TrainPlan


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` = {"cfg": ReciclConfig dump, "plan": TrainPlan dump}."""
    from recicl.train.recipe import TrainRecipe

    cfg = ReciclConfig.model_validate(config["cfg"])
    TrainRecipe(cfg, TrainPlan(**config["plan"])).run()
