"""Wire-level tests with hex vectors: HDLC, wrapper, A-XDR, ACSE, xDLMS, ciphering."""

from __future__ import annotations

import pytest
from gurux_dlms.enums import Authentication, DataType, InterfaceType
from gurux_dlms.objects import GXDLMSDisconnectControl
from gurux_dlms.secure import GXDLMSSecureClient

from shared.dlms import apdu as A
from shared.dlms import axdr, hdlc, wrapper
from shared.dlms import security as S
from shared.dlms.errors import MalformedResponse

H = bytes.fromhex
KEYS = S.Keys(H("000102030405060708090A0B0C0D0E0F"), H("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"))

# ------------------------------------------------------------------ HDLC


def test_crc16_x25_check_value() -> None:
    assert hdlc.crc16(b"123456789") == 0x906E


def test_snrm_frame_vector_matches_gurux() -> None:
    # client 16 -> server logical 1 / physical 17, as gurux 1.0.203 builds it
    vector = H("7ea00802232193bd647e")
    f = hdlc.decode_frame(vector)
    assert f.control == hdlc.SNRM and not f.info
    assert hdlc.decode_address(f.dst) == (1, 17)
    assert hdlc.decode_address(f.src) == (16, None)
    assert hdlc.encode_frame(hdlc.Frame(hdlc.server_address(1, 17), b"\x21", 0x93)) == vector


def test_i_frame_with_hcs_and_fcs() -> None:
    # gurux's AARQ I-frame for the public client (HCS af9f, FCS 9123)
    vector = H(
        "7ea02c02232110af9fe6e600601da109060760857405080101be10040e01000000065f1f0400401e5dffff91237e"
    )
    f = hdlc.decode_frame(vector)
    assert f.is_i_frame and f.send_seq == 0 and f.recv_seq == 0
    assert f.info[:3] == hdlc.LLC_REQUEST
    aarq = A.parse_aarq(f.info[3:])
    assert aarq.context == A.CONTEXT_LN and aarq.mechanism is None
    assert hdlc.encode_frame(f) == vector


def test_ua_frame_vector() -> None:
    ua = hdlc.encode_frame(
        hdlc.Frame(b"\x21", hdlc.server_address(1, 17), hdlc.UA, hdlc.ua_info(128, 128))
    )
    assert ua.hex() == (
        "7ea021210223738f728180140502008006020080070400000001080400000001ce6a7e"
    )
    # gurux's client accepts it as the answer to its SNRM
    client = GXDLMSSecureClient(True, 16, GXDLMSSecureClient.getServerAddress(1, 17))
    client.snrmRequest()
    client.parseUAResponse(hdlc.decode_frame(ua).info)
    assert client.hdlcSettings.maxInfoRX == 128
    assert hdlc.parse_snrm_info(hdlc.decode_frame(ua).info) == {5: 128, 6: 128, 7: 1, 8: 1}


def test_four_byte_server_address() -> None:
    assert hdlc.server_address(1, 300).hex() == "00020459"
    assert hdlc.decode_address(H("00020459")) == (1, 300)


@pytest.mark.parametrize("flip", [3, 8, -3])
def test_corrupted_frame_is_malformed(flip: int) -> None:
    raw = bytearray(H("7ea02c02232110af9fe6e600601da109060760857405080101be10040e01000000065f1f0400401e5dffff91237e"))
    raw[flip] ^= 0x01
    with pytest.raises(MalformedResponse):
        hdlc.decode_frame(bytes(raw))


def test_segmentation_roundtrip_through_stream_reader() -> None:
    info = hdlc.LLC_RESPONSE + bytes(range(256)) + bytes(44)
    chunks = hdlc.segment(info, 128)
    assert [len(c) for c in chunks] == [128, 128, 47]
    frames = [
        hdlc.encode_frame(hdlc.Frame(b"\x21", b"\x03", hdlc.i_control(i, 1), c, i < 2))
        for i, c in enumerate(chunks)
    ]
    assert frames[0][1] == 0xA8 and frames[1][1] == 0xA8 and frames[2][1] == 0xA0
    stream = b"\x00\x13" + b"".join(frames)  # junk before the first flag
    reader = hdlc.FrameReader()
    got: list[hdlc.Frame | MalformedResponse] = []
    for i in range(0, len(stream), 7):
        got += reader.feed(stream[i : i + 7])
    assert isinstance(got[0], MalformedResponse)
    decoded = [g for g in got if isinstance(g, hdlc.Frame)]
    assert [f.segmented for f in decoded] == [True, True, False]
    assert b"".join(f.info for f in decoded) == info


