"""A tiny TCP switch for zero-downtime deploys (stdlib only).

    python3 -m inference.edge serve --listen 0.0.0.0:5000 --state /state/upstream
    python3 -m inference.edge set --state /state/upstream HOST:PORT
    python3 -m inference.edge probe URL [--status 200] [--timeout S]

``serve`` forwards each new connection to the ``host:port`` currently in the state file.
The file is re-read when it changes (mtime, inode or size), so a deploy starts the new
container, probes it, then ``set``s the state: new connections go to the new upstream while
connections already open finish on the old one. No state file (or an empty one) means no
upstream: connections are accepted and closed at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("inference.edge")
CONNECT_TIMEOUT = 5.0
CHUNK = 64 * 1024


def parse_hostport(text: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` too) → (host, port); ValueError if malformed."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text.strip()!r}")
    return host, int(port)


@dataclass
class UpstreamFile:
    """The state file, re-read only when its stat signature changes."""

    path: Path
    _signature: tuple[int, int, int] | None = None
    _upstream: tuple[str, int] | None = None

    def current(self) -> tuple[str, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._upstream is not None:
                log.warning("state file %s is gone: refusing connections", self.path)
            self._signature, self._upstream = None, None
            return None
        signature = (st.st_mtime_ns, st.st_ino, st.st_size)
        if signature != self._signature:
            self._signature = signature
            text = self.path.read_text().strip()
            try:
                upstream = parse_hostport(text) if text else None
            except ValueError as exc:
                log.error("state file %s: %s; refusing connections", self.path, exc)
                upstream = None
            if upstream != self._upstream:
                log.info("upstream is now %s", f"{upstream[0]}:{upstream[1]}" if upstream else "none")
            self._upstream = upstream
        return self._upstream


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on, so request/response protocols finish
    except (ConnectionError, OSError):
        writer.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


async def _handle(
    state: UpstreamFile, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    upstream = state.current()
    if upstream is None:
        await _close(client_w)
        return
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*upstream), CONNECT_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        log.warning("cannot reach upstream %s:%d: %s", *upstream, exc)
        await _close(client_w)
        return
    try:
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
    finally:
        await _close(up_w)
        await _close(client_w)


async def serve(listen: tuple[str, int], state_path: Path) -> None:
    state = UpstreamFile(state_path)
    state.current()
    server = await asyncio.start_server(
        lambda r, w: _handle(state, r, w), listen[0], listen[1], reuse_address=True
    )
    log.info("edge listening on %s:%d, upstream from %s", *listen, state_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    log.info("edge stopping")


def set_upstream(state_path: Path, hostport: str) -> None:
    """Write ``host:port`` atomically: readers see the old value or the new one, never half."""
    host, port = parse_hostport(hostport)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upstream-", dir=state_path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{host}:{port}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, state_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def probe(url: str, status: int = 200, timeout: float = 5.0) -> str | None:
    """GET ``url``; None if it answered ``status``, else the reason."""
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - scheme checked above
            got = r.status
    except urllib.error.HTTPError as e:
        got = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"GET {url} failed: {reason}"
    return None if got == status else f"GET {url} answered {got}, expected {status}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m inference.edge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="forward TCP connections to the upstream in the state file")
    s.add_argument("--listen", default="0.0.0.0:5000")
    s.add_argument("--state", type=Path, required=True)
    st = sub.add_parser("set", help="write HOST:PORT to the state file atomically")
    st.add_argument("--state", type=Path, required=True)
    st.add_argument("upstream")
    pr = sub.add_parser("probe", help="exit 0 if an HTTP GET answers the expected status")
    pr.add_argument("url")
    pr.add_argument("--status", type=int, default=200)
    pr.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s edge %(levelname)s %(message)s")
    try:
        if args.command == "serve":
            asyncio.run(serve(parse_hostport(args.listen), args.state))
        elif args.command == "set":
            set_upstream(args.state, args.upstream)
        else:
            reason = probe(args.url, args.status, args.timeout)
            if reason:
                print(reason, file=sys.stderr)
                return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
