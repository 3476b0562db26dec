"""DLMS/COSEM protocol pieces shared by the edge agent and the simulator.

Everything here except :mod:`shared.dlms.transport` and :mod:`shared.dlms.client` is pure:
bytes in, objects out, no I/O.
"""
