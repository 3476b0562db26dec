"""SOAP/CIM gateway for the Legacy commercial system (steps 1, 2 and 9 of the brief).

IEC 61968-9 ``EndDeviceControls`` in an IEC 61968-100 envelope come in over SOAP 1.1,
are checked (hostile XML, schema, authentication), mapped to neutral requests and
handed to the coordinator's service functions through :mod:`central.soap.service_port`.
Results go back to Legacy as ``created EndDeviceEvents`` from a durable outbox
(:mod:`central.soap.notifier`).
"""

from __future__ import annotations

SCHEMA_VERSION = "ami-rcd-1"
