"""The gateway's pre-standard request shapes, accepted only with
``RCD_SOAP_COMPAT_LEGACY_SHAPES=true``: rewritten here into the standard ones
before validation, so the rest of the gateway sees standard messages only.

Old shapes handled:
- ``EndDeviceControl`` with ``priority``, ``scheduledInterval`` and ``status``
  children, and with ``EndDeviceControlType`` left out: priority is kept aside
  (per control), scheduledInterval becomes ``primaryDeviceTiming/interval``, status
  is dropped, a missing EndDeviceControlType becomes an empty one;
- ``GetEndDeviceControls`` in the EndDeviceControlsMessage namespace: moved to the
  GetEndDeviceControlsMessage namespace, its Header/Request re-qualified.
"""

from __future__ import annotations

from lxml import etree

from central.soap.cim import EDC, EDCM, GEDCM, MSG

_AFTER_TIMING = ("secondaryDeviceTiming", "UsagePointGroups", "UsagePoints")


def normalise(message: etree._Element) -> tuple[etree._Element, dict[int, str]]:
    """(standard-shaped message, EndDeviceControl index -> old priority)."""
    qname = etree.QName(message)
    if qname.namespace == EDCM and qname.localname == "GetEndDeviceControls":
        return _old_get(message), {}
    priorities: dict[int, str] = {}
    payload = message.find(f"{{{EDCM}}}Payload")
    if payload is None:
        return message, priorities
    controls = payload.findall(f"{{{EDC}}}EndDeviceControls/{{{EDC}}}EndDeviceControl")
    for index, control in enumerate(controls):
        _old_control(control, index, priorities)
    return message, priorities


def _old_control(control: etree._Element, index: int, priorities: dict[int, str]) -> None:
    priority = control.find(f"{{{EDC}}}priority")
    if priority is not None:
        priorities[index] = (priority.text or "").strip()
        control.remove(priority)
    status = control.find(f"{{{EDC}}}status")
    if status is not None:
        control.remove(status)
    if control.find(f"{{{EDC}}}EndDeviceControlType") is None:
        devices = control.find(f"{{{EDC}}}EndDevices")
        node = etree.Element(f"{{{EDC}}}EndDeviceControlType")
        if devices is not None:
            devices.addprevious(node)
        else:
            control.append(node)
    interval = control.find(f"{{{EDC}}}scheduledInterval")
    if interval is None:
        return
    control.remove(interval)
    timing = etree.Element(f"{{{EDC}}}primaryDeviceTiming")
    interval.tag = f"{{{EDC}}}interval"
    timing.append(interval)
    later = [c for c in control if etree.QName(c).localname in _AFTER_TIMING]
    if later:
        later[0].addprevious(timing)
    else:
        control.append(timing)


def _old_get(message: etree._Element) -> etree._Element:
    """Old: m:GetEndDeviceControls/{m:Header, m:Request/{msg:*, gedc:...}}."""
    new = etree.Element(f"{{{GEDCM}}}GetEndDeviceControls", nsmap={"m": GEDCM})
    for child in list(message):
        local = etree.QName(child).localname
        if local not in ("Header", "Request"):
            continue
        child.tag = f"{{{GEDCM}}}{local}"
        if local == "Request":
            for part in child:
                if etree.QName(part).namespace == MSG:
                    part.tag = f"{{{GEDCM}}}{etree.QName(part).localname}"
        new.append(child)
    if new.find(f"{{{GEDCM}}}Request") is None:
        etree.SubElement(new, f"{{{GEDCM}}}Request")
    return new
