"""The deployment's only public endpoint: Flower's Fleet API, and nothing else of the SuperLink.

Flower 1.42's SuperLink serves the Fleet, Control and Runtime APIs on one HTTP port, and the open-source
Control API authenticates nobody: whoever reaches the port can register a SuperNode key
(``flwr supernode register``) or start an app (``flwr run``), TLS or not. ``flower-server`` therefore
runs the SuperLink on loopback and puts this proxy on the public address. It terminates TLS with the
server's certificate, forwards ``POST /v1/fleet/*`` (what SuperNodes call) and ``/health`` to the SuperLink
over TLS on 127.0.0.1, and answers everything else 403, logging who asked. SuperNode authentication is
untouched: its signed headers pass through and the SuperLink checks them.

Run by the launcher as ``python -m server.fleet_proxy``; see :func:`main` for the flags.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("uaap.fleet-proxy")

FLEET_PREFIX = "/v1/fleet/"
MAX_BODY = 1 << 30  # one Flower request; the largest is a model pushed as one object
HOP_BY_HOP = frozenset(
    {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
REFUSAL = (
    "only Flower's Fleet API is served on this address; the SuperLink's Control API listens on the server's "
    "loopback interface, for the federation's operator"
)


def make_app(upstream: str, verify: ssl.SSLContext | bool) -> Starlette:
    """The proxy as an ASGI app: Fleet routes to ``upstream`` (``https://127.0.0.1:PORT``), the rest refused."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=upstream, verify=verify, timeout=httpx.Timeout(600.0, connect=10.0))

    async def forward(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
        try:
            answer = await client.request(
                request.method, request.url.path, params=request.query_params, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            log.error("SuperLink unreachable for %s: %s", request.url.path, exc)
            return JSONResponse({"detail": "the SuperLink behind this proxy is not answering"}, status_code=502)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    async def refuse(request: Request) -> Response:
        peer = request.client.host if request.client else "?"
        log.warning("refused %s %s from %s: not a Fleet API call", request.method, request.url.path[:200], peer)
        return JSONResponse({"detail": REFUSAL}, status_code=403)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(
        routes=[
            Route(FLEET_PREFIX + "{rest:path}", forward, methods=["POST"]),
            Route("/health", forward, methods=["GET", "HEAD"]),
            Route("/{rest:path}", refuse, methods=methods),
        ],
        lifespan=lifespan,
    )


def upstream_tls(cafile: str | None) -> ssl.SSLContext | bool:
    """How the proxy checks the SuperLink's certificate (the federation's CA), or False without TLS."""
    return ssl.create_default_context(cafile=cafile) if cafile else False


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``python -m server.fleet_proxy``."""
    p = argparse.ArgumentParser(prog="python -m server.fleet_proxy", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="0.0.0.0", help="public address to listen on")
    p.add_argument("--port", type=int, required=True, help="public port (SuperNodes connect here)")
    p.add_argument("--upstream-port", type=int, required=True, help="the SuperLink's port on 127.0.0.1")
    p.add_argument("--ssl-certfile", help="the server certificate (TLS on both sides when given)")
    p.add_argument("--ssl-keyfile", help="the server certificate's private key")
    p.add_argument("--ssl-ca-certfile", help="the federation's CA, to verify the SuperLink")
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped (SIGTERM or Ctrl-C)."""
    import uvicorn

    args = build_parser().parse_args(argv)
    tls = bool(args.ssl_certfile)
    if tls and not (args.ssl_keyfile and args.ssl_ca_certfile):
        print("fleet proxy: TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fleet-proxy %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded call is noise
    scheme = "https" if tls else "http"
    app = make_app(f"{scheme}://127.0.0.1:{args.upstream_port}", upstream_tls(args.ssl_ca_certfile if tls else None))
    options: dict[str, Any] = {"host": args.host, "port": args.port, "log_level": "warning"}
    if tls:
        options |= {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    log.info("serving the Fleet API on %s://%s:%d -> 127.0.0.1:%d", scheme, args.host, args.port, args.upstream_port)
    uvicorn.run(app, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
