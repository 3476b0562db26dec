"""The base of every request body: text the database can store.

PostgreSQL refuses a NUL character in text (SQLite stores it), so a NUL in any
field of a body is refused at the boundary with a 422 that names the field,
instead of failing in the database as a 503.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError


class Input(BaseModel):
    @model_validator(mode="after")
    def _no_nul_characters(self) -> Self:
        for name, value in self:
            if isinstance(value, str) and "\x00" in value:
                raise PydanticCustomError(
                    "nul_character",
                    "'{field}' contains a NUL character, which cannot be stored",
                    {"field": name},
                )
        return self
