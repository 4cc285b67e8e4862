"""FSDP for the largest encoders: one shard unit per transformer block."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.strategies import (
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
)
from timm.models.vision_transformer import Block

__all__ = ["BlockFSDPStrategy", "SHARDED_STRATEGIES"]

#: Strategies that shard the parameters: a forward pass needs every rank, and no rank
#: holds a whole parameter.
SHARDED_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


class BlockFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with every timm ``Block`` (encoder and decoder) wrapped on its own.

    ``use_orig_params`` stays on so the optimizer's weight-decay groups and
    ``torch.compile`` see the original parameters.

    Args:
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3), ``SHARD_GRAD_OP`` (ZeRO-2),
            ``HYBRID_SHARD`` (shard within a node, replicate across nodes) or ``NO_SHARD``.
        checkpoint_blocks: activation checkpointing of every block by FSDP (prefer the
            encoder's ``grad_checkpointing`` when not sharding).
        state_dict_type: ``full`` (one file, loadable anywhere) or ``sharded``.
        limit_all_gathers: throttle all-gathers to bound memory.
        **kwargs: any other ``FSDPStrategy`` argument.
    """

    def __init__(
        self,
        sharding_strategy: Literal[
            "FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"
        ] = "FULL_SHARD",
        checkpoint_blocks: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        limit_all_gathers: bool = True,
        **kwargs: Any,
    ) -> None:
        # A config parser passes every FSDPStrategy argument, unset ones as None.
        if kwargs.get("auto_wrap_policy") is None:
            kwargs["auto_wrap_policy"] = {Block}
        if kwargs.get("use_orig_params") is None:
            kwargs["use_orig_params"] = True
        if checkpoint_blocks and kwargs.get("activation_checkpointing_policy") is None:
            kwargs["activation_checkpointing_policy"] = {Block}
        super().__init__(
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            limit_all_gathers=limit_all_gathers,
            **kwargs,
        )
