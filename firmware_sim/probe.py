"""A minimal DLMS client made only of ``shared.dlms`` pieces, over the TCP wrapper.

Not the agent's client (that is :mod:`shared.dlms.client`, on gurux): the bench uses it
because it is cheap per request, and wire-level tests use it to send exactly the bytes
they want (replays, unsupported services) which gurux would never produce.
"""

from __future__ import annotations

import os
import socket

from shared.dlms import apdu as A
from shared.dlms import axdr, wrapper
from shared.dlms import security as S
from shared.dlms.errors import AssociationRefused, MalformedResponse, NoResponse

ASSOCIATION_LN = A.AttributeRef(15, bytes((0, 0, 40, 0, 0, 255)), 1)
CLIENT_CONFORMANCE = 0x00701F  # get/set/action/selective-access/block-transfer/multiple-refs


class ProbeClient:
    def __init__(
        self, host: str, port: int, *, client: int = 16, keys: S.Keys | None = None,
        title: bytes = b"PROBECLI", ic: int = 1, timeout: float = 5.0,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = client
        self.keys = keys
        self.title = title
        self.ic = ic
        self.server_title = b""
        self.invoke = 0
        self._reader = wrapper.WrapperReader()
        self._pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ProbeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw exchange
    def exchange(self, apdu: bytes) -> bytes:
        self.sock.sendall(wrapper.encode(self.client, 1, apdu))
        while not self._pending:
            try:
                data = self.sock.recv(65536)
            except TimeoutError as exc:
                raise NoResponse("probe: timeout") from exc
            if not data:
                raise MalformedResponse("probe: connection closed")
            self._pending.extend(p.apdu for p in self._reader.feed(data))
        return self._pending.pop(0)

    def protect(self, plain: bytes) -> bytes:
        assert self.keys is not None
        out = S.wrap(plain, S.SC_AUTH_ENC, self.title, self.ic, self.keys)
        self.ic += 1
        return out

    def unprotect(self, apdu: bytes) -> bytes:
        if self.keys is None or apdu[0] not in S.PLAIN_TAGS:
            return apdu
        return S.unwrap(S.parse(apdu), self.server_title, self.keys)

    def request(self, plain: bytes) -> bytes:
        if self.keys is None:
            return self.exchange(plain)
        return self.unprotect(self.exchange(self.protect(plain)))

    def _next_invoke(self) -> int:
        self.invoke = (self.invoke + 1) & 0x0F
        return 0xC0 | self.invoke

    # -- association
    def associate(self) -> A.Aare:
        if self.keys is None:
            aarq = A.Aarq(user_information=A.build_initiate_request(CLIENT_CONFORMANCE))
            aare = A.parse_aare(self.exchange(A.build_aarq(aarq)))
            if aare.result:
                raise AssociationRefused(aare.diagnostic, aare.result)
            return aare
        ctos = os.urandom(16)
        aarq = A.Aarq(
            context=A.CONTEXT_LN_CIPHERED, calling_title=self.title,
            mechanism=A.MECH_HLS_GMAC, calling_auth_value=ctos,
            user_information=self.protect(A.build_initiate_request(CLIENT_CONFORMANCE)),
        )
        aare = A.parse_aare(self.exchange(A.build_aarq(aarq)))
        if aare.result:
            raise AssociationRefused(aare.diagnostic, aare.result)
        assert aare.responding_title and aare.responding_auth_value
        self.server_title = aare.responding_title
        f_stoc = S.gmac_hls(self.title, self.ic, self.keys, aare.responding_auth_value)
        self.ic += 1
        resp = self.request(
            A.build_action_request(self._next_invoke(), ASSOCIATION_LN, axdr.octets(f_stoc))
        )
        if resp[0] != A.ACTION_RESPONSE or resp[3] != 0:
            raise AssociationRefused(13, 1, "HLS pass 3 refused")
        f_ctos, _ = axdr.decode(resp, 6)
        S.verify_hls(self.server_title, self.keys, ctos, f_ctos.value)
        return aare

    def get(self, ref: A.AttributeRef) -> A.GetResult:
        return A.parse_get_response(self.request(A.build_get_request(self._next_invoke(), ref)))[0]
