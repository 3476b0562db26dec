"""Orders: create one or a batch, list and filter, show with timeline, cancel, approve."""

from __future__ import annotations

import logging
from dataclasses import fields
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from central.api.deps import (
    AppContext,
    Approver,
    ContextDep,
    Offset,
    Operator,
    SessionDep,
    Viewer,
)
from central.api.schemas import (
    BatchApprovalOut,
    BatchIn,
    BatchOut,
    CancelIn,
    EstimateOut,
    ItemOut,
    OrderDetail,
    OrderOut,
)
from central.db import sqlite_write_lock
from central.errors import DispatchError, StorageError
from central.services import estimate, lookup
from central.services import orders as service
from central.services.lifecycle import Actor
from central.services.orders import ItemResult, OrderRequest
from central.state import OUTCOMES, OrderState
from shared.codes import Action

log = logging.getLogger(__name__)
router = APIRouter(tags=["orders"])
_ITEM_FIELDS = tuple(f.name for f in fields(ItemResult))


class SingleOut(BaseModel):
    item: ItemOut
    order: OrderOut | None


def _dispatch(context: ContextDep) -> int:
    try:
        return context.coordinator.dispatch_now()
    except (DispatchError, StorageError) as exc:
        # Stored and committed: the background loop publishes them later.
        log.warning("immediate dispatch failed, left to the background loop: %s", exc)
        return 0


def _create(
    session: Session, requests: list[OrderRequest], context: AppContext, actor: Actor
) -> service.BatchOutcome:
    """Validate and store; committed (stored) before anything is answered or published."""
    with sqlite_write_lock(session):
        try:
            outcome = service.create_orders(session, requests, actor, context.settings)
            session.commit()
        except BaseException:
            session.rollback()  # end the write transaction while holding the lock
            raise
    return outcome


def _item_dict(item: ItemResult) -> dict[str, object]:
    # dataclasses.asdict deep-copies every field recursively: for thousands of flat
    # items (str/int/bool/None) it was ~9 % of a batch request. Same keys and values.
    return {name: getattr(item, name) for name in _ITEM_FIELDS}


@router.post("/orders/batch", response_model=BatchOut)
def create_batch(
    body: BatchIn, session: SessionDep, context: ContextDep, actor: Operator
) -> JSONResponse:
    """Create many orders; one item per request (accepted, or refused with a code)."""
    outcome = _create(session, body.orders, context, actor)
    dispatched = _dispatch(context) if outcome.accepted else 0
    accepted = [(item.meter_id, body.orders[item.index].action.value) for item in outcome.items
                if item.accepted and not item.duplicate]
    # Built directly (no second validation of thousands of items): same shape as BatchOut.
    return JSONResponse(
        {
            "batch_id": outcome.batch_id,
            "needs_approval": outcome.needs_approval,
            "accepted": outcome.accepted,
            "refused": outcome.refused,
            "dispatched": dispatched,
            "estimate": _estimate(session, context, accepted),
            "items": [_item_dict(item) for item in outcome.items],
        }
    )


def _estimate(
    session: Session, context: AppContext, requests: list[tuple[str, str]]
) -> dict[str, object]:
    return estimate.estimate_requests(session, context.settings, requests).as_dict()


@router.post("/orders/estimate", response_model=EstimateOut)
def estimate_batch(body: BatchIn, session: SessionDep, context: ContextDep, _: Viewer) -> JSONResponse:
    """How long this batch would take, from the rate limits and the lines' measured
    times, before anything is created (``rcd campaign run`` prints it first)."""
    requests = [(order.meter_id, order.action.value) for order in body.orders]
    return JSONResponse(_estimate(session, context, requests))


@router.post(
    "/orders",
    response_model=SingleOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": SingleOut, "description": "refused, or already known"}},
)
def create_order(
    body: OrderRequest,
    session: SessionDep,
    context: ContextDep,
    actor: Operator,
    response: Response,
) -> SingleOut:
    outcome = _create(session, [body], context, actor)
    item = outcome.items[0]
    if item.accepted and not item.duplicate:
        _dispatch(context)
    if item.duplicate or not item.accepted:
        response.status_code = status.HTTP_200_OK
    session.expire_all()
    order = service.get_order(session, item.order_id, with_events=False) if item.order_id else None
    return SingleOut(
        item=ItemOut.model_validate(item, from_attributes=True),
        order=OrderOut.model_validate(order) if order else None,
    )


@router.get("/orders", response_model=list[OrderOut])
def list_orders(
    session: SessionDep,
    _actor: Viewer,
    state: str | None = None,
    outcome: str | None = None,
    meter_id: str | None = None,
    concentrator_id: str | None = None,
    action: str | None = None,
    batch_id: str | None = None,
    external_ref: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> list[OrderOut]:
    """Newest first. ``state`` and ``outcome`` are two fields: an order reported to
    Legacy keeps its outcome, and ``state=failed`` also finds the reported ones that
    failed. An unknown state, outcome or action is refused (400) with the valid ones."""
    rows = service.list_orders(
        session,
        state=lookup.choice("state", state, [s.value for s in OrderState]),
        outcome=lookup.choice("outcome", outcome, OUTCOMES),
        meter_id=meter_id,
        concentrator_id=concentrator_id,
        action=lookup.choice("action", action, [a.value for a in Action]),
        batch_id=batch_id,
        external_ref=external_ref,
        since=since,
        limit=limit,
        offset=offset,
    )
    return [OrderOut.model_validate(row) for row in rows]


@router.get("/orders/{order_id}", response_model=OrderDetail)
def show_order(order_id: str, session: SessionDep, _actor: Viewer) -> OrderDetail:
    """The order with its timeline: every step of the brief, when, by whom. ``order_id``
    may be the first characters of the id (at least 4, as the dashboard shows 8) when
    only one order starts with them."""
    return OrderDetail.model_validate(lookup.find_order(session, order_id))


@router.post("/orders/{order_id}/cancel", response_model=OrderOut)
def cancel_order(
    order_id: str,
    session: SessionDep,
    context: ContextDep,
    actor: Operator,
    body: CancelIn | None = None,
) -> OrderOut:
    order_id = lookup.order_id_of(session, order_id)
    order = service.cancel_and_commit(
        session, order_id, actor, detail=body.detail if body else ""
    )
    context.coordinator.kick()
    return OrderOut.model_validate(order)


@router.post("/orders/{order_id}/approve", response_model=BatchApprovalOut)
def approve_order(
    order_id: str, session: SessionDep, context: ContextDep, actor: Approver
) -> BatchApprovalOut:
    """Approve the mass-disconnect batch holding this order (a second person)."""
    batch = service.approve_order(session, order_id, actor)
    session.commit()
    _dispatch(context)
    return BatchApprovalOut.model_validate(batch)


@router.post("/batches/{batch_id}/approve", response_model=BatchApprovalOut)
def approve_batch(
    batch_id: str, session: SessionDep, context: ContextDep, actor: Approver
) -> BatchApprovalOut:
    batch = service.approve_batch(session, batch_id, actor)
    session.commit()
    _dispatch(context)
    return BatchApprovalOut.model_validate(batch)
