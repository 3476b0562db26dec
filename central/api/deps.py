"""Dependencies shared by the routers (``Annotated`` style).

Authentication: ``Authorization: Bearer <token>``; tokens and their roles come
from settings (``RCD_API_TOKENS``). Roles are ordered viewer < operator <
approver < admin; a route names the lowest role it accepts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.services.lifecycle import Actor
from central.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    factory: sessionmaker[Session]
    coordinator: Coordinator
    tokens: dict[str, Actor]  # sha256(token) -> actor
    metrics_registry: CollectorRegistry


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    session = context.factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="API token: Authorization: Bearer <token>")


def require(role: str) -> Callable[..., Actor]:
    def check(
        context: ContextDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Actor:
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        actor = context.tokens.get(hash_token(credentials.credentials))
        if actor is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "unknown API token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not actor.at_least(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"role {role} required, token has {actor.role}"
            )
        return actor

    check.__name__ = f"require_{role}"
    return check


Viewer = Annotated[Actor, Depends(require("viewer"))]
Operator = Annotated[Actor, Depends(require("operator"))]
Approver = Annotated[Actor, Depends(require("approver"))]
Admin = Annotated[Actor, Depends(require("admin"))]


# Bounds as the database holds them (PostgreSQL INTEGER, the narrowest of our columns and
# of SQLite's limits): a larger number is refused with 422, never an OverflowError (500).
MAX_DB_INT = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_DB_INT)]
RowId = Annotated[int, Path(ge=1, le=MAX_DB_INT)]
