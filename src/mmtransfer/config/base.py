"""The base of every config section: strict models, the error type, the shared field types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mmtransfer import limits
from mmtransfer.errors import UserError


class ConfigError(UserError):
    """A configuration that cannot be used; the message names each bad field."""


class _Strict(BaseModel):
    # inf and nan are never a setting: lr=inf would train to NaN and exit 0
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


AUTO = "auto"  # a setting whose value depends on another part (the encoder reading the column): resolved once


def _count_or_auto(most: int):
    """An int in [1, most], or auto."""

    def check(value):
        if value != AUTO and not 1 <= value <= most:
            raise ValueError(f"must be at least 1 and at most {most:,}, got {value}")
        return value

    return Annotated[int | Literal["auto"], AfterValidator(check)]


# Every setting that sizes memory, processes or time has an upper bound (mmtransfer.limits): a typo of a few
# zeros is refused here, naming the field and the bound, rather than found by the allocator.
Width = Annotated[int, Field(ge=1, le=limits.MAX_WIDTH)]  # channels, hidden sizes, embeddings
Seed = Annotated[int, Field(ge=0, le=limits.MAX_SEED)]
