"""A FastAPI app that signs JWTs with a key keyturn delivers and rotates.

    KEYTURN_BUNDLE=/dev/shm/keyturn-fastapi/api APP_PIDFILE=/var/tmp/keyturn-fastapi/app.pid \
        .venv/bin/uvicorn --app-dir examples/fastapi app:app --port 8000

KEYTURN_BUNDLE     the bundle holding signing.pem and jwks.json (default /run/keyturn/api)
APP_PIDFILE        optional: where keyturn's `signal` notifier finds this process
RELOAD_TOKEN_FILE  optional: POST /-/reload then requires `Authorization: Bearer <its contents>`

Every handler is `async def`, so requests, SIGHUP and reloads all run on the event loop's one
thread: the counters and the key set need no lock.
"""

import asyncio
import base64
import hmac
import json
import logging
import os
import signal
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

BUNDLE = os.environ.get("KEYTURN_BUNDLE", "/run/keyturn/api")
PIDFILE = os.environ.get("APP_PIDFILE")
RELOAD_TOKEN_FILE = os.environ.get("RELOAD_TOKEN_FILE")

log = logging.getLogger("uvicorn.error")  # uvicorn's own logger: our lines appear in its output


@dataclass(frozen=True)
class Keys:
    """One consistent key set, read from one version directory. Never modified once built."""

    signing: Ed25519PrivateKey
    kid: str
    verify: dict[str, Ed25519PublicKey]  # kid -> key, for every key listed in jwks.json
    source: str  # the version directory it was read from


class State:
    keys: Keys | None = None
    reloads = 0
    inconsistent = 0


state = State()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_keys(bundle: str) -> Keys:
    """Reads signing.pem and jwks.json as one set, or raises if they are unreadable or disagree."""
    # keyturn swaps a bundle by renaming `..data` to point at a new version directory. Opening
    # bundle/signing.pem and then bundle/jwks.json follows `..data` twice, and a swap between the
    # two opens would pair the new key with the old JWKS. Resolving `..data` once and reading both
    # files from the directory it names gives one version's files; keyturn keeps that directory
    # until the next update, so the read finishes even if a swap happens meanwhile.
    data = os.path.join(bundle, "..data")
    directory = os.path.realpath(data) if os.path.lexists(data) else bundle
    with open(os.path.join(directory, "signing.pem"), "rb") as f:
        pem = f.read()
    with open(os.path.join(directory, "jwks.json"), "rb") as f:
        jwks = json.load(f)

    signing = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(signing, Ed25519PrivateKey):
        raise ValueError("signing.pem is not an Ed25519 private key")
    verify: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks["keys"]:
        if (jwk.get("kty"), jwk.get("crv"), jwk.get("alg", "EdDSA")) != ("OKP", "Ed25519", "EdDSA"):
            raise ValueError(f"jwks.json: key {jwk.get('kid')!r} is not an Ed25519 (EdDSA) key")
        verify[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    if not verify:
        raise ValueError("jwks.json lists no key")

    # keyturn lists the current key first: it must be the public half of signing.pem, or tokens
    # we sign would carry a kid that verifiers resolve to another key.
    first = jwks["keys"][0]
    raw = signing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if not hmac.compare_digest(raw, b64url_decode(first["x"])):
        raise ValueError(f"signing.pem is not the first key of jwks.json (kid {first['kid']})")
    return Keys(signing=signing, kid=first["kid"], verify=verify, source=directory)


def reload(trigger: str) -> bool:
    """Loads the bundle again; on any problem keeps serving the set already loaded."""
    state.reloads += 1  # every reload request counts, whether or not the keys changed
    try:
        keys = load_keys(BUNDLE)
    except Exception as error:  # unreadable, half-written by hand, mismatched: all refused alike
        state.inconsistent += 1
        kept = sorted(state.keys.verify) if state.keys else []
        log.warning("reload %d (%s): refused the key set in %s, still serving kids %s: %s",
                    state.reloads, trigger, BUNDLE, kept, error)
        return False
    state.keys = keys  # one assignment: a request sees the old set or the new one, never a mix
    log.info("reload %d (%s): signing kid %s, verifying kids %s (from %s)",
             state.reloads, trigger, keys.kid, list(keys.verify), os.path.basename(keys.source))
    return True


def write_pidfile(path: str) -> None:
    # Temp file + rename: keyturn never reads a half-written pid.
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".app.pid.")
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(temp, path)


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Refuse to start without keys: nothing would tell us when they appear, since keyturn only
    # notifies on a change.
    try:
        state.keys = load_keys(BUNDLE)
    except Exception as error:
        raise RuntimeError(f"no usable key set in {BUNDLE} (is the keyturn agent running?): {error}") from error
    log.info("keys loaded: signing kid %s, verifying kids %s", state.keys.kid, list(state.keys.verify))
    # SIGHUP's default action terminates the process. keyturn's `signal` notifier finds us
    # through the pidfile, so the handler goes in before the pidfile is written. The loop's
    # handler runs reload() on the loop thread, between requests, never inside one.
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload, "SIGHUP")
    if PIDFILE:
        write_pidfile(PIDFILE)
    try:
        yield
    finally:
        if PIDFILE:
            try:
                with open(PIDFILE) as f:
                    ours = f.read().strip() == str(os.getpid())
                if ours:  # a newer instance may have taken the pidfile over
                    os.remove(PIDFILE)
            except FileNotFoundError:
                pass
        loop.remove_signal_handler(signal.SIGHUP)


