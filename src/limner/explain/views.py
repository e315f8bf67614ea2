"""Imports every view module so that each registers itself in ``limner.explain.VIEWS``."""

from limner.explain import timeline  # noqa: F401
from limner.explain import step  # noqa: F401
from limner.explain import attention  # noqa: F401
from limner.explain import dynamics  # noqa: F401
from limner.explain import filmstrip  # noqa: F401
from limner.explain import features  # noqa: F401
