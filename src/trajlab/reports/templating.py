"""The Jinja2 environment the HTML report is rendered in, and the one check that guards its images.

Every value a template prints is autoescaped (``autoescape=True`` whatever the template's name), and a
name a template uses but the context lacks is an error (``StrictUndefined``) rather than an empty string,
so a renamed field cannot silently blank out part of the page. The templates are read from the
package's ``templates/`` folder (shipped as package data), so an installed wheel renders the same page
as a source checkout.
"""

from __future__ import annotations

import re

import jinja2

_PNG_DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/]*={0,2}")


def png_data_uri(uri: object) -> str:
    """``uri`` unchanged if it is a base64 PNG data URI (the only image source the page's
    Content-Security-Policy allows), else ValueError.

    Used as the ``png_data_uri`` filter on every ``<img src>``: the check is on the whole string, so
    nothing but base64 can follow the prefix (no quote to close the attribute, no ``javascript:``).
    """
    if not isinstance(uri, str) or not _PNG_DATA_URI.fullmatch(uri):
        shown = repr(uri)[:60]
        raise ValueError(f"refusing image source {shown}: not a data:image/png;base64 URI")
    return uri


def template_environment() -> jinja2.Environment:
    """A fresh environment over the package's templates (one per report: no state shared between pages).

    ``trim_blocks``/``lstrip_blocks`` keep ``{% ... %}`` lines of the templates out of the page.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("trajlab.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["png_data_uri"] = png_data_uri
    return env
