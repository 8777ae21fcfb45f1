#!/usr/bin/env python3
"""A standalone Kubernetes API emulator for stowage's end-to-end tests and demo.

kmock's KubernetesEmulator stores objects and serves create/get/list/watch/patch/delete over
real HTTP, but leaves gaps a Kubernetes client trips over: no metadata.uid, no increasing
resourceVersion, no creationTimestamp, label and field selectors ignored, and discovery that
lists nothing until resources are declared. This subclass closes those gaps, so the services
under test talk to it exactly as they would to a kube-apiserver.

Usage: kube_emulator.py --port N [--host 127.0.0.1]
Prints `listening on http://HOST:PORT` once it accepts connections.
"""

import argparse
import asyncio
import copy
import datetime
import itertools
import signal
import sys
import uuid

import aiohttp.web
import attrs
import kmock
from kmock._internal import enums, parsing

_kmock_parse_path = parsing.parse_path


def _parse_path(path: str):
    """kmock reads `/api/v1/namespaces[/NAME]` as a namespace scope with no resource; the API
    server reads it as the cluster-scoped `namespaces` resource (and `/status`, `/finalize`
    as its subresources)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "api" and parts[2] == "namespaces":
        rest = parts[3:]
        if len(rest) <= 1 or (len(rest) == 2 and rest[1] in ("status", "finalize")):
            return parsing.ParsedPath(
                "",
                parts[1],
                "namespaces",
                None,
                rest[0] if rest else None,
                rest[1] if len(rest) == 2 else None,
            )
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path

# (group/version/plural, kind, namespaced): what discovery announces and `kubectl get` needs.
RESOURCES = [
    ("v1/namespaces", "Namespace", False),
    ("v1/pods", "Pod", True),
    ("v1/persistentvolumeclaims", "PersistentVolumeClaim", True),
    ("v1/persistentvolumes", "PersistentVolume", False),
    ("v1/configmaps", "ConfigMap", True),
    ("v1/secrets", "Secret", True),
    ("v1/nodes", "Node", False),
    ("apps/v1/daemonsets", "DaemonSet", True),
    ("apps/v1/deployments", "Deployment", True),
    ("apps/v1/replicasets", "ReplicaSet", True),
    ("velero.io/v1/podvolumebackups", "PodVolumeBackup", True),
    ("velero.io/v1/podvolumerestores", "PodVolumeRestore", True),
    ("velero.io/v1/resticrepositories", "ResticRepository", True),
]
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
KINDS = {}
STATUS_REASONS = {404: "NotFound", 409: "AlreadyExists"}


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_label_selector(text: str):
    """`a=b,c!=d,e,!f,g in (x,y),h notin (z)` into predicates over a labels dict."""
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    predicates = []
    for term in (t.strip() for t in terms):
        if not term:
            continue
        if " notin " in term:
            key, values = term.split(" notin ", 1)
            allowed = {v.strip() for v in values.strip(" ()").split(",")}
            predicates.append(lambda l, k=key.strip(), a=allowed: l.get(k) not in a)
        elif " in " in term:
            key, values = term.split(" in ", 1)
            allowed = {v.strip() for v in values.strip(" ()").split(",")}
            predicates.append(lambda l, k=key.strip(), a=allowed: l.get(k) in a)
        elif "!=" in term:
            key, value = term.split("!=", 1)
            predicates.append(lambda l, k=key.strip(), v=value.strip(): l.get(k) != v)
        elif "==" in term or "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            predicates.append(lambda l, k=key.strip(), v=value.strip(): l.get(k) == v)
        elif term.startswith("!"):
            predicates.append(lambda l, k=term[1:].strip(): k not in l)
        else:
            predicates.append(lambda l, k=term: k in l)
    return predicates


def _field(obj, path: str):
    value = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _matches(obj, label_selector: str, field_selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for predicate in _parse_label_selector(label_selector or ""):
        if not predicate(labels):
            return False
    for term in (t.strip() for t in (field_selector or "").split(",")):
        if not term:
            continue
        negate = "!=" in term
        key, value = term.split("!=" if negate else ("==" if "==" in term else "="), 1)
        actual = _field(obj, key.strip())
        actual = "" if actual is None else str(actual)
        if (actual == value.strip()) == negate:
            return False
    return True


@attrs.define(kw_only=True)
class StowageKubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the server-side behaviour clients rely on."""

    _versions: itertools.count = attrs.field(factory=lambda: itertools.count(1), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind, namespaced in RESOURCES:
            info = self.resources[key]
            info.kind = kind
            info.namespaced = namespaced
            info.singular = kind.lower()
            info.verbs = set(VERBS)
            if key in ("v1/pods",):
                info.subresources = {"status"}
            KINDS[key.rsplit("/", 1)[1]] = (key.rsplit("/", 1)[0], kind)

    async def _replace(self, request):
        """PUT: kmock only merges (PATCH); the API server replaces the whole object (or only its
        status for `/status`), keeping uid and creationTimestamp, and refuses a stale
        resourceVersion with 409 Conflict."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            current = copy.deepcopy(self._objects[key].raw)
            body = request.data if isinstance(request.data, dict) else {}
            sent_version = (body.get("metadata") or {}).get("resourceVersion")
            current_meta = current.get("metadata") or {}
            if sent_version and sent_version != current_meta.get("resourceVersion"):
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message="the object has been modified; please apply your changes to the latest version and try again",
                )
            if request.subresource == "status":
                replaced = current
                replaced["status"] = body.get("status", {})
            else:
                replaced = copy.deepcopy(body)
                if "status" not in replaced and "status" in current:
                    replaced["status"] = current["status"]
            meta = replaced.setdefault("metadata", {})
            for field in ("uid", "creationTimestamp", "namespace", "name"):
                if field in current_meta:
                    meta[field] = current_meta[field]
            meta["resourceVersion"] = str(next(self._versions))
            replaced.setdefault("apiVersion", current.get("apiVersion"))
            replaced.setdefault("kind", current.get("kind"))
            self._objects[key].delete()
            self._objects[key].create(replaced)
            raw = self._objects[key].raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    async def _handle(self, request):
        if (
            request.resource is not None
            and request.name is not None
            and str(request.method.value).upper() == "PUT"
        ):
            try:
                return await self._replace(request)
            finally:
                self._forget(request)
        # Fill in what the API server assigns before kmock stores the object.
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = _now()
                meta.pop("deletionTimestamp", None)
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                api_version, kind = KINDS.get(request.resource.plural, (None, None))
                if api_version and not request.data.get("apiVersion"):
                    request.data["apiVersion"] = api_version
                if kind and not request.data.get("kind"):
                    request.data["kind"] = kind
                meta["resourceVersion"] = str(next(self._versions))
            elif request.action == enums.action.UPDATE:
                # uid and creationTimestamp are immutable; a merge patch must not change them.
                meta.pop("uid", None)
                meta.pop("creationTimestamp", None)
                meta["resourceVersion"] = str(next(self._versions))
        try:
            return await super()._handle(request)
        finally:
            self._forget(request)

    def _forget(self, request):
        # kmock keeps every request and matches each new one by scanning that history, so
        # a long run slows down quadratically; an API server needs none once answered.
        self._requests[:] = [kept for kept in self._requests if kept is not request]

    async def _render_error(self, exc):
        # Clients branch on the machine-readable reason (`get_opt` treats only `NotFound` as
        # absent); kmock's reasons are prose, so map them to the API server's.
        prose = isinstance(exc, kmock.KubernetesError) and " " in (exc.reason or " ")
        if prose and exc.status in STATUS_REASONS:
            exc = attrs.evolve(exc, reason=STATUS_REASONS[exc.status])
        return await super()._render_error(exc)

    async def _serve_version(self, request):
        result = await super()._serve_version(request)
        # The core group has no name: its group version is `v1`, not `/v1`.
        result["groupVersion"] = result["groupVersion"].lstrip("/")
        return result

    async def _serve_list(self, request):
        result = await super()._serve_list(request)
        params = request.params or {}
        result["items"] = [
            item
            for item in result["items"]
            if _matches(item, params.get("labelSelector", ""), params.get("fieldSelector", ""))
        ]
        result["metadata"] = {"resourceVersion": str(next(self._versions))}
        api_version, kind = KINDS.get(request.resource.plural, ("v1", "List"))
        result["apiVersion"] = api_version
        result["kind"] = f"{kind}List"
        return result

    async def _serve_watch(self, request):
        params = request.params or {}
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not _matches(
                event.get("object") or {},
                params.get("labelSelector", ""),
                params.get("fieldSelector", ""),
            ):
                continue
            yield event


async def _serve(host: str, port: int) -> None:
    emulator = StowageKubeEmulator()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        print(f"listening on http://{server.host}:{server.port}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
