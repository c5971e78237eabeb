"""A lost worker's progressive deploy, returned to the stable version by the janitor.

While a canary moves traffic, ``Progressive.mark`` keeps a marker in Redis (``Store.set_rollout_marker``):
the edge, every host, the stable servers and the candidate, and the edge config's check settings.
When the janitor finds the build's lease expired (orchestrator/build/worker.py), it calls
``reset_lost`` before releasing the build's locks: on every host, over SSH with the deploy key, the
stable servers get full weight (``ready``), the candidate weight 0, and the edge config is saved, so
an edge restart does not bring the split back. The candidate container stays (it gets no traffic);
the next deploy removes it with the other leftovers (orchestrator/deploy/swap.py ``prepare_edge``).
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.deploy import haproxy
from orchestrator.deploy.edgectl import EdgeControl
from orchestrator.deploy.policy import lock_name
from orchestrator.errors import OrchestratorError

_HOST = re.compile(r"^(?P<user>[^@]+)@(?P<host>.+):(?P<port>\d+)$")


def stable_commands(stable: list[str], candidate: str) -> list[str]:
    """The runtime API commands that give ``stable`` all new requests and ``candidate`` (if any) none."""
    return (
        [haproxy.set_state(s, "ready") for s in stable]
        + [haproxy.set_weight(s, haproxy.FULL_WEIGHT) for s in stable]
        + ([haproxy.set_weight(candidate, 0)] if candidate else [])
    )


def marker_config(marker: dict[str, Any]) -> haproxy.EdgeConfig:
    c = marker.get("check") or {}
    check = haproxy.Check(
        c.get("path", "/ready"),
        c.get("status", 200),
        c.get("interval_ms", 1000),
        c.get("rise", 3),
        c.get("fall", 3),
    )
    return haproxy.EdgeConfig(marker["app"], marker["environment"], check)


def reset_lost(settings: Any, store: Any, build_id: int) -> list[str]:
    """Return every host of ``build_id``'s canary to the stable servers; what was done, per host."""
    from orchestrator.deploy.ssh import key_from_settings

    done: list[str] = []
    for marker in store.rollout_markers():
        if marker.get("build_id") != build_id:
            continue
        holder = store.lock_owner(lock_name(marker["repo"], marker["environment"]))
        if holder not in (None, str(build_id)):
            # Another deploy took the environment since: it cleans up what it finds itself.
            done.append(f"not reset: build id {holder} deploys to {marker['environment']} now")
            store.clear_rollout_marker(marker["repo"], marker["environment"])
            continue
        key = key_from_settings(settings, settings.deploy_key_name(marker["repo"]))
        done += _reset_hosts(settings, key, marker)
        store.clear_rollout_marker(marker["repo"], marker["environment"])
    return done


def _reset_hosts(settings: Any, key: Any, marker: dict[str, Any]) -> list[str]:
    done = []
    for spec, servers in marker["hosts"].items():
        m = _HOST.match(spec)
        if not m:
            continue
        try:
            done.append(_reset_host(settings, key, marker, spec, servers, m))
        except (OrchestratorError, OSError) as exc:
            done.append(f"{spec}: could not reset: {exc}")
    return done


def _reset_host(
    settings: Any, key: Any, marker: dict[str, Any], spec: str, servers: dict[str, Any], m: re.Match[str]
) -> str:
    from orchestrator.deploy.ssh import RemoteHost, Target

    with RemoteHost(Target(m["host"], int(m["port"]), m["user"]), key, settings.known_hosts) as host:

        def run(argv: list[str], stdin: bytes | None) -> Any:
            return host.run(argv, stdin=stdin, capture=True, timeout=30)

        edge = EdgeControl(run, marker["edge"], marker_config(marker), spec)
        live = edge.stats()
        stable = [s for s in servers["stable"] if s in live]
        cand = servers["candidate"]
        if not stable or cand not in live:
            return f"{spec}: nothing to reset (servers: {', '.join(live) or 'none'})"
        edge.api(stable_commands(stable, cand))
        edge.save()
        return f"{spec}: {', '.join(stable)} serve again, {cand} gets nothing"