def test_rr_control() -> None:
    assert hdlc.rr_control(3) == 0x71
    assert hdlc.i_control(2, 5) == 0xB4


# ------------------------------------------------------------------ wrapper


def test_wrapper_header_vector() -> None:
    pdu = wrapper.encode(16, 1, H("c001c1004600006003 0aff0300".replace(" ", "")))
    assert pdu.hex() == "000100100001000d" + "c001c10046000060030aff0300"
    reader = wrapper.WrapperReader()
    assert reader.feed(pdu[:5]) == []
    out = reader.feed(pdu[5:] + pdu)
    assert [(p.source, p.destination) for p in out] == [(16, 1), (16, 1)]
    with pytest.raises(MalformedResponse):
        wrapper.WrapperReader().feed(H("0002001000010000"))


# ------------------------------------------------------------------ A-XDR


@pytest.mark.parametrize(
    ("data", "hexstr"),
    [
        (axdr.boolean(True), "03ff"),
        (axdr.enum(2), "1602"),
        (axdr.uint32(1234), "06000004d2"),
        (axdr.structure(axdr.int8(1), axdr.enum(30)), "0202 0f01 161e"),
        (axdr.octets(bytes(range(3))), "0903000102"),
        (axdr.octets(bytes(200)), "0981c8" + "00" * 200),
        (axdr.array([axdr.uint16(1), axdr.uint16(2)]), "0102 120001 120002"),
        (axdr.null(), "00"),
    ],
)
def test_axdr_vectors(data: axdr.Data, hexstr: str) -> None:
    raw = H(hexstr.replace(" ", ""))
    assert axdr.encode(data) == raw
    assert axdr.decode(raw) == (data, len(raw))


def test_axdr_truncated() -> None:
    with pytest.raises(MalformedResponse):
        axdr.decode(H("0904aabb"))


# ------------------------------------------------------------------ ACSE


GURUX_AARQ = H(
    "605da109060760857405080103a60a04085243444147454e548a0207808b0760857405080205"
    "ac1280107890782bf7fc9e5d9b3233b0b059cf01be230421211f3000000005e685f27e36796b"
    "a8ce5043921299ff0beca95b82184fac5a0fe7"
)


def test_aarq_hls_gmac_ciphered_vector() -> None:
    aarq = A.parse_aarq(GURUX_AARQ)
    assert aarq.ciphered and aarq.mechanism == A.MECH_HLS_GMAC
    assert aarq.calling_title == b"RCDAGENT"
    assert aarq.calling_auth_value == H("7890782bf7fc9e5d9b3233b0b059cf01")
    assert A.build_aarq(aarq) == GURUX_AARQ
    assert aarq.user_information is not None
    c = S.parse(aarq.user_information)
    assert (c.tag, c.sc, c.ic) == (0x21, 0x30, 5)
    plain = S.unwrap(c, b"RCDAGENT", KEYS)
    assert plain == H("01000000065f1f0400401e5dffff")
    init = A.parse_initiate_request(plain)
    assert (init.dlms_version, init.conformance, init.max_pdu) == (6, 0x401E5D, 0xFFFF)


def test_aare_vectors() -> None:
    accepted = A.build_aare(
        A.Aare(user_information=A.build_initiate_response(0x001E1D, 1024))
    )
    assert accepted.hex() == (
        "6129a109060760857405080101a203020100a305a103020100"
        "be10040e0800065f1f0400001e1d04000007"
    )
    rejected = A.build_aare(A.Aare(result=1, diagnostic=13, context=A.CONTEXT_LN_CIPHERED))
    assert rejected.hex() == "6117a109060760857405080103a203020101a305a10302010d"
    back = A.parse_aare(rejected)
    assert (back.result, back.diagnostic) == (1, 13)


def test_release_vectors() -> None:
    assert A.build_rlrq().hex() == "6203800100"
    assert A.build_rlre().hex() == "6303800100"


# ------------------------------------------------------------------ xDLMS


