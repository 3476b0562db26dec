"""The operations dashboard served by the coordinator at ``/dashboard``.

``router`` serves one HTML page and its static JavaScript and CSS (no build step,
no CDN); the page reads the coordinator's REST API with a viewer token. See
``docs/dashboard.md``.
"""

from central.dashboard.routes import router

__all__ = ["router"]
