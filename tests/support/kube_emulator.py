#!/usr/bin/env python3
"""A standalone Kubernetes API emulator for stowage's end-to-end tests and demo.

kmock's KubernetesEmulator stores objects and serves create/get/list/watch/patch/delete over
real HTTP, but leaves gaps a Kubernetes client trips over: no metadata.uid, no increasing
resourceVersion, no creationTimestamp, label and field selectors ignored, discovery that
lists nothing until resources are declared, and no validation at all. This subclass closes
those gaps, so the services under test talk to it exactly as they would to a kube-apiserver:
it serves the CustomResourceDefinitions it is given (stowage's shipped ones by default) and
refuses, with the API server's 422 Invalid Status, a custom resource its CRD's schema rejects
and a core object the API server's own validation rejects (kube_validation.py), on create,
replace and patch alike.

It also serves discovery as the API server does (`/api`, `/apis` with each group's versions in
priority order and the preferred one first, `/apis/<group>/<version>`, CRDs' resources among
them) and paginated lists: `limit` and an opaque `continue` token, `remainingItemCount` when no
selector filters, 400 BadRequest for a token that is not one and 410 Gone (reason Expired) for
one older than the last compaction of the history (`--compaction-interval`).

Usage: kube_emulator.py --port N [--host 127.0.0.1] [--crds DIR ...] [--compaction-interval S]
Prints `listening on http://HOST:PORT` once it accepts connections.
"""

import argparse
import asyncio
import base64
import copy
import datetime
import itertools
import json
import pathlib
import re
import signal
import sys
import time
import uuid

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import dicts, enums, parsing

import kube_validation

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
    ("v1/services", "Service", True),
    ("v1/serviceaccounts", "ServiceAccount", True),
    ("v1/events", "Event", True),
    ("apps/v1/daemonsets", "DaemonSet", True),
    ("apps/v1/deployments", "Deployment", True),
    ("apps/v1/replicasets", "ReplicaSet", True),
    ("apps/v1/statefulsets", "StatefulSet", True),
    ("events.k8s.io/v1/events", "Event", True),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True),
    ("storage.k8s.io/v1/storageclasses", "StorageClass", False),
    ("velero.io/v1/podvolumebackups", "PodVolumeBackup", True),
    ("velero.io/v1/podvolumerestores", "PodVolumeRestore", True),
    ("velero.io/v1/resticrepositories", "ResticRepository", True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
]
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
# The CRDs the emulator serves unless told otherwise: the ones stowage ships.
DEFAULT_CRDS = pathlib.Path(__file__).resolve().parents[2] / "deploy/kustomize/base/crds"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
# The short names `kubectl api-resources` shows for the built-in resources above.
SHORT_NAMES = {
    "namespaces": ["ns"],
    "pods": ["po"],
    "persistentvolumeclaims": ["pvc"],
    "persistentvolumes": ["pv"],
    "configmaps": ["cm"],
    "nodes": ["no"],
    "services": ["svc"],
    "serviceaccounts": ["sa"],
    "events": ["ev"],
    "daemonsets": ["ds"],
    "deployments": ["deploy"],
    "replicasets": ["rs"],
    "statefulsets": ["sts"],
    "storageclasses": ["sc"],
    "customresourcedefinitions": ["crd", "crds"],
}
# etcd's history is compacted every 5 minutes by default; a continue token older than the last
# compaction can no longer be served.
DEFAULT_COMPACTION_INTERVAL = 300.0
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


def _version_priority(version: str):
    """Sort key of Kubernetes' version priority: GA before beta before alpha, higher numbers
    first, anything else last in alphabetical order (how the API server orders a group's
    versions and picks the preferred one)."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (3, 0, 0, version)
    major, stage, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -int(major), -int(minor or 0), version)


def _list_key(obj) -> str:
    """The API server lists in its storage key order: namespace, then name."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _bad_request(message: str):
    return kmock.KubernetesError(
        status=400, reason="BadRequest", message=message, details={"causes": []}
    )


