"""Imports every view module so that each registers itself in ``limner.explain.VIEWS`` (in this
order: the order of the CLI's help and the studio's list)."""

from limner.explain import timeline  # noqa: F401  (isort: skip)
from limner.explain import step  # noqa: F401  (isort: skip)
from limner.explain import features  # noqa: F401  (isort: skip)
from limner.explain import filmstrip  # noqa: F401  (isort: skip)
from limner.explain import dynamics  # noqa: F401  (isort: skip)
from limner.explain import attention  # noqa: F401  (isort: skip)