app = FastAPI(title="keyturn FastAPI example", lifespan=lifespan)


class TokenRequest(BaseModel):
    sub: str = "demo"


@app.post("/token")
async def token(body: TokenRequest | None = None):
    keys = state.keys  # read once: the kid and the key come from the same set
    now = int(time.time())
    claims = {"sub": body.sub if body else "demo", "iat": now, "exp": now + 3600}
    encoded = jwt.encode(claims, keys.signing, algorithm="EdDSA", headers={"kid": keys.kid})
    return {"token": encoded, "kid": keys.kid}


@app.get("/verify")
async def verify(authorization: str | None = Header(default=None)):
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not encoded.strip():
        raise HTTPException(401, "expected Authorization: Bearer <token>")
    keys = state.keys
    try:
        kid = jwt.get_unverified_header(encoded.strip()).get("kid")
        # Only keys listed in the current JWKS verify: after --revoke, or once the grace period
        # ends, keyturn drops the old key from jwks.json and its tokens fail here.
        key = keys.verify.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise HTTPException(401, f"unknown kid {kid!r}")
        # algorithms pinned: the header's alg is never trusted to pick the verification method
        claims = jwt.decode(encoded.strip(), key, algorithms=["EdDSA"], options={"require": ["exp", "iat", "sub"]})
    except jwt.InvalidTokenError as error:
        raise HTTPException(401, f"invalid token: {error}")
    return {"sub": claims["sub"], "kid": kid}


@app.get("/healthz")
async def healthz():
    return {"ok": True}


def snapshot() -> dict:
    keys = state.keys
    return {"reloads": state.reloads, "inconsistent": state.inconsistent,
            "signing_kid": keys.kid, "kids": list(keys.verify), "pid": os.getpid()}


@app.get("/-/state")
async def get_state():
    return snapshot()


@app.post("/-/reload")
async def post_reload(authorization: str | None = Header(default=None)):
    if RELOAD_TOKEN_FILE:
        with open(RELOAD_TOKEN_FILE) as f:  # read per request, so the token itself can rotate
            expected = f.read().strip()
        if not expected or not hmac.compare_digest((authorization or "").encode(), f"Bearer {expected}".encode()):
            raise HTTPException(401, "bad or missing reload token")
    # A refused set answers 409, so keyturn's `http` notifier records the failure and retries.
    if not reload("POST /-/reload"):
        raise HTTPException(409, "the bundle's files disagree or cannot be read; still serving the last good set")
    return snapshot()