def test_get_request_and_responses() -> None:
    ref = A.AttributeRef(70, bytes((0, 0, 96, 3, 10, 255)), 3)
    req = A.build_get_request(0xC1, ref)
    assert req.hex() == "c001c10046000060030aff0300"
    parsed = A.parse_request(req)
    assert parsed.refs == [ref] and parsed.invoke_id == 0xC1
    assert A.build_get_response(0xC1, axdr.enum(1)).hex() == "c401c1001601"
    assert A.build_get_response(0xC1, A.DAR_OBJECT_UNDEFINED).hex() == "c401c10104"
    lst = A.build_get_request_with_list(0xC2, [ref, A.AttributeRef(3, bytes((1, 0, 1, 8, 0, 255)), 2)])
    assert lst.hex() == "c003c202" + "0046000060030aff0300" + "00030100010800ff0200"
    resp = A.build_get_response_with_list(0xC2, [axdr.enum(2), A.DAR_READ_WRITE_DENIED])
    assert resp.hex() == "c403c20200160201 03".replace(" ", "")
    assert A.parse_get_response(resp) == [axdr.enum(2), 3]


def test_action_request_matches_gurux_and_response() -> None:
    client = GXDLMSSecureClient(True, 16, 1, Authentication.NONE, None, InterfaceType.WRAPPER)
    gurux = bytes(client.method(GXDLMSDisconnectControl("0.0.96.3.10.255"), 1, 0, DataType.INT8)[0])
    ref = A.AttributeRef(70, bytes((0, 0, 96, 3, 10, 255)), 1)
    mine = A.build_action_request(gurux[10], ref, axdr.int8(0))
    assert mine.hex() == "c301" + f"{gurux[10]:02x}" + "0046000060030aff01010f00"
    assert gurux[8:] == mine
    assert A.build_action_response(0xC1, A.AR_SUCCESS).hex() == "c701c10000"
    assert A.build_action_response(0xC1, A.AR_HARDWARE_FAULT).hex() == "c701c10100"
    assert A.build_exception_response(1, 6).hex() == "d80106"


# ------------------------------------------------------------------ ciphering


def test_glo_get_request_green_book_vector() -> None:
    plain = H("C0010000080000010000FF0200")
    title = H("4D4D4D0000BC614E")
    ciphered = S.wrap(plain, S.SC_AUTH_ENC, title, 0x01234567, KEYS)
    assert ciphered == H(
        "C81E3001234567411312FF935A47566827C467BC7D825C3BE4A77C3FCC056B6B"
    )
    assert S.unwrap(S.parse(ciphered), title, KEYS) == plain
    general = S.wrap(plain, S.SC_AUTH_ENC, title, 0x01234567, KEYS, general=True)
    assert general[:11] == H("DB084D4D4D0000BC614E1E")
    assert S.unwrap(S.parse(general), b"\x00" * 8, KEYS) == plain


def test_tampered_ciphertext_fails_authentication() -> None:
    c = bytearray(H("C81E3001234567411312FF935A47566827C467BC7D825C3BE4A77C3FCC056B6B"))
    c[10] ^= 1
    with pytest.raises(S.AuthenticationFailed):
        S.unwrap(S.parse(bytes(c)), H("4D4D4D0000BC614E"), KEYS)
    wrong = S.Keys(bytes(16), KEYS.auth_key)
    with pytest.raises(S.AuthenticationFailed):
        S.unwrap(S.parse(bytes(c)), H("4D4D4D0000BC614E"), wrong)


def test_hls_gmac_green_book_vector_and_gurux_agree() -> None:
    title = H("4D4D4D0000000001")
    f = S.gmac_hls(title, 1, KEYS, b"P6wRJ21F")
    assert f == H("10000000011A52FE7DD3E72748973C1E28")
    assert S.verify_hls(title, KEYS, b"P6wRJ21F", f) == 1
    from gurux_dlms.GXSecure import GXSecure

    c = GXDLMSSecureClient(True, 1, 1, Authentication.HIGH_GMAC)
    c.ciphering.blockCipherKey = KEYS.block_key
    c.ciphering.authenticationKey = KEYS.auth_key
    assert bytes(GXSecure.secure(c.settings, c.ciphering, 7, b"challenge-1234567", title)) == (
        S.gmac_hls(title, 7, KEYS, b"challenge-1234567")
    )
