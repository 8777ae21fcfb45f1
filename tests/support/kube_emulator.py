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

It also serves `pods/exec` over WebSocket, with the channel protocol kube-rs and kubectl speak
(`v5.channel.k8s.io`, falling back to `v4.channel.k8s.io`): channel 0 is stdin, 1 stdout,
2 stderr, 3 the status (a Status object: `Success`, or `Failure` with reason
`NonZeroExitCode` and the exit code in `details.causes[{reason: ExitCode, message: "<n>"}]`),
and on v5 a frame `[255, 0]` closes stdin. Refusals are the API server's Status bodies: 404
for an unknown pod, 400 for an unknown container, for a pod with several containers and none
named, for a completed pod, or for no command. There are no containers, so the test decides
where the command runs: the command's argv is executed as is (`["/bin/sh", "-c", "..."]` for
a shell) with its working directory
- the pod's annotation `kube-emulator.stowage.dev/exec-dir` when set (so a hook can write into
  the directory that is also the pod volume the agent backs up), or else
- `EXEC_ROOT/<namespace>/<pod>` (created on first use), EXEC_ROOT being `--exec-root` or a
  temporary directory the emulator makes at start.
The command inherits the emulator's environment plus POD_NAME, POD_NAMESPACE and
CONTAINER_NAME. A client that hangs up kills the command and what it started (a container
runtime may let it run on; tests want no stray processes). A command that cannot be started
fails as runc's does: its error on stderr and exit code 126 (127 when the executable is not
found).

It also serves discovery as the API server does (`/api`, `/apis` with each group's versions in
priority order and the preferred one first, `/apis/<group>/<version>`, CRDs' resources among
them) and paginated lists: `limit` and an opaque `continue` token, `remainingItemCount` when no
selector filters, 400 BadRequest for a token that is not one and 410 Gone (reason Expired) for
one older than the last compaction of the history (`--compaction-interval`).

It also plays the cluster's controllers and admission rules a whole-application restore meets
(kube_lifecycle.py): garbage collection of objects whose owners are gone, namespace deletion
with its content, Services' cluster IPs, CRDs Established, creates refused in a missing or
terminating namespace or with a resourceVersion; a resource the server does not serve is 404.

