"""Run-config classes generated from the library's settings dataclasses (one definition of every setting)."""

import dagster as dg
from pydantic import Field, create_model

from ..settings import typed_fields


def config_class(settings: type, name: str, *, doc: str, base: type[dg.Config] = dg.Config,
                 change: bool = False) -> type[dg.Config]:
    """A ``dg.Config`` with one field per field of the dataclass ``settings`` (its type, default and ``help``
    metadata). ``change``: every field optional with None (a sweep row: None keeps the main setting)."""
    fields = {f.name: (f.type | None, Field(None, description=f.help or None)) if change
              else (f.type, Field(f.default, description=f.help or None))
              for f in typed_fields(settings)}
    return create_model(name, __base__=base, __doc__=doc, __module__=__name__, **fields)
