"""A real registry-protocol HTTP server on loopback, and a Hugging Face-style file server.

`RegistryPeer` speaks the parts of the Docker registry v2 protocol that Ollama uses: manifests by
tag, blobs by digest (with HTTP Range), uploads (POST, PATCH chunks, PUT ?digest=) and manifest
PUTs. Switches make it misbehave the ways real registries and CDNs do: 307 redirects of blobs to a
second host, bearer-token challenges, a connection dropped part-way through a blob, wrong bytes
for a digest, 404s. `HFPeer` serves `/api/models/<repo>/revision/<rev>` and
`/<repo>/resolve/<rev>/<file>` like huggingface.co. Both are plain h11 on trio, so a test controls
every byte, and both record what they served for tests to assert on.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    cut_after: int | None = None  # drop the connection after this many body bytes
    head_only: bool = False
    gate: trio.Event | None = None  # wait for this before sending the body


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class H11Peer:
    """A tiny HTTP/1.1 server: subclasses answer `route(Request) -> Reply`."""

    public_host: str = "127.0.0.1"
    bind_host: str = "127.0.0.1"  # another loopback address (127.0.0.2) plays another machine

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.port = 0
        self.requests: list[Request] = []

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    @property
    def base_url(self) -> str:
        """The URL clients use (the public name; the proxy maps it to this port)."""
        return f"{self.scheme}://{self.public_host}"

    @property
    def direct_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.bind_host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def route(self, request: Request) -> Reply:
        raise NotImplementedError

    async def _handle(self, raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = raw
        try:
            if self.ssl_context is not None:
                stream = trio.SSLStream(raw, self.ssl_context, server_side=True)
                await stream.do_handshake()
            await self._serve_connection(stream)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            h11.ProtocolError,
            ssl.SSLError,
        ):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _next_event(self, conn: h11.Connection, stream: trio.abc.Stream) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            return event

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = await self._next_event(conn, stream)
            if not isinstance(event, h11.Request):
                return
            body = b""
            while True:
                part = await self._next_event(conn, stream)
                if isinstance(part, h11.Data):
                    body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            url = urlsplit(event.target.decode())
            request = Request(
                method=event.method.decode(),
                path=url.path,
                query=parse_qs(url.query),
                headers={k.decode().lower(): v.decode() for k, v in event.headers},
                body=body,
            )
            self.requests.append(request)
            reply = self.route(request)
            headers = list(reply.headers)
            if not any(k.lower() == "content-length" for k, _ in headers):
                headers.append(("Content-Length", str(len(reply.body))))
            await stream.send_all(
                conn.send(h11.Response(status_code=reply.status, headers=headers))
            )
            if request.method != "HEAD" and not reply.head_only:
                if reply.gate is not None:
                    await reply.gate.wait()
                body_out = reply.body
                if reply.cut_after is not None:
                    await stream.send_all(conn.send(h11.Data(data=body_out[: reply.cut_after])))
                    return  # the caller's finally closes the socket mid-body
                if body_out:
                    await stream.send_all(conn.send(h11.Data(data=body_out)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


def serve_bytes(
    request: Request,
    data: bytes,
    served: list[tuple[int, int]],
    *,
    cut: int | None = None,
    headers: list[tuple[str, str]] | None = None,
    ignore_range: bool = False,
) -> Reply:
    """200 or 206 for `data` honouring `Range: bytes=a-b`; records the byte range sent."""
    headers = list(headers or [])
    headers.append(("Accept-Ranges", "bytes"))
    start, end = 0, len(data)
    status = 200
    m = (
        None
        if ignore_range
        else re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
    )
    if m:
        start = int(m.group(1))
        end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
        if start >= len(data):
            return Reply(416, [("Content-Range", f"bytes */{len(data)}")])
        status = 206
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(data)}"))
    body = data[start:end]
    headers.append(("Content-Length", str(len(body))))
    if request.method == "HEAD":
        return Reply(status, headers, b"", head_only=True)
    sent = len(body) if cut is None else min(cut, len(body))
    served.append((start, start + sent))
    return Reply(status, headers, body, cut_after=cut)


class RegistryPeer(H11Peer):
    """Docker registry v2 protocol, with switches for the failures pulls must survive."""

    def __init__(
        self,
        public_host: str = "registry.test",
        *,
        ssl_context: ssl.SSLContext | None = None,
        blobs: dict[str, bytes] | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.public_host = public_host
        self.blobs: dict[str, bytes] = {} if blobs is None else blobs
        self.manifests: dict[tuple[str, str], bytes] = {}
        # switches
        self.redirect_blobs_to: H11Peer | None = None
        self.redirect_blobs_url: str | None = None  # a 307 to this exact URL (an internal one)
        self.realm_url: str | None = None  # the token realm to announce instead of our /token
        self.token: str | None = None  # when set, /v2/ needs `Authorization: Bearer <token>`
        self.drop_blob_after: dict[str, int] = {}  # digest -> bytes sent before the cut (once)
        self.wrong_bytes: set[str] = set()  # digests served with other content
        self.ignore_range = False  # answer every blob GET with 200 and all bytes
        self.blob_gate: trio.Event | None = None  # blob bodies wait for this event
        # records
        self.served: dict[str, list[tuple[int, int]]] = {}
        self.token_requests: list[dict[str, list[str]]] = []
        self.uploads: dict[str, bytearray] = {}

    # -- test set-up helpers ----------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_model(
        self,
        repo: str,
        tag: str,
        model_bytes: bytes,
        *,
        extra_layers: tuple[tuple[str, bytes], ...] = (),
    ) -> bytes:
        """Publish a model (config + GGUF layer + extra layers); returns the manifest bytes."""
        config = json.dumps(
            {
                "model_format": "gguf",
                "model_family": "llama",
                "architecture": "amd64",
                "os": "linux",
            }
        ).encode()
        layers = [("application/vnd.ollama.image.model", model_bytes), *extra_layers]
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": self.add_blob(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": mt, "digest": self.add_blob(data), "size": len(data)}
                for mt, data in layers
            ],
        }
        raw = json.dumps(manifest).encode()
        self.manifests[(repo, tag)] = raw
        return raw

    def bytes_served(self, digest: str) -> int:
        return sum(end - start for start, end in self.served.get(digest, []))

    # -- protocol ---------------------------------------------------------------------------

    def _challenge(self, request: Request, repo: str | None) -> Reply | None:
        """401 unless the request carries a token issued for this repository and action."""
        if self.token is None or request.path == "/token":
            return None
        action = "pull" if request.method in ("GET", "HEAD") else "push,pull"
        auth = request.headers.get("authorization", "")
        if auth in (
            f"Bearer {self.token}|repository:{repo}:{action}",
            f"Bearer {self.token}|repository:{repo}:push,pull",
        ):
            return None
        if repo is None and auth.startswith(f"Bearer {self.token}|"):
            return None
        scope = f',scope="repository:{repo}:{action}"' if repo else ""
        realm = self.realm_url or f"{self.base_url}/token"
        value = f'Bearer realm="{realm}",service="{self.public_host}"{scope}'
        body = json.dumps(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        )
        return Reply(
            401, [("WWW-Authenticate", value), ("Content-Type", "application/json")], body.encode()
        )

    def route(self, request: Request) -> Reply:
        if request.path == "/token":
            self.token_requests.append(request.query)
            scope = request.query.get("scope", [""])[0]
            return Reply(
                200,
                [("Content-Type", "application/json")],
                json.dumps({"token": f"{self.token}|{scope}", "expires_in": 300}).encode(),
            )
        m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/(.+)", request.path)
        m_upload = re.fullmatch(r"/v2/(.+)/blobs/uploads/(.*)", request.path)
        repo = (m_upload or m).group(1) if (m_upload or m) else None
        challenge = self._challenge(request, repo)
        if challenge is not None:
            return challenge
        if request.path == "/v2/":
            return Reply(200, [("Content-Type", "application/json")], b"{}")
        if m_upload:
            return self._upload(request, m_upload.group(1), m_upload.group(2))
        if m is None:
            return _not_found("NAME_UNKNOWN")
        repo, kind, ref = m.groups()
        if kind == "manifests":
            if request.method == "PUT":
                self.manifests[(repo, ref)] = request.body
                return Reply(201, [("Docker-Content-Digest", sha256(request.body))])
            raw = self.manifests.get((repo, ref))
            if raw is None:
                return _not_found("MANIFEST_UNKNOWN")
            return Reply(
                200,
                [("Content-Type", MANIFEST_MEDIA_TYPE), ("Docker-Content-Digest", sha256(raw))],
                raw,
                head_only=request.method == "HEAD",
            )
        data = self.blobs.get(ref)
        if data is None:
            return _not_found("BLOB_UNKNOWN")
        if self.redirect_blobs_url is not None and request.method == "GET":
            return Reply(307, [("Location", self.redirect_blobs_url)])
        if self.redirect_blobs_to is not None and request.method == "GET":
            return Reply(
                307, [("Location", f"{self.redirect_blobs_to.base_url}{request.path}?sig=x")]
            )
        if ref in self.wrong_bytes:
            data = bytes(b ^ 0xFF for b in data)
        cut = self.drop_blob_after.pop(ref, None) if request.method == "GET" else None
        reply = serve_bytes(
            request, data, self.served.setdefault(ref, []), cut=cut, ignore_range=self.ignore_range
        )
        reply.gate = self.blob_gate
        return reply

    def _upload(self, request: Request, repo: str, session: str) -> Reply:
        if request.method == "POST" and not session:
            session = uuid.uuid4().hex
            self.uploads[session] = bytearray()
            return Reply(
                202,
                [
                    ("Location", f"/v2/{repo}/blobs/uploads/{session}"),
                    ("Docker-Upload-UUID", session),
                ],
            )
        if session not in self.uploads:
            return _not_found("BLOB_UPLOAD_UNKNOWN")
        self.uploads[session] += request.body
        if request.method == "PATCH":
            return Reply(
                202,
                [
                    ("Location", f"/v2/{repo}/blobs/uploads/{session}"),
                    ("Range", f"0-{len(self.uploads[session]) - 1}"),
                ],
            )
        if request.method == "PUT":
            data = bytes(self.uploads.pop(session))
            want = request.query.get("digest", [""])[0]
            if sha256(data) != want:
                return Reply(
                    400,
                    [("Content-Type", "application/json")],
                    json.dumps({"errors": [{"code": "DIGEST_INVALID"}]}).encode(),
                )
            self.blobs[want] = data
            return Reply(
                201, [("Location", f"/v2/{repo}/blobs/{want}"), ("Docker-Content-Digest", want)]
            )
        return Reply(405)


class BlobHost(H11Peer):
    """The CDN a registry redirects blobs to; it refuses requests that still carry credentials."""

    def __init__(
        self,
        registry: RegistryPeer,
        public_host: str = "blobs.test",
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.public_host = public_host
        self.registry = registry
        self.served: dict[str, list[tuple[int, int]]] = {}

    def route(self, request: Request) -> Reply:
        if "authorization" in request.headers:
            return Reply(400, body=b"credentials must not follow a redirect to another host")
        m = re.fullmatch(r"/v2/.+/blobs/(.+)", request.path)
        data = self.registry.blobs.get(m.group(1)) if m else None
        if data is None or request.query.get("sig") != ["x"]:
            return Reply(403)
        return serve_bytes(request, data, self.served.setdefault(m.group(1), []))


class HFPeer(H11Peer):
    """Hugging Face Hub's model-info and resolve endpoints (as HF_ENDPOINT)."""

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, token: str | None = None
    ) -> None:
        super().__init__(ssl_context=ssl_context)
        self.public_host = "hf.test"
        self.repos: dict[str, dict[str, bytes]] = {}
        self.token = token
        self.served: dict[str, list[tuple[int, int]]] = {}
        self.cdn: CDNPeer | None = None  # when set, resolve answers 302 to the CDN, as hf.co does

    def add_file(self, repo: str, filename: str, data: bytes) -> str:
        self.repos.setdefault(repo, {})[filename] = data
        return sha256(data)

    def route(self, request: Request) -> Reply:
        if (
            self.token is not None
            and request.headers.get("authorization") != f"Bearer {self.token}"
        ):
            return Reply(
                401, [("Content-Type", "application/json")], b'{"error":"Invalid credentials"}'
            )
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", request.path)
        if m:
            files = self.repos.get(m.group(1))
            if files is None:
                return Reply(
                    404, [("Content-Type", "application/json")], b'{"error":"Repository not found"}'
                )
            siblings = [
                {
                    "rfilename": name,
                    "size": len(data),
                    **(
                        {"lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
                        if name.endswith(".gguf")
                        else {}
                    ),
                }
                for name, data in files.items()
            ]
            body = {"id": m.group(1), "sha": "0" * 40, "siblings": siblings}
            return Reply(200, [("Content-Type", "application/json")], json.dumps(body).encode())
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", request.path)
        if m:
            data = self.repos.get(m.group(1), {}).get(m.group(3))
            if data is None:
                return Reply(404, body=b"Entry not found")
            if self.cdn is not None:
                sha = hashlib.sha256(data).hexdigest()
                self.cdn.files[f"/repos/{sha}"] = data
                return Reply(302, [("Location", f"{self.cdn.base_url}/repos/{sha}?X-Amz=sig")])
            return serve_bytes(
                request,
                data,
                self.served.setdefault(m.group(3), []),
                headers=[("ETag", f'"{hashlib.sha256(data).hexdigest()}"')],
            )
        return Reply(404, body=b"not found")


class CDNPeer(H11Peer):
    """A file CDN behind a redirect; it refuses requests that still carry credentials."""

    def __init__(self, public_host: str = "cdn.test") -> None:
        super().__init__()
        self.public_host = public_host
        self.files: dict[str, bytes] = {}
        self.served: dict[str, list[tuple[int, int]]] = {}

    def route(self, request: Request) -> Reply:
        if "authorization" in request.headers:
            return Reply(400, body=b"credentials must not follow a redirect to another host")
        data = self.files.get(request.path)
        if data is None:
            return Reply(404)
        return serve_bytes(request, data, self.served.setdefault(request.path, []))


class InternalService(H11Peer):
    """An internal-only HTTP service (a metadata endpoint, an admin port) a registry may aim a
    pull at: it answers every request 403 with a secret in the body, and counts the requests."""

    SECRET = b"internal-only: AWS_SECRET=abc123"

    def __init__(self, bind_host: str = "127.0.0.1") -> None:
        super().__init__()
        self.bind_host = bind_host

    @property
    def direct_url(self) -> str:
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        return f"http://{host}:{self.port}"

    def route(self, request: Request) -> Reply:
        return Reply(403, [("Content-Type", "text/plain")], self.SECRET)


def _not_found(code: str) -> Reply:
    body = json.dumps({"errors": [{"code": code, "message": "not found"}]}).encode()
    return Reply(404, [("Content-Type", "application/json")], body)


@asynccontextmanager
async def serving(*peers: H11Peer) -> AsyncIterator[None]:
    """Run the peers for the body of the `async with`."""
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await nursery.start(peer.serve)
        yield
        nursery.cancel_scope.cancel()


def server_tls(ca: Any, *names: str) -> ssl.SSLContext:
    """A server-side TLS context with a certificate from the trustme `ca` for `names`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context