It serves `coordination.k8s.io/v1` Leases (what leader election writes) with the API server's
concurrency rules: a create of an existing object is 409 AlreadyExists, a PUT or PATCH with a
stale `metadata.resourceVersion` is 409 Conflict, and a PUT without one is an unconditional
update (allowed for Leases, as for the built-in kinds). Server-side apply
(`application/apply-patch+yaml`) tracks field ownership per manager (`fieldManager`, or the
user agent's program name for other writes) from an object's first apply on: an apply that
would change a field another manager owns is refused with 409 Conflict (reason Conflict,
causes `FieldManagerConflict` naming each field) unless `force=true`; a field an update
changes becomes the updater's; fields the object had before its first apply belong to
`before-first-apply`. An apply without `fieldManager` is 422, one to a missing object creates
it. Ownership is kept inside the emulator (not served as `metadata.managedFields`).

Usage: kube_emulator.py --port N [--host 127.0.0.1] [--crds DIR ...] [--exec-root DIR]
    [--compaction-interval S] [--gc-delay-seconds S]
Prints `listening on http://HOST:PORT` once it accepts connections.
"""

import argparse
import asyncio
import base64
import contextlib
import copy
import datetime
import itertools
import json
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import dicts, enums, parsing

import kube_lifecycle
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
    ("batch/v1/jobs", "Job", True),
    ("events.k8s.io/v1/events", "Event", True),
    ("rbac.authorization.k8s.io/v1/roles", "Role", True),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", True),
    ("coordination.k8s.io/v1/leases", "Lease", True),
    ("storage.k8s.io/v1/storageclasses", "StorageClass", False),
    ("velero.io/v1/podvolumebackups", "PodVolumeBackup", True),
    ("velero.io/v1/podvolumerestores", "PodVolumeRestore", True),
    ("velero.io/v1/resticrepositories", "ResticRepository", True),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
]
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
PODS = kmock.resource("", "v1", "pods")
EXEC_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/exec")
EXEC_DIR_ANNOTATION = "kube-emulator.stowage.dev/exec-dir"
# Subprotocols in the server's order of preference; the client's order decides among them.
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255
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
APPLY_PATCH = "application/apply-patch"
# What the server sets in metadata: never a field a manager owns.
SERVER_FIELDS = {"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"}
# The manager the API server names as owner of the fields an object had before anyone applied.
BEFORE_FIRST_APPLY = ("before-first-apply", "Update")


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


def _status(code: int, reason: str, message: str, details=None) -> aiohttp.web.Response:
    """An API server's error answer: a Status object with the HTTP status `code`."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return aiohttp.web.json_response(body, status=code)


def _flag(query, name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")


def _kill_group(process) -> None:
    """Kills `process` and everything in its process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _exit_status(command: list, code: int) -> dict:
    """The status channel's Status for a command that exited with `code`, as the kubelet
    writes it."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    if code < 0:  # killed by a signal: the runtime reports 128 + the signal number
        code = 128 - code
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command [{' '.join(command)}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


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


def _leaves(obj, prefix=()):
    """Every field path of `obj` with its value; lists are atomic (one field), as for lists
    without merge keys. Identity and server-set metadata are nobody's to own."""
    leaves = {}
    for key, value in (obj or {}).items():
        path = prefix + (key,)
        if path in (("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")):
            continue
        if prefix == ("metadata",) and key in SERVER_FIELDS:
            continue
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, path))
        elif value is not None:
            leaves[path] = value
    return leaves


def _remove_field(obj: dict, path) -> None:
    """Removes the field at `path` from `obj`, and the objects it leaves empty."""
    parents = [obj]
    for part in path[:-1]:
        child = parents[-1].get(part)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    for depth in range(len(parents) - 1, 0, -1):
        if parents[depth]:
            break
        parents[depth - 1].pop(path[depth - 1], None)


def _field_path(path) -> str:
    return "." + ".".join(path)


def _manager(request, operation: str):
    """(manager, operation) of a write: `fieldManager`, else the user agent's program name, as
    the API server names managers."""
    name = (request.params or {}).get("fieldManager")
    if not name:
        agent = (request.headers or {}).get("User-Agent") or "unknown"
        name = agent.split("/", 1)[0] or "unknown"
    return (name, operation)


@attrs.define(kw_only=True)
class StowageKubeEmulator(kube_lifecycle.LifecycleRules, kmock.KubernetesEmulator):
    """kmock's emulator plus the server-side behaviour clients rely on."""

    _versions: itertools.count = attrs.field(factory=lambda: itertools.count(1), init=False)
    crd_dirs: list = attrs.field(factory=lambda: [DEFAULT_CRDS])
    exec_root: pathlib.Path = attrs.field(
        factory=lambda: pathlib.Path(tempfile.mkdtemp(prefix="kube-emulator-exec-"))
    )
    # Seconds between compactions of the (emulated) etcd history: a list's continue token
    # from before the last compaction answers 410 Gone. 0 compacts before every continued
    # list, so every continue token has expired by the time it is used.
    compaction_interval: float = DEFAULT_COMPACTION_INTERVAL
    # What `/api` reports as the server's address.
    server_address: str = "127.0.0.1"
    # Seconds the cluster's controllers take to act: the garbage collector on an object whose
    # owners are gone, the namespace controller on a deleted namespace (kube_lifecycle.py).
    gc_delay: float = kube_lifecycle.DEFAULT_GC_DELAY
    _compacted: int = attrs.field(default=0, init=False)
    # Field ownership of the objects someone applied (server-side apply): object key ->
    # (uid, {field path: {(manager, operation)}}). Kept from an object's first apply on, so
    # writes to objects nobody applies cost nothing.
    _owners: dict = attrs.field(factory=dict, init=False)
    _last_compaction: float = attrs.field(factory=time.monotonic, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._lifecycle_init()
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
        crd["status"] = kube_lifecycle.crd_status(crd)
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

    def _unconditional_update(self, resource) -> bool:
        if resource == CRDS:
            return False
        key = (CRDS, None, f"{resource.plural}.{resource.group}")
        return not resource.group or key not in self._objects or self._objects[key].deleted

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
            if not sent_version and not self._unconditional_update(request.resource):
                # Custom resources and CRDs refuse an update that names no version
                # (AllowUnconditionalUpdate false in their strategies); built-ins take it.
                _, kind = KINDS.get(request.resource.plural, (None, request.resource.plural))
                error = kube_validation.FieldError(
                    "metadata.resourceVersion",
                    kube_validation.INVALID,
                    "0x0: must be specified for an update",
                )
                raise kube_lifecycle.Refused(
                    kube_validation.invalid_status(kind, request.resource.group, request.name, [error])
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
            self.prepare_update(request.resource, current, replaced)
            replaced = self._admit(request.resource, replaced)
            self._record_update(key, current, replaced, _manager(request, "Update"))
            self._objects[key].delete()
            self._objects[key].create(replaced)
            raw = self._objects[key].raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
            self.stored(key)
        return aiohttp.web.json_response(raw)

    def _owners_of(self, key, current: dict) -> dict:
        """The field owners of the object at `key` (`current`): its record, or for an object
        nobody applied yet, every field owned by `before-first-apply` as the API server has it."""
        uid = (current.get("metadata") or {}).get("uid")
        record = self._owners.get(key)
        if record is not None and record[0] == uid:
            return copy.deepcopy(record[1])
        return {path: {BEFORE_FIRST_APPLY} for path in _leaves(current)}

    def _record_update(self, key, before: dict, after: dict, manager) -> None:
        """An update (PUT or a non-apply PATCH) takes the fields it changed from their owners;
        fields it removed are nobody's. Only objects someone applied keep a record."""
        record = self._owners.get(key)
        uid = (after.get("metadata") or {}).get("uid")
        if record is None or record[0] != uid:
            return
        owners = record[1]
        old, new = _leaves(before), _leaves(after)
        for path in old.keys() - new.keys():
            owners.pop(path, None)
        for path, value in new.items():
            if old.get(path, value) != value or path not in old:
                owners[path] = {manager}

    async def _apply(self, request):
        """Server-side apply (`application/apply-patch+yaml`): the fields the configuration sets
        become its manager's; a field another manager owns and this one would change is a
        conflict, answered 409 Conflict naming the field and its owner (unless `force=true`,
        which takes it); a field this manager applied before and no longer sets is removed
        unless another manager owns it; an object that does not exist is created."""
        key = (request.resource, request.namespace, request.name)
        params = request.params or {}
        manager = params.get("fieldManager")
        if not manager:
            raise kmock.KubernetesError(
                status=422,
                reason="Invalid",
                message='PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                details={
                    "group": "meta.k8s.io",
                    "kind": "PatchOptions",
                    "causes": [
                        {
                            "reason": "FieldValueRequired",
                            "message": "Required value: is required for apply patch",
                            "field": "fieldManager",
                        }
                    ],
                },
            )
        applied = request.data
        if not isinstance(applied, dict):
            raise _bad_request("the apply configuration is not an object")
        me = (manager, "Apply")
        force = _flag(params, "force")
        wanted = _leaves(applied)
        async with self._lock:
            exists = key in self._objects and not self._objects[key].deleted
            if not exists:
                created = copy.deepcopy(applied)
                meta = created.setdefault("metadata", {})
                meta.update(
                    name=request.name,
                    uid=str(uuid.uuid4()),
                    creationTimestamp=_now(),
                    resourceVersion=str(next(self._versions)),
                )
                if request.namespace:
                    meta["namespace"] = request.namespace
                created = self._admit(request.resource, created)
                if key in self._objects:
                    self._objects[key].create(created)
                else:
                    self._objects[key] = created
                raw = self._objects[key].raw
                self._owners[key] = (meta["uid"], {path: {me} for path in _leaves(raw)})
                await self._buses[request.resource].put({"type": "ADDED", "object": raw})
                return aiohttp.web.json_response(raw, status=201)
            current = copy.deepcopy(self._objects[key].raw)
            current_meta = current.get("metadata") or {}
            owners = self._owners_of(key, current)
            present = _leaves(current)
            conflicts = [
                (path, other)
                for path, value in wanted.items()
                if path in present and present[path] != value
                for other in sorted(owners.get(path, set()) - {me})
            ]
            if conflicts and not force:
                raise self._apply_conflict(conflicts)
            patched = copy.deepcopy(dict(dicts.patch_dict(current, applied)))
            for path, holders in list(owners.items()):
                if me in holders and path not in wanted:
                    holders.discard(me)
                    if not holders:
                        del owners[path]
                        _remove_field(patched, path)
            for path, value in wanted.items():
                if force or present.get(path, value) != value or path not in present:
                    owners[path] = {me}
                else:
                    owners.setdefault(path, set()).add(me)
            meta = patched.setdefault("metadata", {})
            for field in ("uid", "creationTimestamp", "namespace", "name"):
                if field in current_meta:
                    meta[field] = current_meta[field]
            meta["resourceVersion"] = str(next(self._versions))
            patched = self._admit(request.resource, patched)
            self._objects[key].delete()
            self._objects[key].create(patched)
            raw = self._objects[key].raw
            self._owners[key] = (current_meta.get("uid"), owners)
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    @staticmethod
    def _apply_conflict(conflicts) -> kmock.KubernetesError:
        """The API server's 409 for an apply that would change other managers' fields."""

        def who(owner) -> str:
            name, operation = owner
            return f'"{name}"' if operation == "Apply" else f'"{name}" using {operation.lower()}'

        if len(conflicts) == 1:
            path, owner = conflicts[0]
            message = f"Apply failed with 1 conflict: conflict with {who(owner)}: {_field_path(path)}"
        else:
            lines = "".join(f"\n- conflict with {who(o)}: {_field_path(p)}" for p, o in conflicts)
            message = f"Apply failed with {len(conflicts)} conflicts:{lines}"
        return kmock.KubernetesError(
            status=409,
            reason="Conflict",
            message=message,
            details={
                "causes": [
                    {
                        "reason": "FieldManagerConflict",
                        "message": f"conflict with {who(owner)}",
                        "field": _field_path(path),
                    }
                    for path, owner in conflicts
                ]
            },
        )

    async def _patch(self, request):
        """PATCH (merge or JSON patch): kmock stores whatever the patch makes; the API server
        validates the patched object first (and takes only its status for `/status`)."""
        content_type = (request.headers or {}).get("Content-Type", "")
        if content_type.startswith(APPLY_PATCH):
            return await self._apply(request)
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
            self.prepare_update(request.resource, current, patched)
            patched = self._admit(request.resource, patched)
            self._record_update(key, current, patched, _manager(request, "Update"))
            self._objects[key].delete()
            self._objects[key].create(patched)
            raw = self._objects[key].raw
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                # The last finalizer removed from an object being deleted: it goes.
                self._objects[key].delete()
                await self._buses[request.resource].put({"type": "DELETED", "object": raw})
                self.released(raw)
            else:
                await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
                self.stored(key)
        return aiohttp.web.json_response(raw)

    async def __call__(self, raw_request):
        match = EXEC_PATH.fullmatch(raw_request.path)
        if match:
            return await self._exec(raw_request, match.group(1), match.group(2))
        return await super().__call__(raw_request)

    async def _exec(self, raw_request, namespace: str, name: str):
        """`pods/exec`: validates as the API server does, upgrades to WebSocket and runs the
        command where the test said (see the module docstring)."""
        if raw_request.method not in ("GET", "POST"):
            return _status(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource")
        key = (PODS, namespace, name)
        if key not in self._objects or self._objects[key].deleted:
            return _status(
                404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}
            )
        pod = copy.deepcopy(self._objects[key].raw)
        query = raw_request.query
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return _status(
                400,
                "BadRequest",
                f"cannot exec into a container in a completed pod; current phase is {phase}",
            )
        spec = pod.get("spec") or {}
        containers = [c.get("name") for c in spec.get("containers") or []]
        others = [
            c.get("name")
            for field in ("initContainers", "ephemeralContainers")
            for c in spec.get(field) or []
        ]
        container = query.get("container", "")
        if not container:
            if len(containers) != 1:
                return _status(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]",
                )
            container = containers[0]
        elif container not in containers + others:
            return _status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        command = query.getall("command", [])
        if not command:
            return _status(400, "BadRequest", "you must specify at least 1 command")
        stdin, stdout, stderr, tty = (
            _flag(query, flag) for flag in ("stdin", "stdout", "stderr", "tty")
        )
        if not (stdin or stdout or stderr):
            return _status(
                400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr"
            )
        if tty and stderr:
            # The API server refuses stderr with a tty: a terminal has one output stream.
            return _status(400, "BadRequest", "tty and stderr cannot both be true")
        if raw_request.headers.get("Upgrade", "").lower() != "websocket":
            return _status(400, "BadRequest", "Upgrade request required")
        offered = [
            p.strip()
            for p in raw_request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        chosen = next((p for p in offered if p in EXEC_PROTOCOLS), None)
        if chosen is None:
            return _status(
                400,
                "BadRequest",
                f"requested protocol(s) are not supported: {offered}; supports {list(EXEC_PROTOCOLS)}",
            )
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        directory = annotations.get(EXEC_DIR_ANNOTATION)
        if directory:
            directory = pathlib.Path(directory)
            if not directory.is_dir():
                return _status(
                    500,
                    "InternalError",
                    f"pod {namespace}/{name}: annotation {EXEC_DIR_ANNOTATION} names {directory}, which is not a directory",
                )
        else:
            directory = self.exec_root / namespace / name
            directory.mkdir(parents=True, exist_ok=True)

        ws = aiohttp.web.WebSocketResponse(protocols=(chosen,), autoping=True)
        await ws.prepare(raw_request)
        send_lock = asyncio.Lock()

        async def send(channel: int, data: bytes = b"") -> None:
            async with send_lock:
                if not ws.closed:
                    await ws.send_bytes(bytes([channel]) + data)

        # As the API server does: one frame with only the channel number per open channel.
        for channel, is_open in ((STDIN, stdin), (STDOUT, stdout), (STDERR, stderr), (STATUS, True)):
            if is_open:
                await send(channel)
        env = dict(os.environ, POD_NAME=name, POD_NAMESPACE=namespace, CONTAINER_NAME=container)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=directory,
                env=env,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT if tty else asyncio.subprocess.PIPE,
                # Its own process group, so a hang-up kills what the command started too
                # (whose open pipes would otherwise keep the session waiting).
                start_new_session=True,
            )
        except OSError as error:
            code = 127 if isinstance(error, FileNotFoundError) else 126
            reason = "executable file not found in $PATH" if code == 127 else str(error)
            message = f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{command[0]}": {reason}: unknown\r\n'
            await send(STDOUT if tty or not stderr else STDERR, message.encode())
            await send(STATUS, json.dumps(_exit_status(command, code)).encode())
            await ws.close()
            return ws
        print(f"exec {namespace}/{name}/{container} in {directory}: {command}", flush=True)

        async def pump(stream, channel: int, wanted: bool) -> None:
            while chunk := await stream.read(32 * 1024):
                if wanted:
                    await send(channel, chunk)

        async def receive() -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                    continue
                data = message.data
                if data[0] == STDIN and process.stdin is not None and len(data) > 1:
                    process.stdin.write(data[1:])
                    await process.stdin.drain()
                elif data[0] == CLOSE and data[1:2] == bytes([STDIN]) and chosen.startswith("v5"):
                    if process.stdin is not None:
                        process.stdin.close()
            # The client hung up (or closed the whole socket, v4's only way to end stdin).
            if process.stdin is not None:
                process.stdin.close()

        receiver = asyncio.ensure_future(receive())
        pumps = [pump(process.stdout, STDOUT, stdout or tty)]
        if not tty:
            pumps.append(pump(process.stderr, STDERR, stderr))
        outputs = asyncio.ensure_future(asyncio.gather(*pumps))
        try:
            await asyncio.wait({outputs, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not outputs.done() and ws.closed:
                # Hung up before the command finished.
                _kill_group(process)
            await outputs
            code = await process.wait()
            await send(STATUS, json.dumps(_exit_status(command, code)).encode())
        finally:
            if process.returncode is None:
                _kill_group(process)
                await process.wait()
            await ws.close()
            receiver.cancel()
        return ws

    async def _handle(self, request):
        try:
            return await self._handle_refusing(request)
        except kube_lifecycle.Refused as refused:
            self._forget(request)
            print(f"{refused.body['code']} {refused.body['message']}", flush=True)
            return aiohttp.web.json_response(refused.body, status=refused.body["code"])

    def _served(self, resource) -> bool:
        """Whether the API server serves `resource` (built in, or a CRD's)."""
        return resource.plural is None or resource in self._resources

    async def _handle_refusing(self, request):
        method = str(request.method.value).upper()
        if request.resource is not None and request.action is not None and not self._served(request.resource):
            self._forget(request)
            return _status(404, "NotFound", "the server could not find the requested resource", {})
        if request.resource is not None and request.name is not None and method in ("PUT", "PATCH"):
            try:
                if method == "PUT":
                    return await self._replace(request)
                return await self._patch(request)
            finally:
                self._forget(request)
        if request.resource is not None and request.name is not None and method == "DELETE":
            try:
                return await self._delete(request)
            finally:
                self._forget(request)
        # Fill in what the API server assigns before kmock stores the object.
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if request.action == enums.action.CREATE:
                self.check_create(request.resource, request.namespace or meta.get("namespace"), request.data)
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = _now()
                meta.pop("deletionTimestamp", None)
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                self.prepare_create(request.resource, request.data)
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
        if request.action == enums.action.CREATE and response.status < 300:
            if response.status == 200 and not response.prepared:
                response.set_status(201)  # the API server answers a create 201 Created
            if request.resource == CRDS:
                self._serve_crd(request.data)
            meta = request.data.get("metadata") or {}
            self.stored((request.resource, request.namespace or meta.get("namespace"), meta.get("name")))
        return response

    async def _delete(self, request):
        """DELETE of one object: finalizers, propagation policy (DeleteOptions body or query)
        and namespace termination as kube_lifecycle.py describes."""
        key = (request.resource, request.namespace, request.name)
        options = request.data if isinstance(request.data, dict) else {}
        propagation = options.get("propagationPolicy") or (request.params or {}).get(
            "propagationPolicy", "Background"
        )
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise _bad_request(
                f"propagationPolicy: Unsupported value: {propagation!r}: supported values: "
                '"Foreground", "Background", "Orphan"'
            )
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            if request.resource == kube_lifecycle.NAMESPACES:
                raw = await self.delete_namespace(key)
            else:
                raw = await self.delete_stored(key, propagation)
        return aiohttp.web.json_response(raw)

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


async def _serve(
    host: str, port: int, crd_dirs: list, exec_root, compaction_interval: float, gc_delay: float
) -> None:
    options = {"exec_root": pathlib.Path(exec_root)} if exec_root else {}
    emulator = StowageKubeEmulator(
        crd_dirs=crd_dirs,
        compaction_interval=compaction_interval,
        gc_delay=gc_delay,
        server_address=f"{host}:{port}",
        **options,
    )
    if not exec_root:
        # The temporary directory is the emulator's own: it goes when the emulator does.
        stack = contextlib.ExitStack()
        stack.callback(shutil.rmtree, emulator.exec_root, ignore_errors=True)
    else:
        stack = contextlib.nullcontext()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with stack:
        await _run(emulator, host, port, stop)


async def _run(emulator, host: str, port: int, stop: asyncio.Event) -> None:
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        print(f"listening on http://{server.host}:{server.port}", flush=True)
        controllers = asyncio.ensure_future(emulator.run_controllers())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({controllers, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if controllers.done():
            # The controllers never end on their own: a failure must stop the emulator loudly.
            stopped.cancel()
            controllers.result()
        controllers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await controllers


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
        "--exec-root",
        metavar="DIR",
        help="pods/exec runs in DIR/<namespace>/<pod> unless the pod's annotation "
        f"{EXEC_DIR_ANNOTATION} names a directory (default: a new temporary directory)",
    )
    parser.add_argument(
        "--compaction-interval",
        type=float,
        default=DEFAULT_COMPACTION_INTERVAL,
        metavar="SECONDS",
        help="seconds between compactions of the object history: a list's continue token "
        "from before the last one answers 410 Gone (0: every continue token has expired)",
    )
    parser.add_argument(
        "--gc-delay-seconds",
        type=float,
        default=kube_lifecycle.DEFAULT_GC_DELAY,
        metavar="SECONDS",
        help="seconds the garbage collector waits before deleting an object whose owners are "
        "gone, and the namespace controller before deleting a deleted namespace's content",
    )
    args = parser.parse_args()
    try:
        asyncio.run(
            _serve(
                args.host,
                args.port,
                args.crds or [DEFAULT_CRDS],
                args.exec_root,
                args.compaction_interval,
                args.gc_delay_seconds,
            )
        )
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
