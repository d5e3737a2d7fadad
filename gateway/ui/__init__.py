"""The web dashboard at ``/ui``: static files shipped in the package, no build step."""

from gateway.ui.dashboard import DashboardController

__all__ = ["DashboardController"]
