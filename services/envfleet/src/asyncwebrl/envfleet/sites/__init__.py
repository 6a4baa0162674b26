"""webgym-lite: small multi-step websites with server-side success checks.

Every module of this package that defines ``SITE`` (a ``Site`` subclass) is a site.
"""

from __future__ import annotations

import importlib
import pkgutil


def all_sites():
    """Every built-in site, ordered by module name."""
    sites = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        site_class = getattr(module, "SITE", None)
        if site_class is not None:
            sites.append(site_class())
    return sites
