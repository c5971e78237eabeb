"""Container, network and volume label names mlship puts on what it creates (one place for all of them).

The janitor, the deploy step, the test bed and operators (``docker ps --filter label=...``) find
mlship's objects by these labels, so their names are part of the interface: change them only with a
migration.
"""

from __future__ import annotations

BUILD = "mlship.build"  # build id on every container a step starts (the janitor removes them by it)
STEP = "mlship.step"
REPO = "mlship.repo"
ENV = "mlship.env"  # deployment environment of an app or edge container
ROLE = "mlship.role"  # app | edge | model-upload | model-prune
APP = "mlship.app"  # the environment's container.name: groups its app containers and its edge
BUILD_NUMBER = "mlship.build-number"  # the build whose image an app container runs
MANAGED = "mlship.managed"  # networks mlship created ("1")
EDGE_VERSION = "mlship.edge-version"  # on an edge container: the HAProxy edge image tag it runs

ROLE_APP = "app"
ROLE_EDGE = "edge"


def selector(key: str, value: str) -> str:
    """A ``docker ... --filter`` argument: ``label=KEY=VALUE``."""
    return f"label={key}={value}"
