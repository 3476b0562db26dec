"""The ServicePort over the coordinator's real service functions (central.services).

"One more router over the same service functions": create_orders, cancel_order,
get_order / list_orders, each in its own committed session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from central.db import session_scope
from central.errors import InvalidTransition, NotFound
from central.models import Order
from central.services import orders as order_service
from central.services.lifecycle import Actor
from central.services.validation import RefusalCode
from central.settings import Settings
from central.soap.auth import TokenAuthenticator
from central.soap.config import SoapSettings
from central.soap.service_port import (
    CancelRequest,
    ControlAction,
    ControlRequest,
    ItemOutcome,
    OrderQuery,
    OrderView,
    Principal,
    Refusal,
)
from central.state import ACTIVE_STATES, OrderState
from shared.codes import Action, OrderReason

if TYPE_CHECKING:
    from central.soap.gateway import SoapGateway

REFUSALS: dict[str, Refusal] = {
    RefusalCode.UNKNOWN_METER.value: Refusal.UNKNOWN_METER,
    RefusalCode.NOT_COMMISSIONED.value: Refusal.NOT_COMMISSIONED,
    RefusalCode.NO_CONCENTRATOR.value: Refusal.NOT_LINKED,
    RefusalCode.UNKNOWN_CONCENTRATOR.value: Refusal.NOT_LINKED,
    RefusalCode.CONCENTRATOR_DECOMMISSIONED.value: Refusal.CONCENTRATOR_DECOMMISSIONED,
    RefusalCode.PROTECTED_CUSTOMER.value: Refusal.PROTECTED_CUSTOMER,
    RefusalCode.NOT_WORKING_DAY.value: Refusal.NOT_WORKING_DAY,
    RefusalCode.MORATORIUM.value: Refusal.MORATORIUM,
    RefusalCode.METER_BUSY.value: Refusal.DUPLICATE,
    RefusalCode.UNSUPPORTED_ACTION.value: Refusal.UNSUPPORTED_CONTROL,
    RefusalCode.INVALID_REQUEST.value: Refusal.MISSING_DATA,
}

SOURCE = "soap"


def _actor(principal: Principal) -> Actor:
    return Actor(f"soap:{principal.name}", principal.role)


def _view(order: Order) -> OrderView:
    detail = order.refusal_detail or order.result_detail or order.result_reason
    return OrderView(
        order_id=order.id,
        meter_id=order.meter_id,
        action=ControlAction(order.action),
        state=order.state,
        reason=order.reason,
        issuer_id=order.issuer_id,
        issuer_tracking_id=order.external_ref,
        updated_at=order.updated_at,
        detail=detail,
        not_before=order.not_before,
        deadline=order.deadline,
    )


def _by_correlation(session: Session, correlation_id: str) -> list[Order]:
    query = (
        select(Order)
        .where(Order.correlation_id == correlation_id)
        .order_by(Order.created_at.desc(), Order.id)
        .limit(1000)
    )
    return list(session.scalars(query))


class CentralServicePort:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        on_accepted: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        # called once accepted orders are committed: wakes the dispatcher at once (the
        # REST route dispatches in its request; SOAP answers Legacy without waiting for
        # the broker, so its orders must not wait for the next sweep either)
        self.on_accepted = on_accepted

    @staticmethod
    def _order_request(r: ControlRequest) -> order_service.OrderRequest | ItemOutcome:
        try:
            return order_service.OrderRequest(
                meter_id=r.meter_id,
                action=Action(r.action.value),
                reason=OrderReason(r.reason),
                special=r.special,
                priority=r.priority,
                idempotency_key=r.idempotency_key,
                external_ref=r.issuer_tracking_id,
                issuer_id=r.issuer_id,
                not_before=r.not_before,
                deadline=r.deadline,
                correlation_id=r.correlation_id,
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            return ItemOutcome(meter_id=r.meter_id, refusal=Refusal.MISSING_DATA, detail=problems)

    def create(self, requests: Sequence[ControlRequest], actor: Principal) -> list[ItemOutcome]:
        built = [self._order_request(r) for r in requests]
        wanted = [b for b in built if isinstance(b, order_service.OrderRequest)]
        created: list[ItemOutcome] = []
        if wanted:
            # one message, one Header: its ReplyAddress (checked by the gateway) for all
            channel = order_service.Channel(SOURCE, requests[0].reply_address)
            created = self._create(wanted, actor, channel)
        answers = iter(created)
        return [b if isinstance(b, ItemOutcome) else next(answers) for b in built]

    def _create(
        self,
        wanted: list[order_service.OrderRequest],
        actor: Principal,
        channel: order_service.Channel,
    ) -> list[ItemOutcome]:
        with session_scope(self.sessions) as session:
            batch = order_service.create_orders(
                session, wanted, _actor(actor), self.settings, channel=channel
            )
        if self.on_accepted is not None and batch.accepted:
            self.on_accepted()
        answers: list[ItemOutcome] = []
        for item in batch.items:
            if item.accepted:
                state = item.state
                if item.needs_approval:
                    state = f"{state} (waiting for a second person's approval)"
                answers.append(
                    ItemOutcome(
                        meter_id=item.meter_id,
                        order_id=item.order_id,
                        existing=item.duplicate,
                        state=state,
                    )
                )
            else:
                refusal = REFUSALS.get(item.code or "", Refusal.INTERNAL_ERROR)
                answers.append(
                    ItemOutcome(
                        meter_id=item.meter_id,
                        order_id=item.order_id,
                        refusal=refusal,
                        detail=item.message,
                        existing=item.duplicate,
                    )
                )
        return answers

    def _targets(self, session: Session, wanted: CancelRequest) -> list[Order]:
        if wanted.order_id:
            try:
                found = [order_service.get_order(session, wanted.order_id, with_events=False)]
            except NotFound:
                return []
            if wanted.meter_id:
                found = [o for o in found if o.meter_id == wanted.meter_id]
            return found
        rows = order_service.list_orders(
            session, external_ref=wanted.issuer_tracking_id, meter_id=wanted.meter_id, limit=1000
        )
        active = [o for o in rows if OrderState(o.state) in ACTIVE_STATES]
        return active or rows

    def cancel(self, requests: Sequence[CancelRequest], actor: Principal) -> list[ItemOutcome]:
        answers: list[ItemOutcome] = []
        who = _actor(actor)
        for wanted in requests:
            with session_scope(self.sessions) as session:
                targets = self._targets(session, wanted)
                if not targets:
                    ref = wanted.order_id or wanted.issuer_tracking_id
                    answers.append(
                        ItemOutcome(
                            meter_id=wanted.meter_id,
                            order_id=wanted.order_id,
                            refusal=Refusal.ORDER_NOT_FOUND,
                            detail=f"no order matches '{ref}'",
                        )
                    )
                    continue
                for order in targets:
                    try:
                        done = order_service.cancel_and_commit(
                            session, order.id, who, detail=f"cancel from Legacy by {actor.name}"
                        )
                    except InvalidTransition as exc:
                        answers.append(
                            ItemOutcome(
                                meter_id=order.meter_id,
                                order_id=order.id,
                                refusal=Refusal.NOT_CANCELLABLE,
                                detail=str(exc),
                            )
                        )
                        continue
                    state = done.state
                    if done.cancel_requested and state != OrderState.CANCELLED:
                        state = f"{state} (cancel sent to the concentrator)"
                    answers.append(
                        ItemOutcome(meter_id=done.meter_id, order_id=done.id, state=state)
                    )
        return answers

    def query(self, query: OrderQuery, actor: Principal) -> list[OrderView]:
        found: dict[str, Order] = {}
        with session_scope(self.sessions) as session:
            for order_id in query.order_ids:
                try:
                    order = order_service.get_order(session, order_id, with_events=False)
                except NotFound:
                    continue
                found[order.id] = order
            for ref in query.issuer_tracking_ids:
                for order in order_service.list_orders(session, external_ref=ref, limit=1000):
                    found[order.id] = order
            for meter in query.meter_ids:
                for order in order_service.list_orders(session, meter_id=meter, limit=100):
                    found[order.id] = order
            for correlation_id in query.correlation_ids:
                for order in _by_correlation(session, correlation_id):
                    found[order.id] = order
            return [_view(o) for o in found.values()]


def token_authenticator(settings: Settings) -> TokenAuthenticator:
    return TokenAuthenticator(
        {token: (entry.name, entry.role) for token, entry in settings.api_tokens.items()}
    )


def build_gateway(
    settings: Settings,
    sessions: sessionmaker[Session],
    soap_settings: SoapSettings | None = None,
    on_accepted: Callable[[], None] | None = None,
) -> SoapGateway:
    from central.soap.gateway import SoapGateway
    from central.soap.store import MessageLog

    engine: Any = sessions.kw["bind"]
    return SoapGateway(
        service=CentralServicePort(sessions, settings, on_accepted),
        authenticator=token_authenticator(settings),
        message_log=MessageLog(engine),
        settings=soap_settings or SoapSettings(),
    )