@attrs.define(kw_only=True)
class StowageKubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the server-side behaviour clients rely on."""

    _versions: itertools.count = attrs.field(factory=lambda: itertools.count(1), init=False)
    crd_dirs: list = attrs.field(factory=lambda: [DEFAULT_CRDS])
    # Seconds between compactions of the (emulated) etcd history: a list's continue token
    # from before the last compaction answers 410 Gone. 0 compacts before every continued
    # list, so every continue token has expired by the time it is used.
    compaction_interval: float = DEFAULT_COMPACTION_INTERVAL
    # What `/api` reports as the server's address.
    server_address: str = "127.0.0.1"
    _compacted: int = attrs.field(default=0, init=False)
    _last_compaction: float = attrs.field(factory=time.monotonic, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind, namespaced in RESOURCES:
            self._declare(key, kind, namespaced)
            if key in ("v1/pods",):
                self.resources[key].subresources = {"status"}
        for directory in self.crd_dirs:
            for path in sorted(pathlib.Path(directory).glob("*.yaml")):
                for crd in yaml.safe_load_all(path.read_text()):
                    if crd and crd.get("kind") == "CustomResourceDefinition":
                        self._install_crd(crd)

    def _declare(self, key: str, kind: str, namespaced: bool, short_names=None) -> None:
        info = self.resources[key]
        info.kind = kind
        info.namespaced = namespaced
        info.singular = kind.lower()
        info.verbs = set(VERBS)
        plural = key.rsplit("/", 1)[1]
        info.shortnames = set(short_names if short_names is not None else SHORT_NAMES.get(plural, []))
        KINDS[key.rsplit("/", 1)[1]] = (key.rsplit("/", 1)[0], kind)

    def _install_crd(self, crd: dict) -> None:
        """Stores `crd` as if applied, and serves its resource."""
        crd = copy.deepcopy(crd)
        meta = crd.setdefault("metadata", {})
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            resourceVersion=str(next(self._versions)),
        )
        self._objects[CRDS, None, meta["name"]] = crd
        self._serve_crd(crd)

    def _serve_crd(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            if version.get("served", True) and names.get("plural") and names.get("kind"):
                self._declare(
                    f"{spec.get('group')}/{version['name']}/{names['plural']}",
                    names["kind"],
                    spec.get("scope") == "Namespaced",
                    names.get("shortNames") or [],
                )

    def _schema(self, resource):
        """The schema of `resource`'s served CRD, or None for a resource no CRD defines."""
        if not resource.group or resource.group == "apiextensions.k8s.io":
            return None
        key = (CRDS, None, f"{resource.plural}.{resource.group}")
        if key not in self._objects or self._objects[key].deleted:
            return None
        return kube_validation.crd_schema(self._objects[key].raw, resource.version)

    def _admit(self, resource, obj: dict) -> dict:
        """`obj` as the API server would store it (pruned to its CRD's schema); raises the
        API server's 422 Invalid Status when it would refuse it."""
        admitted, errors = kube_validation.admit(
            resource.plural, resource.group, obj, self._schema(resource)
        )
        if errors:
            _, kind = KINDS.get(resource.plural, (None, resource.plural))
            name = (obj.get("metadata") or {}).get("name") or ""
            status = kube_validation.invalid_status(kind, resource.group, name, errors)
            # In the emulator's log, where a test that fails for a lost write finds why.
            print(f"422 {status['message']}", flush=True)
            raise kmock.KubernetesError(
                status=422,
                reason=status["reason"],
                message=status["message"],
                details=status["details"],
            )
        return admitted

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
            replaced = self._admit(request.resource, replaced)
            self._objects[key].delete()
            self._objects[key].create(replaced)
            raw = self._objects[key].raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    async def _patch(self, request):
        """PATCH (merge or JSON patch): kmock stores whatever the patch makes; the API server
        validates the patched object first (and takes only its status for `/status`)."""
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            current = copy.deepcopy(self._objects[key].raw)
            current_meta = current.get("metadata") or {}
            patch = request.data if request.data is not None else {}
            sent_version = (
                (patch.get("metadata") or {}).get("resourceVersion")
                if isinstance(patch, dict)
                else None
            )
            if sent_version and sent_version != current_meta.get("resourceVersion"):
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message="the object has been modified; please apply your changes to the latest version and try again",
                )
            try:
                patched = copy.deepcopy(dict(dicts.patch_dict(current, patch)))
            except (TypeError, ValueError) as error:
                raise kmock.KubernetesError(
                    status=400, reason="BadRequest", message=f"invalid patch: {error}"
                )
            if request.subresource == "status":
                status = patched.get("status")
                patched = current
                if status is None:
                    patched.pop("status", None)
                else:
                    patched["status"] = status
            meta = patched.setdefault("metadata", {})
            # uid, creationTimestamp, name and namespace are immutable.
            for field in ("uid", "creationTimestamp", "namespace", "name"):
                if field in current_meta:
                    meta[field] = current_meta[field]
            meta["resourceVersion"] = str(next(self._versions))
            patched = self._admit(request.resource, patched)
            self._objects[key].delete()
            self._objects[key].create(patched)
            raw = self._objects[key].raw
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                # The last finalizer removed from an object being deleted: it goes.
                self._objects[key].delete()
                await self._buses[request.resource].put({"type": "DELETED", "object": raw})
            else:
                await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    async def _handle(self, request):
        method = str(request.method.value).upper()
        if request.resource is not None and request.name is not None and method in ("PUT", "PATCH"):
            try:
                if method == "PUT":
                    return await self._replace(request)
                return await self._patch(request)
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
                try:
                    admitted = self._admit(request.resource, request.data)
                except kmock.KubernetesError:
                    self._forget(request)
                    raise
                if admitted is not request.data:  # pruned: store what is left
                    request.data.clear()
                    request.data.update(admitted)
        try:
            response = await super()._handle(request)
        finally:
            self._forget(request)
        if (
            request.resource == CRDS
            and request.action == enums.action.CREATE
            and response.status < 300
        ):
            self._serve_crd(request.data)
        return response

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

    async def _serve_api(self, request):
        result = await super()._serve_api(request)
        # Required in APIVersions; typed clients refuse the document without it.
        result["serverAddressByClientCIDRs"] = [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}
        ]
        return result

    def _order_versions(self, group: dict) -> dict:
        """A group's versions in priority order and the first of them preferred, as the API
        server announces them (kmock takes them in set order)."""
        versions = sorted(group.get("versions") or [], key=lambda v: _version_priority(v["version"]))
        group["versions"] = versions
        if versions:
            group["preferredVersion"] = dict(versions[0])
        return group

    async def _serve_apis(self, request):
        result = await super()._serve_apis(request)
        result["groups"] = sorted(
            (self._order_versions(group) for group in result.get("groups") or []),
            key=lambda group: group["name"],
        )
        return result

    async def _serve_group(self, request):
        return self._order_versions(await super()._serve_group(request))

    def _encode_continue(self, version: int, start: str) -> str:
        # The API server's token: base64url of {"v":"meta.k8s.io/v1","rv":…,"start":…};
        # opaque to clients.
        raw = json.dumps({"v": "meta.k8s.io/v1", "rv": version, "start": start})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _decode_continue(self, token: str):
        """`(start key, list version)` of a continue token; 400 BadRequest for a token that is
        not one, 410 Gone (reason Expired) for one older than the last compaction."""
        try:
            padded = token + "=" * (-len(token) % 4)
            decoded = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
            if decoded.get("v") != "meta.k8s.io/v1":
                raise ValueError(f"unknown continue token version {decoded.get('v')!r}")
            version, start = int(decoded["rv"]), str(decoded["start"])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
            raise _bad_request(f"invalid continue token: {error}")
        now = time.monotonic()
        if now - self._last_compaction >= self.compaction_interval:
            self._compacted = next(self._versions)
            self._last_compaction = now
        if version < self._compacted:
            raise kmock.KubernetesError(
                status=410,
                reason="Expired",
                message=(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use "
                    "the continue token in this response to retrieve the remainder of the "
                    "results. Continuing with the provided token results in an inconsistent "
                    "list - objects that were created, modified, or deleted between the time "
                    "the first chunk was returned and now may show up in the list."
                ),
                details={"causes": []},
            )
        return start, version

    async def _serve_list(self, request):
        params = request.params or {}
        limit_text = params.get("limit") or "0"
        try:
            limit = int(limit_text)
        except ValueError:
            raise _bad_request(f"invalid limit {limit_text!r}: not an integer")
        token = params.get("continue") or ""
        start, version = self._decode_continue(token) if token else ("", None)
        result = await super()._serve_list(request)
        label_selector = params.get("labelSelector", "")
        field_selector = params.get("fieldSelector", "")
        items = sorted(
            (item for item in result["items"] if _matches(item, label_selector, field_selector)),
            key=_list_key,
        )
        # A continued list goes on after the last key of the previous page. (The API server
        # serves it from the first page's snapshot; the emulator serves the current objects.)
        items = [item for item in items if _list_key(item) >= start]
        version = version if version is not None else next(self._versions)
        metadata = {"resourceVersion": str(version)}
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            metadata["continue"] = self._encode_continue(version, _list_key(items[-1]) + "\x00")
            # The API server counts what is left only when no selector filters the list.
            if not label_selector and not field_selector:
                metadata["remainingItemCount"] = remaining
        result["items"] = items
        result["metadata"] = metadata
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


async def _serve(host: str, port: int, crd_dirs: list, compaction_interval: float) -> None:
    emulator = StowageKubeEmulator(
        crd_dirs=crd_dirs,
        compaction_interval=compaction_interval,
        server_address=f"{host}:{port}",
    )
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
    parser.add_argument(
        "--crds",
        action="append",
        metavar="DIR",
        help=f"serve the CustomResourceDefinitions in DIR/*.yaml (default: {DEFAULT_CRDS})",
    )
    parser.add_argument(
        "--compaction-interval",
        type=float,
        default=DEFAULT_COMPACTION_INTERVAL,
        metavar="SECONDS",
        help="seconds between compactions of the object history: a list's continue token "
        "from before the last one answers 410 Gone (0: every continue token has expired)",
    )
    args = parser.parse_args()
    try:
        asyncio.run(
            _serve(args.host, args.port, args.crds or [DEFAULT_CRDS], args.compaction_interval)
        )
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
